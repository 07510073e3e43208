"""Shared test setup: no test may reach a network, and models are tiny so the suite runs on 2 CPU cores."""

import os

# Set before transformers/datasets/huggingface_hub are imported by any test module.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Hooks that fail a test skipped for ours but passed by its control (transformers' common tests on transformers' ViT).
from common_tests_rule import (  # noqa: E402, F401
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_terminal_summary,
)
from factories import FAKE_TOKEN, ROOT, TINY  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def run_train(capsys):
    """train.py's command line, run in this process as a fresh one would: returns (exit status, stderr)."""
    from launching import train_in_this_process

    def run(argv: list[str]) -> tuple[int, str]:
        code = train_in_this_process(argv)
        return code, capsys.readouterr().err

    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny ViT fine-tuned for real by train.py on the digits (8 steps), with a token in the environment."""
    from vit_accel.demo import export_digits

    root = tmp_path_factory.mktemp("trained")
    export_digits(root / "digits")
    output_dir = root / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
        "--num_cpu_threads_per_process", "1", "train.py", "--model_name_or_path", "vit-tiny-p16-224",
        "--from_scratch", "--config_overrides",
        TINY,
        "--dataset_name", str(root / "digits"), "--max_train_samples", "256", "--max_eval_samples", "64",
        "--augmentation", "none", "--dataloader_num_workers", "0", "--per_device_train_batch_size", "32",
        "--learning_rate", "3e-3", "--max_train_steps", "8", "--logging_steps", "2", "--output_dir", str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_TOKEN": FAKE_TOKEN}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert FAKE_TOKEN not in result.stdout + result.stderr
    return output_dir


@pytest.fixture(scope="session")
def digit_images(trained_run) -> list[Path]:
    """Six digits as 16x16 PNG files (the model's input size, so no resampling differs between libraries)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = trained_run.parent / "images"
    folder.mkdir(exist_ok=True)
    digits = load_digits()
    paths = []
    for i in range(6):
        pixels = (digits.images[i] * (255 / 16)).round().astype("uint8")
        path = folder / f"digit{i}_{digits.target[i]}.png"
        Image.fromarray(pixels).resize((16, 16), Image.NEAREST).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """scikit-learn's digits exported as a `datasets` directory (vit_accel.demo), for train.py runs."""
    from vit_accel.demo import export_digits

    path = tmp_path_factory.mktemp("data") / "digits"
    export_digits(path)
    return path


@pytest.fixture(scope="session")
def extensions_dir(tmp_path_factory) -> Path:
    # DeepSpeed JIT-builds its CPU ops on first use; one cache for the whole session builds each once.
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or tmp_path_factory.mktemp("torch_extensions"))


@pytest.fixture(scope="session")
def ddp_run(digits, tmp_path_factory) -> Path:
    """The reference run of the distributed tests: two DDP processes over gloo, per-device batch 8 (global 16)."""
    from launching import LEAVES_GROUP, TWO_PROCESSES, assert_really, launch, tiny_args

    out = tmp_path_factory.mktemp("ddp") / "run"
    launch("multi_cpu.yaml", ["train.py", *tiny_args(digits, out, *TWO_PROCESSES)], script=LEAVES_GROUP)
    assert_really(out, "MULTI_CPU", 2)
    return out


@pytest.fixture(scope="session")
def one_process_run(digits, tmp_path_factory) -> Path:
    """The same run on one process, per-device batch 16: the same global batch as `ddp_run`."""
    from launching import ONE_PROCESS, assert_really, tiny_args, train_in_this_process

    out = tmp_path_factory.mktemp("one") / "run"
    assert train_in_this_process(tiny_args(digits, out, *ONE_PROCESS), threads=1) == 0
    assert_really(out, "NO", 1)
    return out

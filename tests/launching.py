"""Running train.py as users do, `accelerate launch --config_file accelerate_configs/<config> train.py`, for the
end-to-end tests, and reading what a run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from factories import TINY  # noqa: F401  (re-exported: the tests import it with the launch helpers)
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def tiny_args(digits: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", TINY,
        "--dataset_name", str(digits), "--max_train_samples", "256", "--max_eval_samples", "64",
        "--augmentation", "none", "--dataloader_num_workers", "0",
        "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "32",
        "--learning_rate", "1e-3", "--max_train_steps", "6", "--logging_steps", "1", "--eval_steps", "6",
        "--seed", "3", "--output_dir", str(output_dir),
        *extra,
    ]  # fmt: skip


def launch_command(
    config: str,
    args: list[str],
    env: dict | None = None,
    launcher_args: tuple[str, ...] = (),
    script: str = "train.py",
) -> tuple[list[str], dict]:
    """The `accelerate launch` command line a user types for `config` (with `launcher_args` before the script), and
    its environment."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"accelerate_configs/{config}"]
    command += ["--num_cpu_threads_per_process", "1", *launcher_args, script, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if config in ("multi_cpu.yaml",):
        full_env["ACCELERATE_USE_CPU"] = "true"  # without it, --multi_gpu on CPU starts 2 unsynchronised processes
    return command, full_env


def launch(
    config: str,
    args: list[str],
    env: dict | None = None,
    check: bool = True,
    timeout: int = 600,
    script: str = "train.py",
    launcher_args: tuple[str, ...] = (),
):
    """`accelerate launch` as a user types it; returns the completed process."""
    command, full_env = launch_command(config, args, env, launcher_args, script)
    result = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


# Runs the script named first in its arguments, then fails if it returned with its process group still up.
LEAVES_GROUP = "tests/left_process_group.py"

# train.py run by tests/fault_injection.py, which SIGKILLs it at the point VIT_ACCEL_TEST_FAULT names (another
# script with VIT_ACCEL_TEST_SCRIPT=pretrain.py in the environment).
FAULTY = {"script": "tests/fault_injection.py", "check": False}


def train_in_this_process(argv: list[str], threads: int | None = None, script: str = "train") -> int:
    """train.py's command line run in this process as a fresh one would run it (without the launcher's start-up
    time, mostly imports); its exit status. `threads`: torch's intra-op threads meanwhile (1 computes exactly as the
    launched runs do, with `--num_cpu_threads_per_process 1`). `script`: the module of another script at the root
    (`pretrain`)."""
    import importlib

    from accelerate.state import AcceleratorState, GradientState

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT))
        patch.setattr(sys, "argv", [f"{script}.py", *argv])
        module = importlib.import_module(script)

        try:
            torch.set_num_threads(threads or before)
            module.cli()
            return 0
        except SystemExit as exit_info:
            return exit_info.code
        finally:
            torch.set_num_threads(before)
            AcceleratorState._reset_state(True)
            GradientState._reset_state()


def train_losses(output_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def results(output_dir: Path) -> dict:
    return json.loads((output_dir / "all_results.json").read_text())


def saved_model_top1(out: Path, digits: Path, cwd: Path) -> float:
    """Top-1 of the model saved in `out` on the tiny runs' 64 eval digits, measured in a fresh Python process."""
    script = textwrap.dedent(
        f"""
        import json, torch
        from transformers import AutoModelForImageClassification
        import vit_accel
        from vit_accel.data import DataArguments, ImageClassificationDataset, build_pipeline, load_image_dataset
        from vit_accel.data import make_dataloader
        model = AutoModelForImageClassification.from_pretrained({str(out)!r}).eval()
        processor = json.load(open({str(out / "preprocessor_config.json")!r}))
        args = DataArguments(dataset_name={str(digits)!r}, max_eval_samples=64, augmentation="none")
        data = load_image_dataset(args, seed=3)
        pipeline = build_pipeline("none", 16, processor["image_mean"], processor["image_std"], train=False)
        loader = make_dataloader(ImageClassificationDataset(data.validation, pipeline, seed=3), 32, False, 3)
        correct = total = 0
        with torch.no_grad():
            for batch in loader:
                logits = model(pipeline.on_device(batch["pixel_values"])).logits
                correct += (logits.argmax(-1) == batch["labels"]).sum().item()
                total += len(batch["labels"])
        print(json.dumps({{"top1": correct / total, "total": total}}))
        """
    )
    reload = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert reload.returncode == 0, reload.stderr[-4000:]
    measured = json.loads(reload.stdout.strip().splitlines()[-1])
    assert measured["total"] == 64
    return measured["top1"]


# Two processes x 8 = global batch 16 over 256 images (16 steps an epoch); 6 steps, checkpoints at steps 3 and 6.
TWO_PROCESSES = ("--per_device_train_batch_size", "8", "--checkpointing_steps", "3")
ONE_PROCESS = ("--per_device_train_batch_size", "16", "--checkpointing_steps", "3")
# The GPU configs (DeepSpeed, FSDP) default to bf16; the CPU runs compare them with fp32 DDP, so they run in fp32.
FP32 = ("--mixed_precision", "no")


def assert_really(out: Path, distributed_type: str, num_processes: int) -> dict:
    """The run got `distributed_type` on `num_processes` processes, whose replicas ended identical."""
    final = results(out)
    assert final["distributed_type"] == f"DistributedType.{distributed_type}", final
    assert final["num_processes"] == num_processes, final
    assert len(set(final["replica_checksums"])) == 1, final
    return final


def assert_same_weights(got: Path, expected: Path, atol: float) -> None:
    a, b = load_file(got / "model.safetensors"), load_file(expected / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in b:
        if atol == 0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-4, msg=key)

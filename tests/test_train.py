"""train.py end to end, as users launch it: `accelerate launch --config_file accelerate_configs/<mode>.yaml train.py`.

Everything runs for real on the CPU: one process, two DDP processes over gloo, DeepSpeed ZeRO-2/3 with two processes,
SIGKILL and resume. The data is scikit-learn's digits exported through `datasets` (vit_accel.demo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = "image_size=16,patch_size=4,hidden_size=32,num_attention_heads=2,intermediate_size=64,num_hidden_layers=2"


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


# train.py run by tests/fault_injection.py, which SIGKILLs it at the point VIT_ACCEL_TEST_FAULT names.
FAULTY = {"script": "tests/fault_injection.py", "check": False}


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


def test_digits_demo_recipe_reaches_95_percent(digits, tmp_path):
    out = tmp_path / "demo"
    launch("cpu.yaml", ["recipes/digits_demo.yaml", "--dataset_name", str(digits), "--output_dir", str(out)])
    final = results(out)
    assert final["eval_top1"] >= 0.95, final
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "all_results.json", "log.jsonl"}
    assert expected | {"training_args.json", "training_curves.png", "modeling_vit_accel.py"} <= set(os.listdir(out))
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["7"] == "7" and config["auto_map"]
    assert json.loads((out / "training_args.json").read_text())["command"][0] == "train.py"


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(digits, tmp_path):
    launch("cpu.yaml", tiny_args(digits, tmp_path / "one"))
    launch("multi_cpu.yaml", tiny_args(digits, tmp_path / "two", "--per_device_train_batch_size", "8"))
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    assert one["num_processes"] == 1
    assert two["num_processes"] == 2 and two["distributed_type"] == "DistributedType.MULTI_CPU"
    # Both ranks hold the same weights after training: gradients really were averaged.
    assert two["replica_checksums"][0] == two["replica_checksums"][1]
    # Same global batch (16 = 1 x 16 = 2 x 8), same samples per step: the same losses up to float reassociation.
    assert len(train_losses(tmp_path / "two")) == 6
    torch.testing.assert_close(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"), atol=1e-5, rtol=1e-5)
    w1, w2 = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-4, msg=key)
    # gather_for_metrics counted the 64 eval images exactly once on 2 processes: the accuracy is the same.
    assert two["eval_top1"] == pytest.approx(one["eval_top1"], abs=1 / 64 + 1e-9)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_two_processes(stage, digits, extensions_dir, tmp_path):
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    ddp = tmp_path / "ddp"
    launch("multi_cpu.yaml", tiny_args(digits, ddp, "--per_device_train_batch_size", "8"))
    out = tmp_path / f"zero{stage}"
    launch(f"deepspeed_zero{stage}.yaml", tiny_args(digits, out, "--per_device_train_batch_size", "8"), env=env)
    final = results(out)
    assert final["num_processes"] == 2 and final["distributed_type"] == "DistributedType.DEEPSPEED"
    torch.testing.assert_close(train_losses(out), train_losses(ddp), atol=1e-4, rtol=1e-4)

    # The saved directory holds full weights (gathered under ZeRO-3) and reloads in a fresh process with the same
    # eval accuracy as the run measured.
    assert saved_model_top1(out, digits, tmp_path) == pytest.approx(final["eval_top1"], abs=1e-9)


def test_resume_after_sigkill_gives_the_same_weights(digits, tmp_path):
    # Dropout and random augmentation on, so that restoring RNG states and the data order is what is tested.
    args = [
        "--config_overrides", TINY + ",hidden_dropout_prob=0.1", "--augmentation", "inception",
        "--max_train_steps", "8", "--checkpointing_steps", "2", "--save_total_limit", "2",
        "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "8", "--eval_steps", "4",
    ]  # fmt: skip
    reference = tmp_path / "reference"
    launch("cpu.yaml", tiny_args(digits, reference, *args))

    interrupted = tmp_path / "interrupted"
    killed = launch(
        "cpu.yaml", tiny_args(digits, interrupted, *args), env={"VIT_ACCEL_TEST_FAULT": "after_save:4"}, **FAULTY
    )
    assert killed.returncode != 0 and not (interrupted / "model.safetensors").exists()
    assert (interrupted / "checkpoint-4" / "trainer_state.json").is_file()
    # Killed again, this time in the middle of writing checkpoint-6: it must not look complete.
    resumed_args = tiny_args(digits, interrupted, *args, "--resume_from_checkpoint", "latest")
    killed = launch("cpu.yaml", resumed_args, env={"VIT_ACCEL_TEST_FAULT": "during_save:6"}, **FAULTY)
    assert killed.returncode != 0
    assert not (interrupted / "checkpoint-6").exists() and (interrupted / "checkpoint-6.tmp").exists()
    launch("cpu.yaml", resumed_args)

    assert not (interrupted / "checkpoint-6.tmp").exists()
    expected, got = load_file(reference / "model.safetensors"), load_file(interrupted / "model.safetensors")
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert train_losses(interrupted) == train_losses(reference)
    assert results(interrupted)["eval_top1"] == results(reference)["eval_top1"]


def test_a_fresh_run_over_an_old_one_replaces_it_whole_when_asked(digits, tmp_path, run_train):
    out = tmp_path / "run"
    assert run_train(tiny_args(digits, out, "--checkpointing_steps", "3"))[0] == 0
    # Asked for explicitly, a new run replaces the old one whole: none of its checkpoints or log lines survive.
    assert run_train(tiny_args(digits, out, "--overwrite_output_dir", "--checkpointing_steps", "4"))[0] == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_a_window_cut_short_by_the_epoch_end_averages_over_its_examples(digits, tmp_path, run_train):
    """12 images with accumulation 50: one optimizer step over 3 micro-batches, equal to one batch of 12."""
    common = ["--max_train_samples", "12", "--optimizer", "sgd", "--momentum", "0", "--max_grad_norm", "0",
              "--max_train_steps", "1", "--learning_rate", "0.5"]  # fmt: skip
    accumulated, big = tmp_path / "accumulated", tmp_path / "big"
    argv = tiny_args(digits, accumulated, *common, "--per_device_train_batch_size", "5")
    assert run_train([*argv, "--gradient_accumulation_steps", "50"])[0] == 0
    assert run_train(tiny_args(digits, big, *common, "--per_device_train_batch_size", "12"))[0] == 0
    logged = [json.loads((run / "log.jsonl").read_text().splitlines()[0]) for run in (accumulated, big)]
    assert logged[0]["global_batch"] == logged[1]["global_batch"] == 12
    assert logged[0]["loss"] == pytest.approx(logged[1]["loss"], rel=1e-6)
    expected, got = load_file(big / "model.safetensors"), load_file(accumulated / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)


def test_a_finished_run_trains_further_only_when_asked_and_keeps_its_results(digits, tmp_path, run_train):
    out = tmp_path / "run"
    assert run_train(tiny_args(digits, out, "--checkpointing_steps", "6", "--eval_steps", "3"))[0] == 0
    first = results(out)
    resume = ["--resume_from_checkpoint", "latest", "--checkpointing_steps", "6", "--eval_steps", "3"]
    assert run_train(tiny_args(digits, out, *resume))[0] == 0
    assert results(out) == first  # nothing asked for: nothing changed
    assert run_train([*tiny_args(digits, out, *resume), "--max_train_steps", "8"])[0] == 0
    further = results(out)
    assert further["train_steps"] == 8 and {"eval_top1", "eval_top5", "eval_loss"} <= set(further)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8

"""pretrain.py end to end on the digits without their labels: what it writes, the fine-tuning of its encoder by
train.py, exact resume after SIGKILL, and DDP and DeepSpeed ZeRO-2 (2 processes) against one process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from factories import TINY
from launching import (
    FAULTY,
    FP32,
    assert_really,
    assert_same_weights,
    launch,
    results,
    train_in_this_process,
    train_losses,
)
from PIL import Image
from safetensors.torch import load_file

DECODER = ("--decoder_hidden_size", "16", "--decoder_num_hidden_layers", "1", "--decoder_num_attention_heads", "2")


def pretrain_args(digits: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", TINY, *DECODER,
        "--dataset_name", str(digits), "--max_train_samples", "256", "--max_eval_samples", "40",
        "--dataloader_num_workers", "0", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
        "--base_learning_rate", "0.1", "--max_train_steps", "6", "--logging_steps", "1", "--eval_steps", "3",
        "--seed", "3", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def assert_same_model(run: Path, expected: Path, atol: float) -> None:
    """The same weights within `atol`, but the attention's key biases, which must give the same outputs.

    A key bias moves every attention logit of a query by the same amount, which softmax ignores: its gradient is 0
    up to rounding, and Adam, dividing by that gradient's own scale, turns each process count's rounding into
    updates of the learning rate's size. Those biases are checked by their effect instead: the two models'
    reconstructions of the same images under the same masks.
    """
    from vit_accel import ViTAccelForPreTraining
    from vit_accel.training.pretraining import mask_noise

    got, want = load_file(run / "model.safetensors"), load_file(expected / "model.safetensors")
    assert sorted(got) == sorted(want)
    for key in want:
        if not key.endswith("key.bias"):
            torch.testing.assert_close(got[key], want[key], atol=atol, rtol=1e-4, msg=key)
    pixels = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noise = mask_noise(torch.arange(4), 16, 3, None)
    with torch.no_grad():
        a, b = (ViTAccelForPreTraining.from_pretrained(path).eval()(pixels, noise=noise) for path in (run, expected))
    torch.testing.assert_close(a.logits, b.logits, atol=10 * atol, rtol=1e-4)


def pretrain_here(argv: list[str]) -> int:
    return train_in_this_process(argv, threads=1, script="pretrain")


@pytest.fixture(scope="module")
def pretrained(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert pretrain_here(pretrain_args(digits, out, "--checkpointing_steps", "3")) == 0
    return out


def test_pretraining_writes_the_mae_model_its_losses_and_a_reconstruction_figure(pretrained):
    from vit_accel import ViTAccelForPreTraining

    final = assert_really(pretrained, "NO", 1)
    # MAE's scaling: blr x global batch / 256.
    assert final["learning_rate"] == pytest.approx(0.1 * 16 / 256)
    assert final["eval_num_examples"] == 40 and final["train_num_examples"] == 256 and final["eval_split"] == "test"
    records = [json.loads(line) for line in (pretrained / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(losses) == 6 and len(evals) == 2 and all(v > 0 for v in losses + evals)
    assert final["eval_loss"] == evals[-1] and final["metric_for_best_model"] == "eval_loss"
    model = ViTAccelForPreTraining.from_pretrained(pretrained)
    assert (model.config.model_type, model.config.mask_ratio, model.config.decoder_hidden_size) == (
        "vit_accel_mae", 0.75, 16
    )  # fmt: skip
    # The run's held-out loss is the saved model's: recomputed from the saved weights, it matches.
    assert (pretrained / "preprocessor_config.json").is_file() and (pretrained / "training_args.json").is_file()
    figure = Image.open(pretrained / "reconstruction.png")
    # Three rows (original, masked, reconstructed) of 8 held-out images, each enlarged from 16 px to 96 px.
    assert figure.size == (8 * 96 + 9 * 2, 3 * 96 + 4 * 2)
    pixels = torch.tensor(list(figure.convert("L").getdata()), dtype=torch.float32).view(figure.size[1], -1)
    rows = [pixels[2 + i * 98 : 2 + i * 98 + 96] for i in range(3)]
    assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[1], rows[2])
    assert not (pretrained / "README.md").exists()


def test_the_figures_reconstruction_keeps_the_visible_patches_and_greys_the_masked(pretrained):
    from vit_accel import ViTAccelForPreTraining
    from vit_accel.training.pretraining import IMAGENET_MEAN_STD, mask_noise, reconstruction_images

    model = ViTAccelForPreTraining.from_pretrained(pretrained).eval()
    pixels = torch.randn(2, 3, 16, 16)
    noise = mask_noise(torch.tensor([0, 1]), 16, 3, None)
    original, masked, reconstructed = reconstruction_images(model, model, pixels, noise, *IMAGENET_MEAN_STD)
    hidden = model.unpatchify(model(pixels, noise=noise).mask[..., None].expand(-1, -1, 48).contiguous(), (16, 16))
    visible = hidden == 0
    assert visible.any() and (~visible).any()
    torch.testing.assert_close(reconstructed[visible], original[visible])
    assert torch.all(masked[~visible] == 0.5) and torch.equal(masked[visible], original[visible])


def test_train_py_fine_tunes_the_pretrained_encoder_with_a_new_head(pretrained, digits, tmp_path, run_train):
    from vit_accel import ViTAccelForImageClassification

    out = tmp_path / "finetuned"
    argv = [
        "--model_name_or_path", str(pretrained), "--dataset_name", str(digits), "--max_train_samples", "64",
        "--max_eval_samples", "32", "--augmentation", "none", "--dataloader_num_workers", "0",
        "--per_device_train_batch_size", "16", "--max_train_steps", "2", "--learning_rate", "1e-3",
        "--output_dir", str(out),
    ]  # fmt: skip
    code, stderr = run_train(argv)
    assert code == 0, stderr[-3000:]
    final = results(out)
    assert "eval_top1" in final and final["train_steps"] == 2
    model = ViTAccelForImageClassification.from_pretrained(out)
    # MAE's fine-tuning: the patch mean behind a new fc_norm, a head for the digits' ten classes.
    assert (model.config.pooling, model.config.num_labels, model.config.model_type) == ("mean", 10, "vit_accel")
    mae = load_file(pretrained / "model.safetensors")
    tuned = load_file(out / "model.safetensors")
    assert tuned["vit.embeddings.patch_embeddings.projection.weight"].shape == (
        mae["vit.embeddings.patch_embeddings.projection.weight"].shape
    )
    assert not any(key.startswith("decoder.") for key in tuned)


def test_a_pretraining_run_killed_after_a_checkpoint_resumes_bit_exactly(digits, pretrained, tmp_path):
    interrupted = tmp_path / "interrupted"
    args = pretrain_args(digits, interrupted, "--checkpointing_steps", "3")
    env = {"VIT_ACCEL_TEST_FAULT": "after_save:3", "VIT_ACCEL_TEST_SCRIPT": "pretrain.py"}
    killed = launch("cpu.yaml", args, env=env, **FAULTY)
    assert killed.returncode != 0 and not (interrupted / "all_results.json").exists()
    assert (interrupted / "checkpoint-3" / "trainer_state.json").is_file()
    assert pretrain_here([*args, "--resume_from_checkpoint", "latest"]) == 0
    assert_same_weights(interrupted, pretrained, atol=0)
    assert train_losses(interrupted) == train_losses(pretrained)
    assert results(interrupted)["eval_loss"] == results(pretrained)["eval_loss"]


def test_two_process_ddp_and_deepspeed_zero2_pretrain_as_one_process(digits, extensions_dir, tmp_path):
    one, ddp, zero2 = tmp_path / "one", tmp_path / "ddp", tmp_path / "zero2"
    assert pretrain_here(pretrain_args(digits, one)) == 0
    two = ("--per_device_train_batch_size", "8")
    launch("multi_cpu.yaml", pretrain_args(digits, ddp, *two), script="pretrain.py")
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    launch(
        "deepspeed_zero2.yaml", pretrain_args(digits, zero2, *two), env=env, launcher_args=FP32, script="pretrain.py"
    )
    assert_really(one, "NO", 1)
    assert_really(ddp, "MULTI_CPU", 2)
    assert_really(zero2, "DEEPSPEED", 2)
    for run in (ddp, zero2):
        # The same global batch (16 = 1 x 16 = 2 x 8), hence the same scaled rate, masks and losses.
        assert results(run)["learning_rate"] == results(one)["learning_rate"]
        torch.testing.assert_close(train_losses(run), train_losses(one), atol=1e-5, rtol=1e-5)
        assert_same_model(run, one, atol=1e-5)
        # The held-out images are each counted once on two processes.
        assert results(run)["eval_loss"] == pytest.approx(results(one)["eval_loss"], abs=1e-5)


@pytest.mark.parametrize("config", ["deepspeed_zero3.yaml", "fsdp.yaml"])
def test_zero3_and_fsdp_pretrain_two_processes_as_one(config, digits, extensions_dir, tmp_path):
    one, run = tmp_path / "one", tmp_path / "run"
    short = ("--max_train_steps", "3", "--eval_steps", "3")
    assert pretrain_here(pretrain_args(digits, one, *short)) == 0
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    extra = ("--per_device_train_batch_size", "8", *short)
    launch(config, pretrain_args(digits, run, *extra), env=env, launcher_args=FP32, script="pretrain.py")
    assert_really(run, "DEEPSPEED" if "deepspeed" in config else "FSDP", 2)
    torch.testing.assert_close(train_losses(run), train_losses(one), atol=1e-4, rtol=1e-4)
    assert_same_model(run, one, atol=1e-4)
    assert (run / "reconstruction.png").is_file()


@pytest.mark.parametrize(
    "script, flags",
    [
        ("pretrain.py", ("--mask_ratio", "--norm_pix_loss", "--base_learning_rate", "--decoder_num_attention_heads")),
        ("train.py", ("--augmentation {cifar,inception,randaugment,mae,none}", "--label_smoothing")),
    ],
)
def test_help_lists_the_flags(script, flags):
    import subprocess
    import sys

    from launching import ROOT

    code = f"import runpy, sys; sys.argv = [{script!r}, '--help']; runpy.run_path({script!r}, run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for flag in flags:
        assert flag in done.stdout


def test_a_pretraining_run_of_ours_is_continued_with_its_decoder(pretrained, digits, tmp_path, caplog):
    from vit_accel import ViTAccelForPreTraining

    out = tmp_path / "continued"
    argv = pretrain_args(digits, out, "--max_train_steps", "2")
    source = argv.index("--model_name_or_path")
    argv[source + 1] = str(pretrained)
    argv.remove("--from_scratch")
    for flag in ("--config_overrides", *DECODER[::2]):  # the checkpoint's shape and decoder are its own
        index = argv.index(flag)
        del argv[index : index + 2]
    with caplog.at_level("INFO"):
        assert pretrain_here(argv) == 0
    assert "MAE pre-training from an MAE checkpoint (encoder and decoder)" in caplog.text
    # It starts where the run it continues ended, well below a new model's loss.
    assert train_losses(out)[0] < train_losses(pretrained)[0] - 0.1
    assert ViTAccelForPreTraining.from_pretrained(out).config.decoder_hidden_size == 16

"""train.py end to end, as users launch it: `accelerate launch --config_file accelerate_configs/<mode>.yaml train.py`.

Everything runs for real on the CPU: one process, two DDP processes over gloo, DeepSpeed ZeRO-2 with two processes,
SIGKILL and resume (ZeRO-3 and the other scale-out runs: tests/test_train_scale.py). The data is scikit-learn's
digits exported through `datasets` (vit_accel.demo).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from launching import (
    FAULTY,
    FP32,
    ROOT,
    TINY,
    launch,
    results,
    tiny_args,
    train_in_this_process,
    train_losses,
)
from safetensors.torch import load_file

from vit_accel.demo import export_digits

# The regularisation a modern fine-tuning recipe adds (layer decay, EMA, mixup/cutmix, label smoothing, random
# erasing), on top of the digits recipe; milder mixing (half the batches) than ImageNet recipes, for 8x8 digits.
METHODS = [
    "--layer_decay", "0.75", "--ema_decay", "0.995", "--ema_warmup", "--final_model", "best",
    "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0", "--mix_prob", "0.5", "--label_smoothing", "0.1",
    "--random_erasing", "0.25",
]  # fmt: skip


@pytest.fixture(scope="session")
def digits_demo(digits, tmp_path_factory) -> Path:
    """The digits recipe run with every method of METHODS on: the demo's model, and the base of the LoRA demo."""
    out = tmp_path_factory.mktemp("demo") / "digits-demo"
    launch("cpu.yaml", ["recipes/digits_demo.yaml", "--dataset_name", str(digits), "--output_dir", str(out), *METHODS])
    return out


def test_digits_demo_recipe_with_every_method_reaches_95_percent(digits_demo):
    out = digits_demo
    final = results(out)
    assert final["eval_top1"] >= 0.95 and final["ema_eval_top1"] >= 0.95, final
    assert final["final_model"] in ("raw", "ema") and final["trainable_parameters"] == final["total_parameters"]
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "all_results.json", "log.jsonl"}
    assert expected | {"training_args.json", "training_curves.png", "modeling_vit_accel.py"} <= set(os.listdir(out))
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["7"] == "7" and config["auto_map"]
    assert json.loads((out / "training_args.json").read_text())["command"][0] == "train.py"


def vit_accel_cli(*args: str) -> dict:
    """`vit-accel` in a fresh process; the JSON it prints last."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vit_accel.cli", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1] if "predict" not in args else result.stdout)


def test_lora_demo_adapts_the_digits_model_to_rotated_digits(digits_demo, tmp_path):
    rotated = tmp_path / "digits-rot90"
    export_digits(rotated, rotate=90)
    out = tmp_path / "digits-lora"
    launch(
        "cpu.yaml",
        [
            "recipes/digits_lora.yaml", "--model_name_or_path", str(digits_demo), "--dataset_name", str(rotated),
            "--output_dir", str(out),
        ],
    )  # fmt: skip
    final = results(out)
    # A task the base was not trained for: near chance before, >= 90% after, with <= 10% of the weights trained.
    evaluation = ("--dataset_name", str(rotated), "--seed", "0", "--dataloader_num_workers", "0")
    before = vit_accel_cli("evaluate", "--model", str(digits_demo), *evaluation, "--output_dir", str(tmp_path / "e0"))
    assert before["top1"] < 0.5, before
    assert final["eval_top1"] >= 0.90, final
    assert final["trainable_parameters"] <= 0.10 * final["total_parameters"], final
    print(
        f"LoRA demo: base {before['top1']:.4f} -> adapted {final['eval_top1']:.4f} top-1 on {before['num_examples']} "
        f"held-out rotated digits; {final['trainable_parameters']} of {final['total_parameters']} parameters trained"
    )

    # The adapter directory: peft's files naming the base by absolute path, the head's config, processor, card.
    files = set(os.listdir(out))
    assert {"adapter_model.safetensors", "adapter_config.json", "classifier_config.json"} <= files
    assert {"preprocessor_config.json", "README.md", "all_results.json", "training_args.json"} <= files
    assert "config.json" not in files and "model.safetensors" not in files
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(digits_demo.resolve())
    assert "load_adapter_classifier" in (out / "README.md").read_text()
    checkpoint = load_file(next(out.glob("checkpoint-*")) / "model.safetensors")
    assert checkpoint and all("lora_" in k or "modules_to_save" in k for k in checkpoint)  # adapter + head only

    # The base stayed bit-identical: merged/ equals the base on disk where LoRA does not reach, and the base plus
    # the saved adapter, merged here by peft, where it does.
    from peft import PeftModel

    import vit_accel

    base = vit_accel.ViTAccelForImageClassification.from_pretrained(digits_demo)
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    reference = PeftModel.from_pretrained(base, str(out)).merge_and_unload().state_dict()
    merged = vit_accel.ViTAccelForImageClassification.from_pretrained(out / "merged").state_dict()
    targets = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "classifier.")
    for key, value in merged.items():
        assert torch.equal(value, reference[key]), key
        if not any(t in key for t in targets):
            assert torch.equal(value, base_weights[key]), key

    # Downstream, each in a fresh process: vit-accel evaluate and predict on the adapter directory, and the merged
    # directory through plain transformers (no vit_accel, no peft imported) on the same images.
    adapted = vit_accel_cli("evaluate", "--model", str(out), *evaluation, "--output_dir", str(tmp_path / "e1"))
    assert adapted["top1"] == pytest.approx(final["eval_top1"], abs=1e-6)
    from datasets import load_from_disk

    from vit_accel.adapters import load_adapter_classifier
    from vit_accel.data import build_pipeline

    image = tmp_path / "digit.png"
    load_from_disk(str(rotated))["test"][0]["image"].save(image)
    predicted = vit_accel_cli("predict", "--model", str(out), "--json", str(image))
    model = load_adapter_classifier(out)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    pipeline = build_pipeline("none", 16, processor["image_mean"], processor["image_std"], train=False)
    from PIL import Image

    pixels = pipeline.on_device(pipeline(Image.open(image), torch.Generator())[None])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    assert predicted[0]["predictions"][0]["label"] == model.config.id2label[int(logits.argmax(-1))]
    torch.save({"pixels": pixels, "logits": logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(out / "merged")!r}, trust_remote_code=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            logits = model.eval()(pixel_values=expected["pixels"]).logits
        print(json.dumps({{"diff": (logits - expected["logits"]).abs().max().item(),
                          "imported": [m for m in ("peft", "vit_accel") if m in sys.modules]}}))
        """
    )
    plain = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-4000:]
    plain = json.loads(plain.stdout.strip().splitlines()[-1])
    assert plain["imported"] == [] and plain["diff"] <= 1e-4, plain


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(ddp_run, one_process_run):
    one, two = results(one_process_run), results(ddp_run)
    assert one["num_processes"] == 1
    assert two["num_processes"] == 2 and two["distributed_type"] == "DistributedType.MULTI_CPU"
    # Both ranks hold the same weights after training: gradients really were averaged.
    assert two["replica_checksums"][0] == two["replica_checksums"][1]
    # Same global batch (16 = 1 x 16 = 2 x 8), same samples per step: the same losses up to float reassociation.
    assert len(train_losses(ddp_run)) == 6
    torch.testing.assert_close(train_losses(ddp_run), train_losses(one_process_run), atol=1e-5, rtol=1e-5)
    w1, w2 = load_file(one_process_run / "model.safetensors"), load_file(ddp_run / "model.safetensors")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=1e-4, msg=key)
    # gather_for_metrics counted the 64 eval images exactly once on 2 processes: the accuracy is the same.
    assert two["eval_top1"] == pytest.approx(one["eval_top1"], abs=1 / 64 + 1e-9)


def test_lora_with_every_method_under_ddp_and_deepspeed_zero2(digits, tiny_base, extensions_dir, tmp_path):
    extra = ["--per_device_train_batch_size", "8", "--checkpointing_steps", "3", *TINY_METHODS]
    ddp, zero2 = tmp_path / "ddp", tmp_path / "zero2"
    launch("multi_cpu.yaml", lora_args(digits, tiny_base, ddp, *extra))
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    launch("deepspeed_zero2.yaml", lora_args(digits, tiny_base, zero2, *extra), env=env, launcher_args=FP32)
    for run in (ddp, zero2):
        final = results(run)
        assert final["num_processes"] == 2
        # Both ranks hold the same weights and the same average: gradients averaged, EMA updated alike.
        assert len(set(final["replica_checksums"])) == 1 and len(set(final["ema_replica_checksums"])) == 1, final
    # DeepSpeed trains as DDP does (same global batch, same mixing per rank), up to float reassociation.
    torch.testing.assert_close(train_losses(zero2), train_losses(ddp), atol=1e-4, rtol=1e-4)
    a, b = load_file(ddp / "adapter_model.safetensors"), load_file(zero2 / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=key)
    # Checkpoints hold what trains and the optimizer state, not the frozen base: accelerate's file under DDP,
    # the engine's module states (frozen parameters excluded) under DeepSpeed.
    adapter_keys = ("lora_", "modules_to_save")
    assert all(any(t in k for t in adapter_keys) for k in load_file(ddp / "checkpoint-6" / "model.safetensors"))
    states = torch.load(
        zero2 / "checkpoint-6" / "pytorch_model" / "mp_rank_00_model_states.pt", weights_only=True, map_location="cpu"
    )
    assert states["module"] and all(any(t in k for t in adapter_keys) for k in states["module"])

    # And such a checkpoint resumes exactly under DeepSpeed (frozen base rebuilt from the base model, EMA reloaded).
    resumed = tmp_path / "zero2-resumed"
    resumed.mkdir()
    shutil.copytree(zero2 / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(zero2 / "log.jsonl", resumed / "log.jsonl")
    launch(
        "deepspeed_zero2.yaml",
        lora_args(digits, tiny_base, resumed, *extra, "--resume_from_checkpoint", "latest"),
        env=env,
        launcher_args=FP32,
    )
    assert train_losses(resumed) == train_losses(zero2)
    for name in ("adapter_model.safetensors", "checkpoint-6/ema.safetensors"):
        expected, got = load_file(zero2 / name), load_file(resumed / name)
        assert all(torch.equal(got[k], expected[k]) for k in expected), name


def test_zero3_refuses_ema_and_lora_in_one_line_before_anything_loads(digits, tiny_base, extensions_dir, tmp_path):
    out = tmp_path / "zero3"
    args = lora_args(digits, tiny_base, out, "--ema_decay", "0.99")
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    result = launch("deepspeed_zero3.yaml", args, env=env, check=False, launcher_args=FP32)
    assert result.returncode != 0
    lines = {line for line in result.stderr.splitlines() if line.startswith("train.py: error:")}
    assert len(lines) == 1, result.stderr[-3000:]  # each process says the same one line
    line = lines.pop()
    assert "--ema_decay, --peft: not supported under DeepSpeed ZeRO-3" in line, line
    assert not out.exists()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A saved tiny ViT with a 10-class head: the pretrained model LoRA runs start from (its values do not matter)."""
    import vit_accel

    fields = {k: int(v) for k, v in (item.split("=") for item in TINY.split(","))}
    labels = {i: str(i) for i in range(10)}
    torch.manual_seed(0)
    model = vit_accel.ViTAccelForImageClassification(vit_accel.ViTAccelConfig(**fields, id2label=labels))
    path = tmp_path_factory.mktemp("base") / "tiny-base"
    model.save_pretrained(path)
    return path


def lora_args(digits: Path, base: Path, output_dir: Path, *extra: str) -> list[str]:
    args = tiny_args(digits, output_dir, "--peft", "lora", "--lora_r", "4", *extra)
    args.remove("--from_scratch")
    args[args.index("--model_name_or_path") + 1] = str(base)
    return args


# Every method at once, with an EMA short enough to differ from the raw weights in 8 steps.
TINY_METHODS = [
    "--layer_decay", "0.75", "--ema_decay", "0.9", "--ema_warmup", "--final_model", "best", "--mixup_alpha", "0.8",
    "--cutmix_alpha", "1.0", "--mix_prob", "0.5", "--label_smoothing", "0.1", "--random_erasing", "0.25",
]  # fmt: skip
# Each variant runs four times (reference, two kills, the resume): full fine-tuning is tested with every method on,
# which takes the plain path's place.
RESUME_VARIANTS = {
    "full fine-tuning with every method": TINY_METHODS,
    "lora with every method": ["LORA", "--merge_adapter", *TINY_METHODS],
    # A family other than Google's: RoPE, registers and LayerScale, with every method.
    "dinov3 family with every method": ["FAMILY", *TINY_METHODS],
}
DINOV3_FIELDS = "position_embedding_type=rope,num_register_tokens=4,layer_scale_init_value=1e-5"


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_after_sigkill_gives_the_same_weights(variant, digits, tiny_base, tmp_path):
    # Dropout and random augmentation on, so that restoring RNG states and the data order is what is tested.
    args = [
        "--config_overrides", TINY + ",hidden_dropout_prob=0.1", "--augmentation", "inception",
        "--max_train_steps", "8", "--checkpointing_steps", "2", "--save_total_limit", "2",
        "--gradient_accumulation_steps", "2", "--per_device_train_batch_size", "8", "--eval_steps", "4",
    ]  # fmt: skip
    extra = RESUME_VARIANTS[variant]
    if extra[:1] == ["FAMILY"]:
        args[args.index("--config_overrides") + 1] += "," + DINOV3_FIELDS
        extra = extra[1:]
    if extra[:1] == ["LORA"]:
        args = [a for a in args if a not in ("--config_overrides", TINY + ",hidden_dropout_prob=0.1")]

        def make_args(out, *more):
            return lora_args(digits, tiny_base, out, *args, *extra[1:], *more)
    else:

        def make_args(out, *more):
            return tiny_args(digits, out, *args, *extra, *more)

    # The uninterrupted reference and the last resume run in this process (killing needs a process of its own).
    reference = tmp_path / "reference"
    assert train_in_this_process(make_args(reference), threads=1) == 0

    interrupted = tmp_path / "interrupted"
    killed = launch("cpu.yaml", make_args(interrupted), env={"VIT_ACCEL_TEST_FAULT": "after_save:4"}, **FAULTY)
    assert killed.returncode != 0 and not (interrupted / "all_results.json").exists()
    assert (interrupted / "checkpoint-4" / "trainer_state.json").is_file()
    # Killed again, this time in the middle of writing checkpoint-6: it must not look complete.
    resumed_args = make_args(interrupted, "--resume_from_checkpoint", "latest")
    killed = launch("cpu.yaml", resumed_args, env={"VIT_ACCEL_TEST_FAULT": "during_save:6"}, **FAULTY)
    assert killed.returncode != 0
    assert not (interrupted / "checkpoint-6").exists() and (interrupted / "checkpoint-6.tmp").exists()
    assert train_in_this_process(resumed_args, threads=1) == 0

    assert not (interrupted / "checkpoint-6.tmp").exists()
    weights = ["adapter_model.safetensors", "merged/model.safetensors"] if "lora" in variant else ["model.safetensors"]
    if "--ema_decay" in extra:
        weights.append("checkpoint-8/ema.safetensors")
    for name in weights:
        expected, got = load_file(reference / name), load_file(interrupted / name)
        assert expected.keys() == got.keys(), name
        for key in expected:
            assert torch.equal(got[key], expected[key]), (name, key)
    assert train_losses(interrupted) == train_losses(reference)
    metrics = [k for k in results(reference) if k.startswith(("eval_", "ema_eval_"))]
    assert metrics and all(results(interrupted)[k] == results(reference)[k] for k in metrics)
    if RESUME_VARIANTS[variant][:1] == ["FAMILY"]:
        saved = json.loads((interrupted / "config.json").read_text())
        assert (saved["position_embedding_type"], saved["num_register_tokens"]) == ("rope", 4)


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


def test_partial_freezing_checkpoints_what_trains_and_resumes_exactly(digits, tiny_base, tmp_path, run_train):
    args = ["--freeze_layers", "1", "--checkpointing_steps", "3", "--save_total_limit", "3"]

    def from_base(output_dir: Path, *extra: str) -> list[str]:  # freezing applies to pretrained weights only
        argv = tiny_args(digits, output_dir, *args, *extra)
        argv.remove("--from_scratch")
        argv[argv.index("--model_name_or_path") + 1] = str(tiny_base)
        return argv

    reference = tmp_path / "reference"
    assert run_train(from_base(reference))[0] == 0
    saved = load_file(reference / "checkpoint-3" / "model.safetensors")
    assert saved and not any(k.startswith(("vit.embeddings.", "vit.layers.0.")) for k in saved)
    assert any(k.startswith("vit.layers.1.") for k in saved) and "classifier.weight" in saved
    assert results(reference)["trainable_parameters"] < results(reference)["total_parameters"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(reference / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(reference / "log.jsonl", resumed / "log.jsonl")
    assert run_train(from_base(resumed, "--resume_from_checkpoint", "latest"))[0] == 0
    expected, got = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected)

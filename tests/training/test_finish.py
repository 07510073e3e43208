"""The final phase of a run (train.py's `finish_run`): one model per directory, and Ctrl-C at any point of it leaves
a directory that is whole, or one that a resume finishes, with a line saying which."""

import json
from pathlib import Path

import pytest
import torch
from factories import TINY
from huggingface_hub import ModelCard
from launching import results, tiny_args
from safetensors.torch import load_file
from transformers import ViTImageProcessor

import vit_accel


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A saved tiny ViT with a 10-class head, for the LoRA runs."""
    fields = {k: int(v) for k, v in (item.split("=") for item in TINY.split(","))}
    torch.manual_seed(0)
    model = vit_accel.ViTAccelForImageClassification(
        vit_accel.ViTAccelConfig(**fields, id2label={i: str(i) for i in range(10)})
    )
    path = tmp_path_factory.mktemp("base") / "tiny-base"
    model.save_pretrained(path)
    return path


def lora_args(digits: Path, base: Path, output_dir: Path, *extra: str) -> list[str]:
    args = tiny_args(digits, output_dir, "--peft", "lora", "--lora_r", "4", *extra)
    args.remove("--from_scratch")
    args[args.index("--model_name_or_path") + 1] = str(base)
    return args


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


original_card_save = ModelCard.save


def interrupt_our_card(card, *args, **kwargs):
    if "vit_accel" not in card.content:  # peft's own card, which its save_pretrained writes first
        return original_card_save(card, *args, **kwargs)
    raise KeyboardInterrupt


# Where Ctrl-C lands in the final phase: just after the weights are saved (the image processor is written next),
# or while the run's model card is written.
POINTS = {
    "after the weights": (ViTImageProcessor, "save_pretrained", interrupt),
    "in the card": (ModelCard, "save", interrupt_our_card),
}


@pytest.mark.parametrize("kind", ["full", "lora"])
@pytest.mark.parametrize("point", list(POINTS))
def test_ctrl_c_after_training_says_what_was_saved_and_a_resume_finishes_the_save(
    kind, point, digits, base, tmp_path, run_train, monkeypatch
):
    out = tmp_path / "run"
    argv = tiny_args(digits, out, "--checkpointing_steps", "3")
    if kind == "lora":
        argv = lora_args(digits, base, out, "--checkpointing_steps", "3", "--merge_adapter")
    with monkeypatch.context() as patch:
        patch.setattr(*POINTS[point], interrupt)
        code, stderr = run_train(argv)
    assert code == 130
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("train.py: interrupted at step 6, after training, while ")
    assert "nothing was written" not in message and "before training" not in message
    saved = ["adapter_config.json", "adapter_model.safetensors"] if kind == "lora" else ["model.safetensors"]
    assert "saved)" in message and all(name in message.split("saved)")[0] for name in saved)
    assert "no all_results.json" in message and "--resume_from_checkpoint latest (checkpoint-6)" in message
    # The directory does not pass for a finished run: no results file next to a half-written save.
    assert not (out / "all_results.json").exists()

    assert run_train([*argv, "--resume_from_checkpoint", "latest"])[0] == 0
    final = results(out)
    assert final["train_steps"] == 6 and "eval_top1" in final
    card = (out / "README.md").read_text()
    assert "eval_top1" in card or "top-1" in card.lower()
    assert (out / "preprocessor_config.json").is_file() and (out / "training_args.json").is_file()
    if kind == "lora":
        assert (out / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
        assert "peft" not in card.splitlines()[1:3]  # our card, not peft's generic one
    else:
        assert load_file(out / "model.safetensors")
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(6) == len([s for s in steps if s == 6])


def test_ctrl_c_after_the_results_says_the_run_is_complete(digits, tmp_path, run_train, monkeypatch):
    import accelerate

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(accelerate.Accelerator, "end_training", interrupt)
        code, stderr = run_train(tiny_args(digits, out))
    assert code == 130
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("train.py: interrupted at step 6, while ") and "the run is complete" in message
    assert results(out)["train_steps"] == 6 and (out / "README.md").is_file()


def kinds_of_files(out: Path) -> set[str]:
    names = {p.name for p in out.iterdir()}
    return {
        kind
        for kind, files in {
            "model": {"config.json", "model.safetensors"},
            "adapter": {"adapter_model.safetensors", "adapter_config.json", "classifier_config.json"},
            "merged": {"merged"},
        }.items()
        if names & files
    }


def test_a_run_replacing_another_keeps_none_of_its_model_files(digits, base, tmp_path, run_train):
    out = tmp_path / "run"
    lora = lora_args(digits, base, out, "--merge_adapter")
    assert run_train(lora)[0] == 0
    assert kinds_of_files(out) == {"adapter", "merged"}
    # A full fine-tune over the LoRA run: the adapter, its head's config and merged/ go with the old run.
    assert run_train(tiny_args(digits, out, "--overwrite_output_dir"))[0] == 0
    assert kinds_of_files(out) == {"model"}
    assert vit_accel.ViTAccelForImageClassification.from_pretrained(out).config.num_labels == 10
    # And the reverse: a LoRA run over a full one leaves no config.json/model.safetensors for from_pretrained.
    assert run_train([*lora[:-1], "--overwrite_output_dir"])[0] == 0
    assert kinds_of_files(out) == {"adapter"}


def test_a_resumed_lora_run_without_merge_adapter_drops_the_old_merged_copy(digits, base, tmp_path, run_train):
    out = tmp_path / "run"
    first = lora_args(digits, base, out, "--checkpointing_steps", "3", "--merge_adapter")
    assert run_train(first)[0] == 0 and (out / "merged").is_dir()
    # Trained further without --merge_adapter: merged/ would hold the old weights, disagreeing with the adapter.
    again = lora_args(digits, base, out, "--checkpointing_steps", "3", "--max_train_steps", "8")
    assert run_train([*again, "--resume_from_checkpoint", "latest"])[0] == 0
    assert results(out)["train_steps"] == 8 and kinds_of_files(out) == {"adapter"}

"""Sources whose architecture the weights do not fully say, and directories that are something else."""

import json
import re

import pytest
import torch
from factories import tiny_config_kwargs
from safetensors.torch import load_file, save_file

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.cli import main as vit_accel
from vit_accel.errors import UserError
from vit_accel.weights import export

ATOL = 1e-4


@pytest.fixture
def two_heads(tmp_path):
    """A classifier with 2 heads of width 16 (so 1 or 4 heads would also fit every shape), random everywhere."""
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(
        ViTAccelConfig(**tiny_config_kwargs(hidden_size=32, num_attention_heads=2, intermediate_size=64))
    ).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)
    return model


def test_a_timm_file_takes_its_heads_from_the_config_json_beside_it(two_heads, tmp_path, capsys):
    export(two_heads, tmp_path / "timm", to="timm")  # timm's Hub layout: model_args.num_heads = 2
    pixels = torch.randn(2, 3, 32, 32)
    loaded = ViTAccelForImageClassification.from_pretrained(tmp_path / "timm" / "model.safetensors")
    assert loaded.config.num_attention_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, two_heads(pixels).logits, atol=ATOL, rtol=0)
    assert vit_accel(["convert", str(tmp_path / "timm" / "model.safetensors"), str(tmp_path / "ours"), "--quiet"]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["num_attention_heads"] == 2
    converted = ViTAccelForImageClassification.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).logits, two_heads(pixels).logits, atol=ATOL, rtol=0)


def test_a_file_whose_heads_nothing_records_is_refused_naming_the_field(two_heads, tmp_path, capsys):
    export(two_heads, tmp_path / "timm", to="timm")
    save_file(load_file(tmp_path / "timm" / "model.safetensors"), tmp_path / "bare.safetensors")  # no config.json
    save_file(two_heads.state_dict(), tmp_path / "ours.safetensors")
    for source in (tmp_path / "bare.safetensors", tmp_path / "ours.safetensors"):
        with pytest.raises(UserError, match=r"does not record num_attention_heads .* pass num_attention_heads="):
            ViTAccelForImageClassification.from_pretrained(source)
        capsys.readouterr()
        assert vit_accel(["convert", str(source), str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{source}: a " in err and "num_attention_heads" in err and err.count("\n") == 1
        assert not (tmp_path / "out").exists()
        told = ViTAccelForImageClassification.from_pretrained(source, num_attention_heads=2)
        with torch.no_grad():
            pixels = torch.randn(2, 3, 32, 32)
            torch.testing.assert_close(told(pixels).logits, two_heads(pixels).logits, atol=ATOL, rtol=0)


def test_a_config_json_beside_the_file_that_describes_another_model_is_refused(two_heads, tmp_path):
    export(two_heads, tmp_path / "timm", to="timm")
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    config["model_args"]["embed_dim"] = 64
    (tmp_path / "timm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"model_args.embed_dim is 64, but the weights beside it are 32 wide"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "timm" / "model.safetensors")


# --- The Python API on a directory of ours: each keyword's mistake is one line; what is documented works. ---


@pytest.fixture
def ours(two_heads, tmp_path):
    two_heads.save_pretrained(tmp_path / "ours")  # a trained 5-class head
    return tmp_path / "ours"


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"num_labels": 3}, r"num_labels=3\): it holds a trained 5-class head; ignore_mismatched_sizes=True replaces"),
        ({"id2label": {0: "a", 1: "b"}}, r"id2label=<2 labels>\): it holds a trained 5-class head; ignore_mismatched"),
        ({"label2id": {"a": 0}}, r"label2id=<1 labels>\): it holds a trained 5-class head"),
        ({"revision": "v2"}, r"revision='v2': .* is a local path, which has no revisions"),
        ({"num_labels": 0}, r"num_labels must be a positive integer \(the classes of the head\), got 0"),
    ],
)
def test_keywords_that_do_not_fit_a_directory_of_ours_are_one_line(ours, keywords, message):
    with pytest.raises(UserError, match=message) as caught:
        ViTAccelForImageClassification.from_pretrained(ours, **keywords)
    assert "\n" not in str(caught.value)


def test_head_init_with_ignore_mismatched_sizes_builds_that_head_on_a_directory_of_ours(ours, two_heads):
    pixels = torch.randn(2, 3, 32, 32)
    for head_init in ("zeros", "normal"):
        model = ViTAccelForImageClassification.from_pretrained(
            ours, num_labels=3, ignore_mismatched_sizes=True, head_init=head_init
        )
        assert model.classifier.weight.shape == (3, 32) and not model.classifier.bias.any()
        assert bool(model.classifier.weight.any()) == (head_init == "normal")
        torch.testing.assert_close(model.vit.layers[1].mlp.fc2.weight, two_heads.vit.layers[1].mlp.fc2.weight)
    kept = ViTAccelForImageClassification.from_pretrained(ours, head_init="normal")  # the trained head fits: kept
    with torch.no_grad():
        torch.testing.assert_close(kept(pixels).logits, two_heads(pixels).logits, atol=0, rtol=0)
    again = ViTAccelForImageClassification.from_pretrained(ours, num_labels=3, ignore_mismatched_sizes=True)
    assert again.config.num_labels == 3  # transformers' own path, as before


# --- Outputs of this project that hold no model to load, given where a model is expected. ---


@pytest.fixture(scope="module")
def other_kinds(trained_run, tmp_path_factory):
    """An adapter directory (with and without merged/), a training checkpoint and both graph exports."""
    import shutil

    from vit_accel.adapters import apply_lora, merged_copy, save_adapter

    root = tmp_path_factory.mktemp("kinds")
    adapted = apply_lora(ViTAccelForImageClassification.from_pretrained(trained_run), r=2)
    save_adapter(adapted, root / "adapter")
    shutil.copytree(root / "adapter", root / "adapter_merged")
    merged_copy(adapted).save_pretrained(root / "adapter_merged" / "merged")
    for to in ("onnx", "exported-program"):
        assert vit_accel(["export", str(trained_run), str(root / to), "--to", to]) == 0
    from launching import tiny_args, train_in_this_process

    run = root / "run"  # a real checkpoint: a 2-step run that saves one after its first step
    argv = tiny_args(trained_run.parent / "digits", run, "--max_train_steps", "2", "--checkpointing_steps", "1")
    assert train_in_this_process(argv, threads=1) == 0
    checkpoint = run / "checkpoint-1"
    return {
        "adapter": (root / "adapter", "a LoRA adapter directory (adapter_config.json), not a model: load it with "
                    "vit_accel.adapters.load_adapter_classifier("),
        "adapter with merged/": (root / "adapter_merged",
                                 f"or use its merged copy {root / 'adapter_merged' / 'merged'}"),
        "checkpoint": (checkpoint, f"a training checkpoint (trainer_state.json) of the run in {run}, not a model: use "
                       f"the run directory {run}"),
        "onnx": (root / "onnx", "an ONNX export (model.onnx), a graph for ONNX runtimes, not a model to load: run it "
                 "with onnxruntime"),
        "onnx file": (root / "onnx" / "model.onnx", "an ONNX export (model.onnx)"),
        "exported-program": (root / "exported-program", "a torch.export ExportedProgram (model.pt2), not a model to "
                             "load: run it with torch.export.load("),
        "exported-program file": (root / "exported-program" / "model.pt2", "a torch.export ExportedProgram"),
    }  # fmt: skip


KINDS = ["adapter", "adapter with merged/", "checkpoint", "onnx", "onnx file", "exported-program",
         "exported-program file"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_what_is_not_a_model_is_named_with_what_to_use_instead(kind, other_kinds, digit_images, tmp_path, capsys):
    source, message = other_kinds[kind]
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        ViTAccelForImageClassification.from_pretrained(source)
    assert str(caught.value).startswith(f"{source}: a") and "\n" not in str(caught.value)
    commands = [["export", str(source), str(tmp_path / "e")], ["convert", str(source), str(tmp_path / "c")]]
    if not kind.startswith("adapter"):  # predict reads an adapter directory (merged into its base)
        commands.append(["predict", "--model", str(source), str(digit_images[0])])
    for command in commands:
        capsys.readouterr()
        assert vit_accel(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (command, err)
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()


def test_a_checkpoint_copied_away_from_its_run_is_named_without_a_run_to_point_to(other_kinds, tmp_path):
    import shutil

    copied = tmp_path / "saved_checkpoint"
    shutil.copytree(other_kinds["checkpoint"][0], copied)
    message = f"{copied}: a training checkpoint (trainer_state.json), not a model: continue the run with "
    with pytest.raises(UserError, match=re.escape(message + f"--resume_from_checkpoint {copied}")):
        ViTAccelForImageClassification.from_pretrained(copied)

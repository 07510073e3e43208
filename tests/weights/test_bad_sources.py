"""Sources whose architecture the weights do not fully say, and directories that are something else."""

import json

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

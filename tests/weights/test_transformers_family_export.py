"""Export of the ViT families to transformers' own classes: the directory opens with the class its config.json names
(transformers' `from_pretrained`, nothing of vit_accel's), gives our outputs at the native and a resampled
resolution, and reads back into exactly our model; the classifiers whose transformers class reads other features
are refused by name."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelForPreTraining, ViTAccelModel
from vit_accel.configuration_vit_accel import ViTAccelMAEConfig
from vit_accel.errors import UserError
from vit_accel.weights import export

ATOL = 1e-4
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
_DINOV2 = {"image_size": 28, "patch_size": 14, "layer_scale_init_value": 1e-5}
_REGISTERS = {**_DINOV2, "num_register_tokens": 4, "prefix_position_embeddings": False}
_DINOV3 = {
    "image_size": 32,
    "patch_size": 8,
    "position_embedding_type": "rope",
    "num_register_tokens": 2,
    "layer_scale_init_value": 1e-5,
    "layer_norm_eps": 1e-5,
}
_CLIP = {
    "image_size": 32,
    "patch_size": 8,
    "pre_norm": True,
    "patch_embedding_bias": False,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_SIGLIP = {"image_size": 32, "patch_size": 8, "use_cls_token": False, "pooling": "map"}

# name -> (our fields, transformers class written)
CLASSIFIERS = {
    "dinov2": ({**_DINOV2, "pooling": "cls_mean"}, "Dinov2ForImageClassification"),
    "dinov2-swiglu": (
        {**_DINOV2, "pooling": "cls_mean", "mlp_type": "swiglu", "hidden_act": "silu", "intermediate_size": 88},
        "Dinov2ForImageClassification",
    ),
    "dinov2-registers": ({**_REGISTERS, "pooling": "cls_mean"}, "Dinov2WithRegistersForImageClassification"),
}
BACKBONES = {
    "dinov2": ({**_DINOV2, "pooling": "cls_mean"}, "Dinov2Model"),
    "dinov2-registers": ({**_REGISTERS, "pooling": "cls_mean"}, "Dinov2WithRegistersModel"),
    "dinov3": (_DINOV3, "DINOv3ViTModel"),
    "dinov3-gated-zero-key-bias": (
        {**_DINOV3, "mlp_type": "swiglu", "hidden_act": "silu", "num_register_tokens": 0},
        "DINOv3ViTModel",
    ),
    "clip": (_CLIP, "CLIPVisionModel"),
    "siglip": (_SIGLIP, "SiglipVisionModel"),
}


def resolutions(name, fields):
    """The native size, and 1.5x it where transformers' class resamples its positions on the fly as ours does
    (bicubic, no antialiasing; RoPE has no table). DINOv2 with registers antialiases (PIL's bicubic kernel, another
    curve even when enlarging): its resampled model is checked in `test_resampled_model_exports_at_its_size`."""
    size = fields["image_size"]
    return (size,) if "registers" in name else (size, size * 3 // 2)


def ours(fields, num_labels=3, zero_key_bias=False):
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**{**TINY, **fields, "num_labels": num_labels}))
    with torch.no_grad():  # random everywhere (LayerScale, registers, the probe) makes the comparison meaningful
        for name, param in model.named_parameters():
            param.normal_(0, 0.1)
            if zero_key_bias and name.endswith("attention.k_proj.bias"):
                param.zero_()
    return model.eval()


def open_export(directory, expected_class):
    """The export opened by transformers alone: the class config.json names, no remote code."""
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == [expected_class] and "auto_map" not in config
    model_class = getattr(transformers, expected_class)
    assert model_class.__module__.startswith("transformers.")
    return model_class.from_pretrained(directory).eval()


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_exports_to_transformers_class_with_our_logits(tmp_path, name):
    fields, expected = CLASSIFIERS[name]
    model = ours(fields)
    model.save_pretrained(tmp_path / "ours")
    export(tmp_path / "ours", tmp_path / "out", to="transformers")
    theirs = open_export(tmp_path / "out", expected)
    for resolution in resolutions(name, fields):  # DINOv2 resamples its positions at any other size
        pixels = torch.randn(2, 3, resolution, resolution)
        with torch.no_grad():
            mine = model(pixels, interpolate_pos_encoding=resolution != fields["image_size"]).logits
            torch.testing.assert_close(theirs(pixels).logits, mine, atol=ATOL, rtol=0)
    back = ViTAccelForImageClassification.from_pretrained(tmp_path / "out")
    assert back.config.pooling == "cls_mean"
    assert back.config.id2label == model.config.id2label
    _assert_same_weights(back, model)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_exports_to_transformers_class_with_our_hidden_states(tmp_path, name):
    fields, expected = BACKBONES[name]
    model = ours(fields, zero_key_bias="zero-key-bias" in name)
    if name.startswith("dinov2"):  # a bare ViTAccelModel is a backbone without being told
        export(model.vit, tmp_path / "out", to="transformers")
    else:
        export(model, tmp_path / "out", to="transformers", backbone_only=True)
    theirs = open_export(tmp_path / "out", expected)
    if "zero-key-bias" in name:  # transformers' DINOv3 has no key bias unless the config asks for one
        assert theirs.config.key_bias is False
    size = fields["image_size"]
    for resolution in resolutions(name, fields):
        pixels = torch.randn(2, 3, resolution, resolution)
        resample = {"interpolate_pos_encoding": True} if name in ("clip", "siglip") and resolution != size else {}
        with torch.no_grad():
            mine = model.vit(pixels, interpolate_pos_encoding=resolution != size, output_hidden_states=True)
            out = theirs(pixels, **resample)
        if name == "clip":
            # CLIP's last_hidden_state precedes its final LayerNorm; its pooler_output is our normalised CLS token.
            torch.testing.assert_close(out.last_hidden_state, mine.hidden_states[-1], atol=ATOL, rtol=0)
            torch.testing.assert_close(out.pooler_output, mine.last_hidden_state[:, 0], atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(out.last_hidden_state, mine.last_hidden_state, atol=ATOL, rtol=0)
        if name == "siglip":  # SiglipVisionModel's pooler_output is its MAP head: our map pooling
            torch.testing.assert_close(out.pooler_output, mine.pooler_output, atol=ATOL, rtol=0)
    _assert_same_weights(ViTAccelModel.from_pretrained(tmp_path / "out"), model.vit)


@pytest.mark.parametrize("name", ["dinov2-registers", "clip", "siglip"])
def test_resampled_model_exports_at_its_size(tmp_path, name):
    """A model loaded at another resolution (its position table resampled once) exports with that table."""
    fields, expected = BACKBONES[name]
    ours(fields).save_pretrained(tmp_path / "ours")
    new = fields["image_size"] * 3 // 2
    model = ViTAccelForImageClassification.from_pretrained(tmp_path / "ours", image_size=new).eval()
    export(model, tmp_path / "out", to="transformers", backbone_only=True)
    theirs = open_export(tmp_path / "out", expected)
    assert theirs.config.image_size == new
    pixels = torch.randn(2, 3, new, new)
    with torch.no_grad():
        mine = model.vit(pixels, output_hidden_states=True)
        out = theirs(pixels)
    expected_states = mine.hidden_states[-1] if name == "clip" else mine.last_hidden_state
    torch.testing.assert_close(out.last_hidden_state, expected_states, atol=ATOL, rtol=0)
    _assert_same_weights(ViTAccelModel.from_pretrained(tmp_path / "out"), model.vit)


def _assert_same_weights(back, model):
    mine, read = model.state_dict(), back.state_dict()
    if "pooler.dense.weight" not in mine:  # the bare model builds a new pooler for pooling="cls"; ours had none
        read = {key: value for key, value in read.items() if not key.startswith("pooler.")}
    assert sorted(read) == sorted(mine)
    for key, value in mine.items():
        assert torch.equal(read[key], value), key


@pytest.mark.parametrize(
    "fields, refused",
    [
        (_SIGLIP, r"SiglipForImageClassification averages the tokens and ignores the attention-pooling"),
        (_CLIP, r"CLIPForImageClassification averages the patch tokens"),
        (_DINOV3, r"transformers has no DINOv3 image-classification class"),
        (_DINOV2, r"Dinov2ForImageClassification reads the CLS token and the patch mean .*not pooling='cls'"),
    ],
    ids=["siglip", "clip", "dinov3", "dinov2-cls"],
)
def test_classifier_whose_transformers_head_differs_is_refused_by_name(tmp_path, fields, refused):
    ours(fields).save_pretrained(tmp_path / "ours")
    with pytest.raises(UserError, match=refused) as error:
        export(tmp_path / "ours", tmp_path / "out", to="transformers")
    message = str(error.value)
    assert "\n" not in message and "--backbone-only" in message and "--to timm" in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "fields, refused",
    [
        ({"pooling": "mean"}, r"pooling='mean' .* is in no transformers class"),
        ({"layer_scale_init_value": 1e-6, "prefix_position_embeddings": False}, r"prefix_position_embeddings=False"),
        ({**_CLIP, "qkv_bias": False}, r"CLIPVisionModel\) has no qkv_bias=False"),
        ({**_SIGLIP, "pooling": "mean"}, r"pooling='mean'"),
    ],
    ids=["mae-mean", "deit3", "clip-no-qkv-bias", "siglip-mean"],
)
def test_model_no_transformers_class_computes_is_refused_by_name(tmp_path, fields, refused):
    model = ours({"image_size": 32, "patch_size": 8, **fields})
    with pytest.raises(UserError, match=refused) as error:
        export(model, tmp_path / "out", to="transformers", backbone_only=True)
    assert "\n" not in str(error.value) and "--to timm" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_backbone_only_is_refused_for_other_targets(tmp_path):
    with pytest.raises(UserError, match=r"backbone_only applies to export to transformers, not to 'timm'"):
        export(ours(_SIGLIP), tmp_path / "out", to="timm", backbone_only=True)


def test_cli_backbone_only_writes_the_bare_class(tmp_path, capsys):
    from vit_accel.cli import main

    model = ours(_SIGLIP)
    model.save_pretrained(tmp_path / "ours")
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "refused")]) != 0
    assert "SiglipForImageClassification averages the tokens" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "out"), "--backbone-only"]) == 0
    theirs = open_export(tmp_path / "out", "SiglipVisionModel")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixels).pooler_output, model.vit(pixels).pooler_output, atol=ATOL, rtol=0)


def tiny_mae():
    torch.manual_seed(0)
    config = ViTAccelMAEConfig(
        **TINY, image_size=32, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4, decoder_intermediate_size=64, mask_ratio=0.5,
    )  # fmt: skip
    model = ViTAccelForPreTraining(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # the sin-cos tables stay what they are
                param.normal_(0, 0.1)
    return model.eval()


def test_mae_pretraining_exports_to_vitmae_with_our_loss(tmp_path):
    model = tiny_mae()
    model.save_pretrained(tmp_path / "ours")
    export(tmp_path / "ours", tmp_path / "out", to="transformers")
    theirs = open_export(tmp_path / "out", "ViTMAEForPreTraining")
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        mine, out = model(pixels, noise=noise), theirs(pixels, noise=noise)
    torch.testing.assert_close(out.logits, mine.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.loss, mine.loss, atol=ATOL, rtol=0)
    _assert_same_weights(ViTAccelForPreTraining.from_pretrained(tmp_path / "out"), model)


def test_mae_encoder_exports_to_vitmae_model(tmp_path):
    model = tiny_mae()
    export(model, tmp_path / "out", to="transformers", backbone_only=True)
    theirs = open_export(tmp_path / "out", "ViTMAEModel")
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        latent, mask, ids_restore = model.vit.forward_visible(pixels, noise, False)
        out = theirs(pixels, noise=noise)
    torch.testing.assert_close(out.last_hidden_state, latent, atol=ATOL, rtol=0)
    assert torch.equal(out.ids_restore, ids_restore) and torch.equal(out.mask, mask)


def test_mae_pretraining_model_to_timm_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"exports to transformers \(ViTMAEForPreTraining\), not to 'timm'"):
        export(tiny_mae(), tmp_path / "out", to="timm")


def test_fresh_process_without_vit_accel_opens_the_exports(tmp_path):
    """transformers' Auto classes alone, vit_accel not importable, open each export and give our outputs."""
    cases = {
        "dinov2-registers": (ours({**_REGISTERS, "pooling": "cls_mean"}), False, "AutoModelForImageClassification"),
        "siglip": (ours(_SIGLIP), True, "AutoModel"),
        "dinov3": (ours(_DINOV3), True, "AutoModel"),
    }
    expected = {}
    for name, (model, backbone_only, _) in cases.items():
        export(model, tmp_path / name, to="transformers", backbone_only=backbone_only)
        size = model.config.image_size
        pixels = torch.randn(2, 3, size, size)
        with torch.no_grad():
            output = model.vit(pixels) if backbone_only else model(pixels)
        expected[name] = (pixels, output.last_hidden_state if backbone_only else output.logits)
    torch.save(expected, tmp_path / "expected.pt")
    auto = {name: auto_class for name, (_, _, auto_class) in cases.items()}
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["vit_accel"] = None  # any import of vit_accel now fails
        import torch
        import transformers
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        for name, auto_class in {auto!r}.items():
            model = getattr(transformers, auto_class).from_pretrained({str(tmp_path)!r} + "/" + name).eval()
            assert type(model).__module__.startswith("transformers.models."), type(model).__module__
            pixels, wanted = expected[name]
            with torch.no_grad():
                out = model(pixels)
            got = out.logits if hasattr(out, "logits") else out.last_hidden_state
            print("MAXDIFF", name, type(model).__name__, (got - wanted).abs().max().item())
            assert (got - wanted).abs().max().item() <= {ATOL}, name
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in cases:
        assert f"MAXDIFF {name} " in result.stdout

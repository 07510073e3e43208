"""timm's ViT families (DINOv2, DINOv2 with registers, DeiT III, CLIP, SigLIP, MAE's average pooling, DINOv3) in
timm's Hub layout: logits against timm itself at the native and a resampled resolution, the round trip back to
timm, refusals."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf
from timm.models.vision_transformer import checkpoint_filter_fn

from vit_accel import ViTAccelForImageClassification, ViTAccelModel
from vit_accel.errors import UserError
from vit_accel.weights import CheckpointError, convert, export, read_checkpoint

ATOL = 1e-4

# (timm model name, extra kwargs, patch size, resolution, resampled resolution, what our config must say)
FAMILIES = {
    "dinov2": (
        "vit_small_patch14_dinov2",
        {},
        14,
        28,
        42,
        {"layer_scale_init_value": 1e-5, "num_register_tokens": 0, "prefix_position_embeddings": True},
    ),
    "dinov2-reg4": (
        "vit_small_patch14_reg4_dinov2",
        {},
        14,
        28,
        42,
        {"num_register_tokens": 4, "prefix_position_embeddings": False},
    ),
    "deit3": (
        "deit3_small_patch16_224",
        {},
        8,
        32,
        48,
        {"layer_scale_init_value": 1e-6, "prefix_position_embeddings": False},
    ),
    "clip": (
        "vit_base_patch16_clip_224",
        {},
        8,
        32,
        48,
        {"pre_norm": True, "patch_embedding_bias": False, "layer_norm_eps": 1e-5, "hidden_act": "gelu"},
    ),
    "clip-quickgelu": ("vit_base_patch16_clip_quickgelu_224", {}, 8, 32, 48, {"hidden_act": "quick_gelu"}),
    "siglip": ("vit_base_patch16_siglip_224", {}, 8, 32, 48, {"use_cls_token": False, "pooling": "map"}),
    "siglip-gelu-tanh": ("vit_base_patch32_siglip_256", {}, 8, 32, 48, {"hidden_act": "gelu_pytorch_tanh"}),
    "mae-avg": ("vit_base_patch16_224.mae", {"global_pool": "avg"}, 8, 32, 48, {"pooling": "mean"}),
}


def timm_family(name, kwargs, patch, size, num_classes=5):
    torch.manual_seed(0)
    model = timm.create_model(
        name,
        pretrained=False,
        img_size=size,
        patch_size=patch,
        embed_dim=64,
        depth=2,
        num_heads=4,
        num_classes=num_classes,
        **kwargs,
    )
    with torch.no_grad():  # random everywhere (LayerScale, registers, the pool's query) makes the comparison meaningful
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(params=sorted(FAMILIES))
def family(request, tmp_path):
    name, kwargs, patch, size, resampled, expected = FAMILIES[request.param]
    reference = timm_family(name, kwargs, patch, size)
    folder = tmp_path / request.param
    save_for_hf(reference, folder, safe_serialization=request.param != "deit3")  # deit3: pytorch_model.bin
    return request.param, reference, folder, (name, kwargs, patch, size, resampled, expected)


def test_family_logits_match_timm_with_its_head(family):
    key, reference, folder, (_, _, _, size, _, expected) = family
    ours = ViTAccelForImageClassification.from_pretrained(folder)
    for field, value in expected.items():
        assert getattr(ours.config, field) == value, field
    assert read_checkpoint(folder).format == "timm"
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels), atol=ATOL, rtol=0)
        if ours.config.pooling == "cls":  # the CLS-only last block is the classifier's: its logits are the same
            full = ours.vit(pixels).last_hidden_state[:, 0]
            torch.testing.assert_close(ours.classifier(full), reference(pixels), atol=ATOL, rtol=0)


def test_family_bare_model_gives_timm_features(family):
    _, reference, folder, (_, _, _, size, _, _) = family
    ours = ViTAccelModel.from_pretrained(folder)
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = ours(pixels)
        torch.testing.assert_close(out.last_hidden_state, reference.forward_features(pixels), atol=ATOL, rtol=0)
        if ours.config.pooling != "cls":
            pooled = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
            torch.testing.assert_close(out.pooler_output, pooled, atol=ATOL, rtol=0)


def test_family_resampled_like_timm(family):
    _, reference, folder, (name, kwargs, patch, _, resampled, _) = family
    target = timm_family(name, kwargs, patch, resampled)
    # timm's own path for weights of another resolution: bicubic with antialias, prefix positions kept
    target.load_state_dict(checkpoint_filter_fn(reference.state_dict(), target))
    ours = ViTAccelForImageClassification.from_pretrained(folder, image_size=resampled)
    pixels = torch.randn(2, 3, resampled, resampled)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, target(pixels), atol=ATOL, rtol=0)


def test_family_export_to_timm_round_trip_is_exact(family, tmp_path):
    key, reference, folder, (_, _, _, size, _, _) = family
    ours = ViTAccelForImageClassification.from_pretrained(folder)
    out = export(ours, tmp_path / "timm_out", to="timm")
    meta = json.loads((out / "config.json").read_text())
    rebuilt = timm.create_model(meta["architecture"], pretrained=False, **meta["model_args"]).eval()
    rebuilt.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    theirs = rebuilt.state_dict()
    assert set(theirs) == set(reference.state_dict())
    for name, value in reference.state_dict().items():
        assert torch.equal(theirs[name], value), name
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixels), reference(pixels), atol=ATOL, rtol=0)


def test_family_convert_writes_its_preprocessing(family, tmp_path):
    _, reference, folder, _ = family
    convert(folder, tmp_path / "ours")
    processor = json.loads((tmp_path / "ours" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == list(reference.pretrained_cfg["mean"])
    assert processor["image_std"] == list(reference.pretrained_cfg["std"])
    reloaded = ViTAccelForImageClassification.from_pretrained(tmp_path / "ours")
    pixels = torch.randn(1, 3, reference.patch_embed.img_size[0], reference.patch_embed.img_size[1])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


def test_family_export_opens_the_timm_way_with_its_preprocessing(family, tmp_path):
    # convert writes the family's mean/std; export carries them into timm's pretrained_cfg, so that
    # timm.create_model("local-dir:...") and timm's data config see the family's own preprocessing.
    from timm.data import resolve_data_config

    _, reference, folder, (_, _, _, size, _, _) = family
    convert(folder, tmp_path / "ours")
    out = export(tmp_path / "ours", tmp_path / "timm_out", to="timm")
    opened = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    data = resolve_data_config(model=opened)
    assert list(data["mean"]) == pytest.approx(list(reference.pretrained_cfg["mean"]))
    assert list(data["std"]) == pytest.approx(list(reference.pretrained_cfg["std"]))
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(opened(pixels), reference(pixels), atol=ATOL, rtol=0)


def test_family_classifier_export_to_transformers_is_refused_before_writing(family, tmp_path):
    """timm's family classifiers read the CLS token, the patch mean behind fc_norm or the MAP head: no transformers
    classifier class reads the same (transformers' own classes: tests/weights/test_transformers_family_export.py)."""
    _, _, folder, _ = family
    ours = ViTAccelForImageClassification.from_pretrained(folder)
    with pytest.raises(UserError, match=r"--to timm instead\.$") as error:
        export(ours, tmp_path / "hf", to="transformers")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())


def test_bare_family_state_dict_is_refused_in_one_line(tmp_path):
    reference = timm_family("vit_small_patch14_reg4_dinov2", {}, 14, 28)
    save_file(reference.state_dict(), tmp_path / "dinov2.safetensors")
    with pytest.raises(CheckpointError, match=r"dinov2\.safetensors: a timm state dict of a ViT family .*save_for_hf"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov2.safetensors")


@pytest.mark.parametrize(
    "name, kwargs, what",
    [
        ("eva02_tiny_patch14_224", {"img_size": 28, "patch_size": 14}, "EVA-02"),
        ("aimv2_large_patch14_224", {"img_size": 28, "patch_size": 14}, "AIMv2"),
        ("naflexvit_base_patch16_siglip", {}, "NaFlex"),
    ],
)
def test_families_not_supported_yet_are_refused_by_name(tmp_path, name, kwargs, what):
    model = timm.create_model(name, pretrained=False, embed_dim=64, depth=1, num_heads=4, **kwargs)
    save_for_hf(model, tmp_path / "dir", safe_serialization=True)
    with pytest.raises(CheckpointError, match=rf"{name}.* is {what}.*cannot load yet") as error:
        ViTAccelForImageClassification.from_pretrained(tmp_path / "dir")
    assert "\n" not in str(error.value)
    save_file(model.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match=r"bare\.safetensors: .*cannot load yet"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "bare.safetensors")


# DINOv3: timm's Eva with DINOv3's RoPE (no position table), registers and LayerScale.
DINOV3 = ["vit_small_patch16_dinov3", "vit_small_patch16_dinov3_qkvb"]


def timm_dinov3(name, num_classes=5, global_pool="token"):
    return timm_family(name, {"global_pool": global_pool}, 8, 32, num_classes=num_classes)


@pytest.mark.parametrize("name", DINOV3)
def test_dinov3_matches_timm_at_native_and_other_resolutions(name, tmp_path):
    reference = timm_dinov3(name)
    save_for_hf(reference, tmp_path / "dinov3", safe_serialization=True)
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov3")
    bare = ViTAccelModel.from_pretrained(tmp_path / "dinov3")
    config = ours.config
    assert (config.position_embedding_type, config.rope_theta, config.num_register_tokens) == ("rope", 100.0, 4)
    assert (config.layer_scale_init_value, config.layer_norm_eps, config.pooling) == (1e-5, 1e-5, "cls")
    assert config.qkv_bias == name.endswith("_qkvb")
    for size in (32, 48, 40):  # RoPE's grid follows the input: timm's DINOv3 takes any size too
        pixels = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(ours(pixels).logits, reference(pixels), atol=ATOL, rtol=0)
            expected = reference.forward_features(pixels)
            torch.testing.assert_close(bare(pixels).last_hidden_state, expected, atol=ATOL, rtol=0)
    resized = ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov3", image_size=48)
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(resized(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", DINOV3)
def test_dinov3_export_to_timm_round_trip_is_exact(name, tmp_path):
    reference = timm_dinov3(name)
    save_for_hf(reference, tmp_path / "dinov3", safe_serialization=True)
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov3")
    out = export(ours, tmp_path / "timm_out", to="timm")
    meta = json.loads((out / "config.json").read_text())
    rebuilt = timm.create_model(meta["architecture"], pretrained=False, **meta["model_args"]).eval()
    rebuilt.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    theirs = rebuilt.state_dict()
    assert set(theirs) == set(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(theirs[key], value), key
    pixels = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixels), reference(pixels), atol=ATOL, rtol=0)


def test_dinov3_export_refuses_a_key_bias_timm_does_not_have(tmp_path):
    reference = timm_dinov3("vit_small_patch16_dinov3_qkvb")
    save_for_hf(reference, tmp_path / "dinov3", safe_serialization=True)
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov3")
    with torch.no_grad():
        ours.vit.layers[0].attention.k_proj.bias.fill_(0.5)
    with pytest.raises(UserError, match=r"DINOv3 cannot write a non-zero key bias"):
        export(ours, tmp_path / "timm_out", to="timm")
    assert not (tmp_path / "timm_out").exists() or not any((tmp_path / "timm_out").iterdir())


def test_dinov3_average_pooling_head_is_refused_and_a_backbone_gets_the_cls_token(tmp_path):
    with_head = timm_dinov3("vit_small_patch16_dinov3", global_pool="avg")
    save_for_hf(with_head, tmp_path / "head", safe_serialization=True)
    with pytest.raises(CheckpointError, match=r"head on global_pool='avg' .* not a pooling vit_accel has") as error:
        ViTAccelForImageClassification.from_pretrained(tmp_path / "head")
    assert "\n" not in str(error.value)
    backbone = timm_dinov3("vit_small_patch16_dinov3", num_classes=0, global_pool="avg")
    save_for_hf(backbone, tmp_path / "backbone", safe_serialization=True)
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "backbone", num_labels=3)
    assert ours.config.pooling == "cls"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone.forward_features(pixels)
        torch.testing.assert_close(ours.vit(pixels).last_hidden_state, expected, atol=ATOL, rtol=0)


def test_bare_dinov3_state_dict_is_refused_naming_the_layout_that_loads(tmp_path):
    save_file(timm_dinov3("vit_small_patch16_dinov3").state_dict(), tmp_path / "dinov3.safetensors")
    with pytest.raises(CheckpointError, match=r"dinov3\.safetensors: .*Eva class .*save DINOv3 with .*save_for_hf"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov3.safetensors")


def test_mae_encoder_fine_tunes_with_average_pooling_and_a_new_fc_norm(tmp_path):
    """MAE's fine-tuning: the pre-trained encoder (final norm, no fc_norm) read with pooling='mean' drops the final
    norm and starts fc_norm at unit scale, as MAE's main_finetune does when it loads its checkpoint."""
    encoder = timm_family("vit_base_patch16_224.mae", {}, 8, 32, num_classes=0)
    save_for_hf(encoder, tmp_path / "mae", safe_serialization=True)
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "mae", pooling="mean", num_labels=3)
    assert ours.vit.layernorm is None
    assert torch.equal(ours.vit.fc_norm.weight, torch.ones(64)) and torch.equal(ours.vit.fc_norm.bias, torch.zeros(64))
    reference = timm_family("vit_base_patch16_224.mae", {"global_pool": "avg", "fc_norm": True}, 8, 32, num_classes=0)
    missing = reference.load_state_dict(
        {k: v for k, v in encoder.state_dict().items() if not k.startswith("norm.")}, strict=False
    ).missing_keys
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight"]
    with torch.no_grad():
        reference.fc_norm.reset_parameters()
        pixels = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(ours.vit(pixels).pooler_output, reference(pixels), atol=ATOL, rtol=0)

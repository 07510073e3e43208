"""transformers' ViT families (DINOv2, DINOv2 with registers, DINOv3, CLIP's and SigLIP's vision towers, ViTMAE)
from their `save_pretrained` directories: hidden states and heads against transformers itself, refusals by name."""

import pytest
import torch
import transformers

from vit_accel import ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import CheckpointError, convert, read_checkpoint

ATOL = 1e-4
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}

# name -> (config class, model class, config fields, resolution, our pooling)
FAMILIES = {
    "dinov2": ("Dinov2Config", "Dinov2Model", {"image_size": 28, "patch_size": 14, "layerscale_value": 0.5}, 28),
    "dinov2-swiglu": (
        "Dinov2Config",
        "Dinov2Model",
        {"image_size": 28, "patch_size": 14, "use_swiglu_ffn": True},
        28,
    ),
    "dinov2-registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersModel",
        {"image_size": 28, "patch_size": 14, "num_register_tokens": 4},
        28,
    ),
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {"image_size": 32, "patch_size": 8}, 32),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", {"image_size": 32, "patch_size": 8}, 32),
    "mae": ("ViTMAEConfig", "ViTMAEModel", {"image_size": 32, "patch_size": 8, "mask_ratio": 0.0}, 32),
}


def tiny(config_name, model_name, fields, **extra):
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**TINY, **fields, **extra)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():  # random everywhere (LayerScale, registers, the probe) makes the comparison meaningful
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


def reference_outputs(name, model, pixels, **kwargs):
    if name == "mae":  # no masking and no shuffling: noise in increasing order keeps every patch in place
        noise = torch.arange((pixels.shape[-1] // 8) ** 2).float()
        return model(pixels, noise=noise.expand(pixels.shape[0], -1), **kwargs)
    return model(pixels, output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_bare_model_gives_transformers_hidden_states(tmp_path, name):
    config_name, model_name, fields, size = FAMILIES[name]
    reference = tiny(config_name, model_name, fields)
    reference.save_pretrained(tmp_path / name)
    ours = ViTAccelModel.from_pretrained(tmp_path / name)
    assert read_checkpoint(tmp_path / name).format == "transformers"
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        theirs = reference_outputs(name, reference, pixels)
        mine = ours(pixels, output_hidden_states=True)
    if name == "clip":
        # CLIP's last_hidden_state precedes its final LayerNorm (post_layernorm), which only its pooler applies; ours
        # normalises every token, so its CLS token is CLIP's pooler_output and its last block's output CLIP's states.
        torch.testing.assert_close(mine.hidden_states[-1], theirs.last_hidden_state, atol=ATOL, rtol=0)
        torch.testing.assert_close(mine.last_hidden_state[:, 0], theirs.pooler_output, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(mine.last_hidden_state, theirs.last_hidden_state, atol=ATOL, rtol=0)
    if name == "siglip":
        torch.testing.assert_close(mine.pooler_output, theirs.pooler_output, atol=ATOL, rtol=0)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_classifier_logits_match_transformers(tmp_path, registers):
    if registers:
        reference = tiny("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification", {}, num_labels=3,
                         image_size=28, patch_size=14, num_register_tokens=registers)  # fmt: skip
    else:
        reference = tiny("Dinov2Config", "Dinov2ForImageClassification", {}, num_labels=3, image_size=28, patch_size=14)
    reference.save_pretrained(tmp_path / "dino")
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "dino")
    assert ours.config.pooling == "cls_mean" and ours.config.num_labels == 3
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_resampled_like_transformers_interpolates(tmp_path, name):
    """Loaded at 1.5x the resolution, the position table is resampled once (bicubic, prefix kept), as transformers
    resamples it on the fly."""
    config_name, model_name, fields, size = FAMILIES[name]
    reference = tiny(config_name, model_name, fields)
    reference.save_pretrained(tmp_path / name)
    new = size * 3 // 2
    ours = ViTAccelModel.from_pretrained(tmp_path / name, image_size=new)
    pixels = torch.randn(2, 3, new, new)
    flag = {} if name.startswith("dinov2") else {"interpolate_pos_encoding": True}  # DINOv2 always interpolates
    with torch.no_grad():
        theirs = reference_outputs(name, reference, pixels, **flag)
        mine = ours(pixels, output_hidden_states=True)
    expected = theirs.last_hidden_state
    torch.testing.assert_close(mine.hidden_states[-1] if name == "clip" else mine.last_hidden_state, expected,
                               atol=ATOL, rtol=0)  # fmt: skip


@pytest.mark.parametrize(
    "name, mean",
    [("dinov2", [0.485, 0.456, 0.406]), ("clip", [0.48145466, 0.4578275, 0.40821073]), ("siglip", [0.5] * 3)],
)
def test_convert_writes_the_family_preprocessing(tmp_path, name, mean):
    config_name, model_name, fields, size = FAMILIES[name]
    tiny(config_name, model_name, fields).save_pretrained(tmp_path / name)  # saved without an image processor
    convert(tmp_path / name, tmp_path / "ours")
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert list(processor.image_mean) == mean
    assert processor.size == {"height": size, "width": size}


@pytest.mark.parametrize(
    "config_name, model_name, what",
    [
        ("Aimv2VisionConfig", "Aimv2VisionModel", "AIMv2"),
    ],
)
def test_families_not_supported_yet_are_refused_by_name(tmp_path, config_name, model_name, what):
    reference = tiny(config_name, model_name, {})
    reference.save_pretrained(tmp_path / "dir")
    with pytest.raises(CheckpointError, match=rf"model, .*{what}.*: vit_accel cannot load it yet") as error:
        ViTAccelForImageClassification.from_pretrained(tmp_path / "dir")
    assert "\n" not in str(error.value)


def test_clip_classifier_head_is_refused_not_half_loaded(tmp_path):
    config = transformers.CLIPConfig(vision_config=dict(TINY, image_size=32, patch_size=8), num_labels=3)
    reference = transformers.CLIPForImageClassification(config)
    reference.save_pretrained(tmp_path / "clip")
    with pytest.raises(CheckpointError, match=r"CLIPForImageClassification averages"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "clip")


@pytest.mark.parametrize(
    "fields",
    [
        {"num_register_tokens": 4},  # transformers' defaults: query and value biases, no key bias
        {"num_register_tokens": 0},  # transformers keeps an empty register table
        {"num_register_tokens": 2, "use_gated_mlp": True, "hidden_act": "silu", "query_bias": False, "mlp_bias": False},
    ],
    ids=["registers", "no-registers", "gated-no-biases"],
)
def test_dinov3_hidden_states_match_transformers_at_any_resolution(tmp_path, fields):
    reference = tiny("DINOv3ViTConfig", "DINOv3ViTModel", {"image_size": 32, "patch_size": 8, **fields})
    reference.save_pretrained(tmp_path / "dinov3")
    ours = ViTAccelModel.from_pretrained(tmp_path / "dinov3")
    assert (ours.config.position_embedding_type, ours.config.pooling) == ("rope", "cls")
    assert ours.config.num_register_tokens == fields["num_register_tokens"]
    for size in (32, 48, 40):  # RoPE's grid follows the input size, as transformers' does
        pixels = torch.randn(2, 3, size, size)
        with torch.no_grad():
            theirs = reference(pixels)
            torch.testing.assert_close(ours(pixels).last_hidden_state, theirs.last_hidden_state, atol=ATOL, rtol=0)
    classifier = ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov3", num_labels=3, image_size=48)
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        features = reference(pixels).pooler_output  # DINOv3's CLS token after the final norm
        torch.testing.assert_close(classifier(pixels).logits, classifier.classifier(features), atol=ATOL, rtol=0)

"""Meta's original DINOv2 `.pth` layout (its torch.hub checkpoints), written in the test from a tiny random timm
DINOv2 by the layout of Meta's `DinoVisionTransformer`, read by content: our outputs equal timm's on the same weights,
at the native and a resampled resolution; what the file does not record is asked for, never assumed."""

import pytest
import timm
import torch
import transformers
from timm.models.vision_transformer import checkpoint_filter_fn

from vit_accel import ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import CheckpointError, convert, read_checkpoint

ATOL = 1e-4
TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4, "img_size": 28, "num_classes": 0}
# name -> (timm model, extra timm arguments, Meta's block chunks)
VARIANTS = {
    "dinov2": ("vit_small_patch14_dinov2", {}, 0),
    "dinov2-reg4": ("vit_small_patch14_reg4_dinov2", {}, 0),
    "dinov2-giant-swiglu-chunked": ("vit_giant_patch14_dinov2", {"mlp_ratio": 4.0}, 2),
    "dinov2-reg4-chunked": ("vit_small_patch14_reg4_dinov2", {}, 4),
}


def timm_dinov2(name, extra, **overrides):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**TINY, **extra, **overrides})
    with torch.no_grad():  # random everywhere (LayerScale, registers) makes the comparison meaningful
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


def to_meta_layout(model, chunks):
    """timm's DINOv2 state dict as Meta's `DinoVisionTransformer` names it: `register_tokens`; a position table with
    a CLS row also when there are registers (which get none); `mask_token`; SwiGLU's `mlp.w12`/`w3`; with FSDP block
    chunks, `blocks.{chunk}.{i}` (`i` over the whole depth)."""
    torch.manual_seed(1)
    sd = dict(model.state_dict())
    width = sd["cls_token"].shape[-1]
    out = {"mask_token": torch.randn(1, width)}  # Meta's masked-image-modelling token: unused by a classifier
    if "reg_token" in sd:
        # timm folds the CLS position into the token; Meta adds it from the table: any split gives the same sum.
        cls_position = torch.randn(1, 1, width)
        out["register_tokens"] = sd.pop("reg_token")
        out["cls_token"] = sd.pop("cls_token") - cls_position
        out["pos_embed"] = torch.cat((cls_position, sd.pop("pos_embed")), dim=1)
    depth = len(model.blocks)
    swiglu = isinstance(model.blocks[0].mlp, timm.layers.GluMlp)  # timm's SwiGLUPacked: gate and value in fc1
    for key, value in sd.items():
        if key.startswith("blocks."):
            index, rest = key.split(".", 2)[1:]
            if swiglu:
                rest = rest.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.")
            chunk = f"{int(index) // (depth // chunks)}." if chunks else ""
            key = f"blocks.{chunk}{index}.{rest}"
        out[key] = value
    return out


@pytest.fixture(params=sorted(VARIANTS))
def meta_file(request, tmp_path):
    name, extra, chunks = VARIANTS[request.param]
    reference = timm_dinov2(name, extra)
    path = tmp_path / f"{request.param}_pretrain.pth"
    torch.save(to_meta_layout(reference, chunks), path)
    return request.param, reference, path


def test_meta_layout_gives_timm_features(meta_file):
    name, reference, path = meta_file
    checkpoint = read_checkpoint(path)
    assert checkpoint.format == "meta-dinov2"
    ours = ViTAccelModel.from_pretrained(path, num_attention_heads=4).eval()
    assert ours.config.num_register_tokens == (4 if "reg4" in name else 0)
    assert ours.config.mlp_type == ("swiglu" if "swiglu" in name else "mlp")
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        theirs = reference.forward_features(pixels)
        mine = ours(pixels)
    torch.testing.assert_close(mine.last_hidden_state, theirs, atol=ATOL, rtol=0)
    # DINOv2's linear head reads the CLS token and the patch mean
    patches = theirs[:, reference.num_prefix_tokens :].mean(dim=1)
    torch.testing.assert_close(mine.pooler_output, torch.cat((theirs[:, 0], patches), dim=-1), atol=ATOL, rtol=0)


def test_meta_layout_at_another_resolution_matches_timm_reading_it(meta_file):
    """timm's own reader of Meta's layout (`checkpoint_filter_fn`, which resamples the table for its model) and ours
    at 1.5x the resolution."""
    name, reference, path = meta_file
    # timm's reader of Meta's files takes the unchunked hub layout only
    chunked = "chunked" in name
    state_dict = to_meta_layout(reference, 0) if chunked else torch.load(path, weights_only=True)
    model_name, extra, _ = VARIANTS[name]
    resized = timm_dinov2(model_name, extra, img_size=42)
    resized.load_state_dict(checkpoint_filter_fn(state_dict, resized))
    ours = ViTAccelModel.from_pretrained(path, num_attention_heads=4, image_size=42).eval()
    pixels = torch.randn(2, 3, 42, 42)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).last_hidden_state, resized.forward_features(pixels), atol=ATOL, rtol=0)


def test_classifier_from_meta_file_gets_a_new_cls_mean_head(meta_file, tmp_path):
    name, reference, path = meta_file
    model = ViTAccelForImageClassification.from_pretrained(path, num_attention_heads=4, num_labels=5).eval()
    assert model.config.pooling == "cls_mean" and model.classifier.in_features == 128
    convert(path, tmp_path / "ours", num_attention_heads=4, num_labels=5)
    again = ViTAccelForImageClassification.from_pretrained(tmp_path / "ours")
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]  # DINOv2 trains on ImageNet's normalisation
    assert again.config.layer_scale_init_value == 1e-5 and again.config.layer_norm_eps == 1e-6


def test_heads_are_asked_for_never_assumed(tmp_path):
    reference = timm_dinov2("vit_small_patch14_dinov2", {})
    torch.save(to_meta_layout(reference, 0), tmp_path / "dinov2.pth")
    with pytest.raises(CheckpointError, match=r"does not record num_attention_heads .*pass num_attention_heads=") as e:
        ViTAccelModel.from_pretrained(tmp_path / "dinov2.pth")
    assert "\n" not in str(e.value)


def test_a_part_meta_dinov2_does_not_have_is_named(tmp_path):
    reference = timm_dinov2("vit_small_patch14_dinov2", {})
    state_dict = to_meta_layout(reference, 0)
    state_dict["blocks.0.attn.rope.freqs"] = torch.zeros(4)
    torch.save(state_dict, tmp_path / "dinov2.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.rope\.freqs"):
        ViTAccelModel.from_pretrained(tmp_path / "dinov2.pth", num_attention_heads=4)

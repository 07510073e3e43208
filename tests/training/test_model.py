import pytest
from factories import TINY

from vit_accel.training.arguments import ModelArguments
from vit_accel.training.model import build_model


@pytest.mark.parametrize("backend", [None, "eager", "flex_attention"])
def test_attn_implementation_flag_reaches_the_model(backend):
    args = ModelArguments(
        model_name_or_path="vit-tiny-p16-224", from_scratch=True, config_overrides=TINY, attn_implementation=backend
    )
    model, _, _ = build_model(args, ["a", "b"])
    assert model.config._attn_implementation == (backend or "sdpa")
    assert all(layer.attention.config._attn_implementation == (backend or "sdpa") for layer in model.vit.layers)


def _timm_hub_dir(folder):
    """A tiny timm DINOv2 in timm's Hub layout: its config.json's pretrained_cfg records ImageNet's mean/std."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=28, embed_dim=32, depth=1, num_heads=2, num_classes=0
    )
    save_for_hf(model, folder, safe_serialization=True)
    return model.pretrained_cfg


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_fine_tuning_normalises_as_a_timm_hub_directory_says(tmp_path):
    cfg = _timm_hub_dir(tmp_path / "timm")
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == IMAGENET
    _, mean, std = build_model(ModelArguments(model_name_or_path=str(tmp_path / "timm")), ["a", "b"])
    assert (mean, std) == IMAGENET  # not Google's [-1, 1], which a DINOv2 never saw


def test_fine_tuning_a_family_variant_normalises_as_its_hub_repo_says(tmp_path, monkeypatch):
    """A named family variant is its timm Hub repo, read from the HF cache: its pretrained_cfg decides."""
    import shutil

    from huggingface_hub import constants

    from vit_accel.configuration_vit_accel import FAMILY_VARIANTS

    variant = "dinov2-small-p14-518"
    _timm_hub_dir(tmp_path / "saved")
    repo = tmp_path / "hub" / ("models--" + FAMILY_VARIANTS[variant][0].replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tmp_path / "saved" / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    args = ModelArguments(model_name_or_path=variant, config_overrides="image_size=28")
    _, mean, std = build_model(args, ["a", "b"])
    assert (mean, std) == IMAGENET


def test_fine_tuning_a_transformers_family_directory_without_a_processor_takes_the_familys(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)  # fmt: skip
    Dinov2Model(config).save_pretrained(tmp_path / "dinov2")  # no preprocessor_config.json beside it
    _, mean, std = build_model(ModelArguments(model_name_or_path=str(tmp_path / "dinov2")), ["a", "b"])
    assert (mean, std) == IMAGENET

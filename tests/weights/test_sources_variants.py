"""The families' named variants: their timm Hub repos read from a Hugging Face cache (laid out as huggingface_hub
lays it out, filled here with tiny timm models of the same architecture), and one line when the cache lacks them."""

import shutil

import pytest
import timm
import torch
from timm.models import save_for_hf

from vit_accel import ViTAccelForImageClassification
from vit_accel.configuration_vit_accel import FAMILY_VARIANTS
from vit_accel.weights import CheckpointError

ATOL = 1e-4


def fill_cache(cache, variant, reference, tmp_path):
    """The repo of `variant` in `cache` as `hf download` leaves it: snapshots/<commit>/..., refs/main."""
    repo_id = FAMILY_VARIANTS[variant][0]
    save_for_hf(reference, tmp_path / "saved", safe_serialization=True)
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tmp_path / "saved" / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def tiny_timm(architecture, patch, size, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(
        architecture,
        pretrained=False,
        img_size=size,
        patch_size=patch,
        embed_dim=64,
        depth=2,
        num_heads=4,
        num_classes=5,
        **kwargs,
    )
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize(
    "variant, reference_architecture, patch, size",
    [
        ("dinov2-reg4-small-p14-518", "vit_small_patch14_reg4_dinov2", 14, 28),
        ("dinov3-small-p16-256", "vit_small_patch16_dinov3", 8, 32),
        # The Hub repo's config.json names timm's GELU CLIP; OpenAI's weights are QuickGELU's, which the variant says.
        ("clip-base-p16-224", "vit_base_patch16_clip_quickgelu_224", 8, 32),
    ],
)
def test_family_variant_loads_from_the_hf_cache(tmp_path, variant, reference_architecture, patch, size):
    repo_architecture = FAMILY_VARIANTS[variant][0].split("/")[1].split(".")[0]
    extra = {"global_pool": "token"} if "dinov3" in variant else {}  # DINOv3's own head: the CLS token
    stored = tiny_timm(repo_architecture, patch, size, **extra)
    fill_cache(tmp_path / "hub", variant, stored, tmp_path)
    reference = tiny_timm(reference_architecture, patch, size, **extra)
    reference.load_state_dict(stored.state_dict())
    ours = ViTAccelForImageClassification.from_pretrained(variant, cache_dir=tmp_path / "hub")
    assert ours.config._name_or_path == FAMILY_VARIANTS[variant][0]
    expected_act = FAMILY_VARIANTS[variant][2].get("hidden_act", "gelu")
    assert ours.config.hidden_act == expected_act
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


def test_family_variant_not_in_the_cache_is_one_line_naming_it(tmp_path):
    # The test session is offline (HF_HUB_OFFLINE): nothing is requested.
    with pytest.raises(CheckpointError) as error:
        ViTAccelForImageClassification.from_pretrained("dinov2-base-p14-518", cache_dir=tmp_path / "hub")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("dinov2-base-p14-518: the Hub repo timm/vit_base_patch14_dinov2.lvd142m is not in the")
    assert str(tmp_path / "hub" / "models--timm--vit_base_patch14_dinov2.lvd142m") in message
    assert "`hf download timm/vit_base_patch14_dinov2.lvd142m config.json model.safetensors`" in message
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.safetensors"))


def test_a_misspelt_family_variant_names_the_closest():
    with pytest.raises(Exception, match=r"'dinov2-base-p14-512' is not a named variant; did you mean "):
        ViTAccelForImageClassification.from_pretrained("dinov2-base-p14-512")

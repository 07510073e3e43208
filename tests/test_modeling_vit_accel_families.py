"""The family options of the model (CLS or none, registers, where positions go, pre-norm, LayerScale, SwiGLU, the
pooling the classifier reads): Google's ViT untouched by default, checks of the fields, checkpointing, remote code."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel

# Tiny models that switch the options on, as the families do (their parity with timm and transformers is tested in
# tests/weights/test_timm_families.py and tests/weights/test_transformers_families.py).
FAMILY_OPTIONS = {
    "dinov2-registers": dict(
        layer_scale_init_value=1e-5, num_register_tokens=4, prefix_position_embeddings=False, pooling="cls_mean"
    ),
    "siglip": dict(use_cls_token=False, pooling="map", hidden_act="gelu_pytorch_tanh"),
    "clip": dict(pre_norm=True, patch_embedding_bias=False, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "mae": dict(pooling="mean"),
    "swiglu": dict(mlp_type="swiglu", hidden_act="silu", layer_scale_init_value=1e-5),
    "dinov3": dict(
        position_embedding_type="rope", num_register_tokens=4, layer_scale_init_value=1e-5, layer_norm_eps=1e-5
    ),
}
FAMILY_PARTS = ("register_tokens", "pre_layernorm", "layer_scale", "fc_norm", "attention_pool")


def family_model(name: str, **overrides) -> ViTAccelForImageClassification:
    torch.manual_seed(0)
    config = ViTAccelConfig(**tiny_config_kwargs(**FAMILY_OPTIONS[name], **overrides))
    model = ViTAccelForImageClassification(config)
    with torch.no_grad():  # LayerScale starts near zero: random scales make the blocks matter in the comparisons
        for key, param in model.named_parameters():
            if "layer_scale" in key:
                param.normal_(0, 0.5)
    return model


def test_google_vit_builds_no_family_part():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    names = list(model.state_dict())
    assert not [name for name in names if any(part in name for part in FAMILY_PARTS)]
    assert "vit.embeddings.cls_token" in names and "vit.layernorm.weight" in names
    assert model.vit.embeddings.position_embeddings.shape[1] == 16 + 1  # CLS + 4x4 grid


@pytest.mark.parametrize("name", sorted(FAMILY_OPTIONS))
def test_family_shapes_and_features(name):
    model = family_model(name).eval()
    config = model.config
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.vit(pixels)
        logits = model(pixels).logits
    assert out.last_hidden_state.shape == (2, config.num_prefix_tokens + 16, config.hidden_size)
    if config.position_embedding_type == "rope":
        assert model.vit.embeddings.position_embeddings is None
        assert not [key for key in model.state_dict() if "position" in key]
    else:
        assert model.vit.embeddings.position_embeddings.shape[1] == 16 + config.num_prefix_positions
    assert logits.shape == (2, 5)
    features = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
    torch.testing.assert_close(logits, model.classifier(features))


def test_positions_before_or_after_the_prefix_tokens():
    """Without prefix positions, a prefix token's embedding is the token itself, whatever the position table."""
    model = family_model("dinov2-registers").eval()
    pixels = torch.randn(1, 3, 32, 32)
    embeddings = model.vit.embeddings(pixels)
    torch.testing.assert_close(embeddings[0, 0], model.vit.embeddings.cls_token[0, 0])
    torch.testing.assert_close(embeddings[0, 1:5], model.vit.embeddings.register_tokens[0])


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"pooling": "max"}, "pooling must be one of cls, mean, cls_mean, map"),
        ({"use_cls_token": False}, "pooling='cls' reads the CLS token, but use_cls_token is False"),
        ({"pooling": "map", "representation_size": 8}, "representation_size .* needs pooling='cls'"),
        ({"num_register_tokens": -1}, "num_register_tokens must be a non-negative integer"),
        ({"layer_scale_init_value": 0}, "layer_scale_init_value must be None .* or a positive number"),
        ({"mlp_type": "geglu"}, "mlp_type must be one of mlp, swiglu"),
        ({"position_embedding_type": "sincos"}, "position_embedding_type must be one of learned, rope"),
        ({"position_embedding_type": "rope", "num_attention_heads": 8}, "head width 6 .* must be a multiple of 4"),
        ({"position_embedding_type": "rope", "rope_theta": 0}, "rope_theta must be a positive number"),
    ],
)
def test_inconsistent_family_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(**fields)))


@pytest.mark.parametrize("name", ["dinov2-registers", "siglip", "dinov3"])
def test_family_gradient_checkpointing_gives_the_same_gradients(name):
    model = family_model(name).train()
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def grads():
        model.zero_grad()
        model(pixels, labels=labels).loss.backward()
        return {key: p.grad.clone() for key, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable({"use_reentrant": False})
    checkpointed = grads()
    for key, grad in plain.items():
        torch.testing.assert_close(checkpointed[key], grad, atol=1e-6, rtol=1e-5, msg=key)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_family_loads_without_vit_accel_through_remote_code(tmp_path, positions):
    """Every option at once (no CLS, registers, patch-only positions or RoPE, pre-norm, LayerScale, SwiGLU,
    attention pooling): the saved model files alone rebuild it, bit-exact."""
    options = dict(FAMILY_OPTIONS["siglip"], **FAMILY_OPTIONS["swiglu"], pre_norm=True, num_register_tokens=2)
    options["position_embedding_type"] = positions
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(**options))).eval()
    model.save_pretrained(tmp_path / "model")
    pixels = torch.randn(2, 3, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(model(pixels).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["vit_accel"] = None  # any import of vit_accel now fails
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        pixels = torch.load({str(tmp_path / "pixels.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            diff = (model.eval()(pixels).logits - expected).abs().max().item()
        print("MAXDIFF", diff, type(model).__module__)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MAXDIFF 0.0 transformers_modules" in result.stdout


def test_family_directory_reloads_with_vit_accel(tmp_path):
    model = family_model("dinov2-registers").eval()
    model.save_pretrained(tmp_path)
    reloaded = ViTAccelForImageClassification.from_pretrained(tmp_path).eval()
    bare = ViTAccelModel.from_pretrained(tmp_path)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, model(pixels).logits)
        assert torch.equal(bare(pixels).pooler_output, model.vit(pixels).pooler_output)


def test_rope_grid_follows_the_input_size_and_is_no_rotation_at_the_centre():
    """The patches' grid is the input's (any multiple of the patch size, no flag); a single patch sits at the centre
    (0, 0) of DINOv3's [-1, 1] coordinates, where every angle is zero: the same outputs as no rotation at all."""
    model = family_model("dinov3").eval()
    with torch.no_grad():
        for size in (32, 48, 40):
            out = model.vit(torch.randn(1, 3, size, size))
            assert out.last_hidden_state.shape[1] == 5 + (size // 8) ** 2
        one = torch.randn(1, 3, 8, 8)
        rotated = model.vit(one).last_hidden_state
        model.config.position_embedding_type = "learned"  # the same blocks with no rotation (no table either)
        model.vit.embeddings.learned_positions = False
        plain = model.vit(one).last_hidden_state
    torch.testing.assert_close(rotated, plain)


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_rope_gives_the_same_outputs_on_every_attention_backend(backend):
    """The rotation happens before the attention function: every backend sees the same queries and keys."""
    model = family_model("dinov3").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model(pixels).logits
        model.set_attn_implementation(backend)
        torch.testing.assert_close(model(pixels).logits, expected, atol=1e-5, rtol=1e-5)
        maps = model(pixels, output_attentions=True).attentions
    assert maps[0].shape == (2, 4, 21, 21)


@pytest.mark.parametrize("name", sorted(FAMILY_OPTIONS))
def test_every_family_gives_eager_logits_and_gradients_through_sdpa(name):
    """Each family's blocks and head (the attention pool's single query too) through SDPA, at its own input size and
    an interpolated one: the eager function's logits, and in training its gradients. Not flex_attention: each new
    sequence length compiles a flex kernel, minutes on 2 cores for these six, and it has no backward on the CPU
    (DINOv3's RoPE through flex: `test_rope_gives_the_same_outputs_on_every_attention_backend`)."""
    model = family_model(name)
    pixels, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    larger = torch.nn.functional.interpolate(pixels, size=48)

    def logits(implementation):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            return [model.eval()(pixels).logits, model(larger, interpolate_pos_encoding=True).logits]

    def gradients(implementation):
        model.set_attn_implementation(implementation)
        model.train().zero_grad()
        model(larger, labels=labels, interpolate_pos_encoding=True).loss.backward()
        return {key: p.grad.clone() for key, p in model.named_parameters()}

    expected = logits("eager")
    for got, want in zip(logits("sdpa"), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    eager_grads, sdpa_grads = gradients("eager"), gradients("sdpa")
    for key, grad in eager_grads.items():
        torch.testing.assert_close(sdpa_grads[key], grad, atol=1e-5, rtol=1e-4, msg=key)

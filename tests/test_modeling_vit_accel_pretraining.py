"""ViTAccelForPreTraining (MAE) against transformers' ViTMAEForPreTraining, and what MAE's parts promise."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from factories import tiny_config_kwargs
from safetensors import safe_open
from transformers import AutoModelForPreTraining, ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from vit_accel import ViTAccelConfig, ViTAccelForPreTraining, ViTAccelMAEConfig, ViTAccelModel

ATOL = 1e-5
DECODER = dict(
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=64
)


def mae_kwargs(**overrides) -> dict:
    kwargs = tiny_config_kwargs(**DECODER)
    kwargs.pop("num_labels")
    kwargs.update(overrides)
    return kwargs


def hf_mae(**overrides) -> ViTMAEForPreTraining:
    """A tiny transformers MAE with every tensor random (a fresh one holds all-zero position tables)."""
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**mae_kwargs(**overrides), attn_implementation="eager"))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.normal_(0, 0.1)
    return model.eval()


def ours_like(reference: ViTMAEForPreTraining) -> ViTAccelForPreTraining:
    fields = {key: getattr(reference.config, key) for key in (*mae_kwargs(), "layer_norm_eps", "mask_ratio")}
    ours = ViTAccelForPreTraining(ViTAccelMAEConfig(**fields, norm_pix_loss=reference.config.norm_pix_loss)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("norm_pix_loss", [True, False])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_same_loss_and_reconstruction_as_transformers(norm_pix_loss, mask_ratio):
    reference = hf_mae(norm_pix_loss=norm_pix_loss, mask_ratio=mask_ratio)  # eps: ViTMAEConfig's 1e-12
    ours = ours_like(reference)
    pixels, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        theirs, mine = reference(pixels, noise=noise), ours(pixels, noise=noise)
    assert torch.equal(mine.mask, theirs.mask) and torch.equal(mine.ids_restore, theirs.ids_restore)
    assert mine.mask.sum().item() == 3 * (16 - int(16 * (1 - mask_ratio)))
    torch.testing.assert_close(mine.logits, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=ATOL, rtol=0)


def test_same_gradients_as_transformers():
    reference = hf_mae()
    ours = ours_like(reference)
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    reference(pixels, noise=noise).loss.backward()
    ours(pixels, noise=noise).loss.backward()
    theirs = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, theirs[name].grad, atol=ATOL, rtol=0, msg=name)
    # MAE's fixed positions are the parameters transformers freezes; ours are buffers, which no optimizer sees.
    frozen = {name for name, param in reference.named_parameters() if not param.requires_grad}
    assert frozen == {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"}
    assert frozen.isdisjoint(dict(ours.named_parameters())) and frozen <= set(dict(ours.named_buffers()))


def test_fixed_positions_are_maes_sincos_layout():
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**mae_kwargs(image_size=(32, 48))))
    for table, width in ((model.vit.embeddings.position_embeddings, 48), (model.decoder.decoder_pos_embed, 32)):
        expected = build_2d_sinusoidal_position_embedding(4, 6, embed_dim=width, cls_token=True)
        # MAE's released layout puts the column (width) half first: transformers rotates its table to it.
        expected = torch.cat((expected[:, width // 2 :], expected[:, : width // 2]), dim=1)
        torch.testing.assert_close(table[0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "family",
    [{}, {"layer_scale_init_value": 0.5, "prefix_position_embeddings": False}, {"num_register_tokens": 2}],
    ids=["google", "layerscale-deit3", "registers"],
)
def test_unmasked_encoder_is_our_vit_and_masked_patches_are_never_seen(family):
    torch.manual_seed(0)
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**mae_kwargs(mask_ratio=0.0, **family))).eval()
    bare = ViTAccelModel(ViTAccelConfig(**mae_kwargs(**family)), add_pooling_layer=False).eval()
    bare.load_state_dict(model.vit.state_dict(), strict=True)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        latent, mask, ids_restore = model.vit.forward_visible(pixels)
        torch.testing.assert_close(latent, bare(pixels).last_hidden_state, atol=ATOL, rtol=0)
        assert not mask.any() and torch.equal(ids_restore, torch.arange(16).expand(2, -1))

        # Masking: the encoder's output does not depend on the pixels of the hidden patches.
        model.config.mask_ratio = 0.75
        noise = torch.rand(2, 16)
        latent, mask, _ = model.vit.forward_visible(pixels, noise)
        hidden = model.unpatchify(mask[..., None].expand(-1, -1, 8 * 8 * 3)).bool()
        changed = torch.where(hidden, torch.randn_like(pixels), pixels)
        torch.testing.assert_close(model.vit.forward_visible(changed, noise)[0], latent, atol=0, rtol=0)
        assert not torch.allclose(model.vit.forward_visible(pixels, torch.rand(2, 16))[0], latent)
    assert latent.shape == (2, model.config.num_prefix_tokens + 4, 48)


def test_mask_ratio_zero_gives_the_same_features_on_every_call():
    torch.manual_seed(0)
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**mae_kwargs(mask_ratio=0.0))).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = model(pixels), model(pixels)
        features = [model.vit.forward_visible(pixels)[0] for _ in range(2)]
    assert torch.equal(first.logits, second.logits) and torch.equal(features[0], features[1])
    assert first.loss is None and not first.mask.any()
    # With masking, two calls without noise draw two masks (what MAE's encoder does at inference).
    model.config.mask_ratio = 0.75
    with torch.no_grad():
        assert not torch.equal(model(pixels).mask, model(pixels).mask)


def test_patchify_and_unpatchify_are_inverse_and_match_transformers():
    reference = hf_mae()
    ours = ours_like(reference)
    pixels = torch.randn(2, 3, 32, 32)
    assert torch.equal(ours.patchify(pixels), reference.patchify(pixels))
    assert torch.equal(ours.unpatchify(ours.patchify(pixels)), pixels)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"decoder_num_attention_heads": 5}, "decoder_num_attention_heads"),
        ({"decoder_hidden_size": 30, "decoder_num_attention_heads": 3}, "decoder_hidden_size (30) must be a multiple"),
        ({"decoder_num_hidden_layers": 0}, "decoder_num_hidden_layers"),
        ({"pooling": "mean"}, "pooling"),
        ({"position_embedding_type": "rope"}, "position_embedding_type='rope'"),
    ],
)
def test_a_config_mae_cannot_use_is_refused_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match="^Cannot build a ViTAccel MAE model") as caught:
        ViTAccelForPreTraining(ViTAccelMAEConfig(**mae_kwargs(**overrides)))
    assert field in str(caught.value) and "\n" not in str(caught.value)


def test_saved_directory_has_transformers_names_and_reloads(tmp_path):
    reference = hf_mae()
    ours = ours_like(reference)
    ours.save_pretrained(tmp_path / "ours")
    reference.save_pretrained(tmp_path / "theirs")
    keys = [safe_open(tmp_path / d / "model.safetensors", "pt").keys() for d in ("ours", "theirs")]
    assert sorted(keys[0]) == sorted(keys[1])  # ViTMAE's on-disk names, decoder.decoder_encoder.layer.* included
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path / "ours").eval()
    assert type(loaded) is ViTAccelForPreTraining
    # Loading keeps the fixed positions fixed (transformers' ViTMAE reloads them as trainable parameters).
    assert {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"} <= set(dict(loaded.named_buffers()))
    assert all(param.requires_grad for param in loaded.parameters())
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(pixels, noise=noise).logits, ours(pixels, noise=noise).logits)


def test_fresh_process_without_vit_accel_loads_with_remote_code(tmp_path):
    ours = ours_like(hf_mae())
    ours.save_pretrained(tmp_path / "model")
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    torch.save({"pixels": pixels, "noise": noise}, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(ours(pixels, noise=noise).loss, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["vit_accel"] = None  # any import of vit_accel now fails
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from transformers import AutoModelForPreTraining
        model = AutoModelForPreTraining.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        with torch.no_grad():
            loss = model(inputs["pixels"], noise=inputs["noise"]).loss
        print("DIFF", (loss - expected).abs().item(), type(model).__module__)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DIFF 0.0 transformers_modules" in result.stdout


def test_a_classifier_config_is_refused_naming_the_config_class():
    with pytest.raises(
        ValueError, match=r"^ViTAccelForPreTraining needs a ViTAccelMAEConfig .*got a ViTAccelConfig\.$"
    ):
        ViTAccelForPreTraining(ViTAccelConfig(**tiny_config_kwargs()))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**mae_kwargs())).train()
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)

    def grads():
        model.zero_grad()
        model(pixels, noise=noise).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable({"use_reentrant": False})
    layers = [*model.vit.layers, *model.decoder.decoder_layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    for name, grad in grads().items():
        torch.testing.assert_close(grad, plain[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("with_noise", [True, False])
def test_a_pretraining_step_compiles_whole_with_eager_gradients(with_noise):
    # "aot_eager" traces forward and backward as inductor does (a graph break raises under fullgraph=True) without
    # inductor's C++ code generation, which takes minutes on a small CPU.
    torch.manual_seed(0)
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**mae_kwargs())).train()
    pixels = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16) if with_noise else None

    def step(pixel_values, noise=None):
        return model(pixel_values, noise=noise).loss

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    if not with_noise:  # the mask is drawn inside the graph: compare with the same generator state
        torch.manual_seed(1)
    loss = compiled(pixels, noise)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    if not with_noise:
        torch.manual_seed(1)
    expected = step(pixels, noise)
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=0, msg=name)

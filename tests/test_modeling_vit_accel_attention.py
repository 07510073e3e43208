"""Attention goes through transformers' `ALL_ATTENTION_FUNCTIONS`: every backend gives the same outputs and gradients,
is chosen at load time or switched later, registered kernels are reachable, attention maps are real under any backend,
and the classifier keeps its CLS-only last block whatever the backend.

flex_attention compiles its kernel on first use (about 10 s per shape on 2 CPU cores), so its cases share shapes.
"""

import pytest
import torch
from factories import tiny_config_kwargs
from transformers import AttentionInterface, ViTConfig, ViTForImageClassification
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel

CPU_BACKENDS = ["eager", "sdpa", "flex_attention"]


def tiny_classifier(**overrides) -> ViTAccelForImageClassification:
    torch.manual_seed(0)
    return ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(**overrides)))


def count_calls(monkeypatch, module, name: str) -> list:
    """Replace `module.name` by a wrapper that records each call (and still runs the original)."""
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_backends_give_eager_outputs(backend, pixels):
    model = tiny_classifier().eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model(pixels, output_hidden_states=True)  # every token through every block
        expected_cls = model(pixels).logits  # the classifier's CLS-only last block
        model.set_attn_implementation(backend)
        assert model.config._attn_implementation == backend
        got = model(pixels, output_hidden_states=True)
        got_cls = model(pixels).logits
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_cls, expected_cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_cls, got.logits, atol=1e-5, rtol=0)
    for mine, eager in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine, eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["sdpa", "flex_attention"])
def test_backends_give_eager_gradients(backend, pixels):
    model = tiny_classifier().train()  # dropout 0: the backends must agree
    model.set_attn_implementation("eager")
    labels = torch.tensor([0, 3])

    def grads():
        model.zero_grad()
        model(pixels, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    eager = grads()
    model.set_attn_implementation(backend)
    if backend == "flex_attention" and pixels.device.type == "cpu":
        # torch's flex_attention refuses inputs that need gradients on the CPU; it runs them on CUDA.
        with pytest.raises(NotImplementedError, match="FlexAttention does not support backward on CPU"):
            grads()
        pytest.skip("flex_attention has no backward on the CPU in torch (NotImplementedError); GPU-only")
    other = grads()
    for name, grad in eager.items():
        torch.testing.assert_close(other[name], grad, atol=1e-5, rtol=0, msg=name)


def test_attn_implementation_at_load_time_is_the_one_that_runs(tmp_path, monkeypatch, pixels):
    tiny_classifier().save_pretrained(tmp_path)
    sdpa_calls = count_calls(monkeypatch, torch.nn.functional, "scaled_dot_product_attention")
    eager = ViTAccelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    with torch.no_grad():
        eager(pixels)
    assert sdpa_calls == []  # before, "eager" was recorded in the config but SDPA ran anyway
    default = ViTAccelForImageClassification.from_pretrained(tmp_path).eval()
    assert default.config._attn_implementation == "sdpa"
    with torch.no_grad():
        default(pixels)
    assert len(sdpa_calls) == default.config.num_hidden_layers


def test_set_attn_implementation_switches_the_backend(monkeypatch, pixels):
    model = tiny_classifier().eval()
    sdpa_calls = count_calls(monkeypatch, torch.nn.functional, "scaled_dot_product_attention")
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        model(pixels)
    assert sdpa_calls == []
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        model(pixels)
    assert len(sdpa_calls) == 2
    with pytest.raises(ValueError, match="not supported"):
        model.set_attn_implementation("no_such_backend")


def test_registered_kernel_is_dispatched(tmp_path, pixels):
    calls = []

    def recording_kernel(module, query, key, value, attention_mask, **kwargs):
        calls.append(tuple(query.shape))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recording_kernel", recording_kernel)
    try:
        model = tiny_classifier().eval()
        with torch.no_grad():
            expected = model(pixels).logits
        model.save_pretrained(tmp_path)
        loaded = ViTAccelForImageClassification.from_pretrained(tmp_path, attn_implementation="recording_kernel")
        with torch.no_grad():
            got = loaded.eval()(pixels).logits
    finally:
        del AttentionInterface._global_mapping["recording_kernel"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # (batch, heads, queries, head_dim): the last block's only query is the CLS token, for any backend.
    assert calls == [(2, 4, 17, 12), (2, 4, 1, 12)]


def test_flash_attention_is_supported_by_the_model(pixels):
    model = tiny_classifier()
    assert model._supports_flash_attn and model._supports_flex_attn and model._supports_attention_backend
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without flash_attn; GPU runs are covered by the common tests")
    # On this CPU machine flash_attn cannot be installed: transformers refuses for that reason, not for the model's.
    with pytest.raises((ImportError, ValueError)) as info:
        model.set_attn_implementation("flash_attention_2")
    assert "does not support" not in str(info.value), str(info.value)
    assert "flash" in str(info.value).lower()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_output_attentions_gives_real_maps_under_every_backend(backend, pixels):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs()
    reference = ViTForImageClassification(ViTConfig(**kwargs, layer_norm_eps=1e-6, attn_implementation="eager")).eval()
    model = ViTAccelForImageClassification(ViTAccelConfig(**kwargs)).eval()
    model.load_state_dict(reference.state_dict())
    model.set_attn_implementation(backend)
    with torch.no_grad():
        expected = reference(pixels, output_attentions=True)
        got = model(pixels, output_attentions=True)
    assert len(got.attentions) == 2
    for mine, theirs in zip(got.attentions, expected.attentions):
        assert mine.shape == (2, 4, 17, 17)
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attention_mask_matches_transformers_vit(backend, pixels):
    """A padding mask over tokens, as transformers' ViT takes, under each backend (the CLS-only block included)."""
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs()
    reference = ViTForImageClassification(ViTConfig(**kwargs, layer_norm_eps=1e-6, attn_implementation="eager"))
    model = ViTAccelForImageClassification(ViTAccelConfig(**kwargs))
    model.load_state_dict(reference.state_dict())
    model.eval().set_attn_implementation(backend)
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, -5:] = 0
    with torch.no_grad():
        expected = reference.eval()(pixels, attention_mask=mask).logits
        got = model(pixels, attention_mask=mask).logits
        full = model(pixels, attention_mask=mask, output_hidden_states=True).logits
        unmasked = model(pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked[1], got[1], atol=1e-4)  # the mask is honoured, not dropped


def test_base_model_backends_agree(pixels):
    torch.manual_seed(0)
    model = ViTAccelModel(ViTAccelConfig(**tiny_config_kwargs())).eval()
    with torch.no_grad():
        expected = model(pixels)
        model.set_attn_implementation("eager")
        got = model(pixels)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)

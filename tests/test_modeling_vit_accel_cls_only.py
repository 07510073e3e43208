"""The classification model's fast path: its last block runs on the CLS token alone (the classifier reads nothing
else), giving the same logits, loss and gradients as the full computation; the base model is unchanged by default."""

import torch
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification


def tiny_model(**overrides) -> ViTAccelForImageClassification:
    torch.manual_seed(0)
    return ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(**overrides)))


def test_cls_only_last_block_gives_the_full_logits_loss_and_gradients():
    model = tiny_model(num_hidden_layers=3).train()  # dropout 0: the two paths must agree exactly
    pixels, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def run(**kwargs):
        model.zero_grad()
        output = model(pixels, labels=labels, **kwargs)
        output.loss.backward()
        return output.logits.detach(), output.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_logits, fast_loss, fast_grads = run()
    # Asking for the hidden states makes the model compute every token in every block (the full path).
    full_logits, full_loss, full_grads = run(output_hidden_states=True)
    torch.testing.assert_close(fast_logits, full_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast_loss, full_loss, atol=1e-6, rtol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # The last block's query projection only saw the CLS token, yet every parameter gets its gradient.
    assert all(grad.abs().sum() > 0 for name, grad in fast_grads.items() if "weight" in name)


def test_base_model_returns_every_token_unless_asked():
    model = tiny_model(representation_size=16).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.vit(pixels)
        cls = model.vit(pixels, cls_token_only=True)
    assert full.last_hidden_state.shape == (2, 17, 48)
    assert cls.last_hidden_state.shape == (2, 1, 48)
    torch.testing.assert_close(cls.last_hidden_state, full.last_hidden_state[:, :1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cls.pooler_output, full.pooler_output, atol=1e-6, rtol=1e-5)
    # Hidden states or attention maps asked for: every token is computed whatever the flag says.
    with torch.no_grad():
        states = model.vit(pixels, cls_token_only=True, output_hidden_states=True)
    assert states.last_hidden_state.shape == (2, 17, 48)

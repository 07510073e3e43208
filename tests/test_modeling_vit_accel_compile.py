"""torch.compile sees the whole model as one graph: no graph breaks in the forward pass, and a training step (forward,
loss, backward) compiles with `fullgraph=True`, which raises on any break, giving the eager model's gradients.

The full-graph step uses the "aot_eager" backend: it traces the forward and the backward through AOTAutograd like
inductor does (graph breaks would show there) but skips inductor's C++ code generation, which on 2 CPU cores takes
minutes. The inductor-compiled speed is measured on CUDA by bench/train_step.py.
"""

import pytest
import torch
from factories import tiny_config_kwargs
from torch._dynamo.utils import counters

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification


def tiny_model(**overrides) -> ViTAccelForImageClassification:
    torch.manual_seed(0)
    return ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(**overrides)))


# The attention backends that run on a CPU (flash attention needs CUDA).
CPU_BACKENDS = ["eager", "sdpa", "flex_attention"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_forward_has_no_graph_breaks(backend):
    model = tiny_model().eval()
    model.set_attn_implementation(backend)
    pixel_values = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    with torch.no_grad():  # torch's flex_attention runs no backward on the CPU
        explanation = torch._dynamo.explain(model)(pixel_values)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_recorded_outputs_have_no_graph_breaks():
    # Hidden states and attention maps are recorded by hooks (transformers' capture_outputs), traced as well. The
    # hooks are installed by the first call that asks for outputs; installing them is not traced.
    model = tiny_model().eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        model(pixel_values, output_hidden_states=True)
        explanation = torch._dynamo.explain(model)(pixel_values, output_hidden_states=True, output_attentions=True)
    assert explanation.graph_break_count == 0, explanation.break_reasons


# flex_attention is left out: torch refuses dropout in it and runs no backward on the CPU.
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_training_forward_with_labels_has_no_graph_breaks(backend):
    # Training mode with dropout and stochastic depth on, and the loss computed inside the model.
    model = tiny_model(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, drop_path_rate=0.1).train()
    model.set_attn_implementation(backend)
    model.config.problem_type = "single_label_classification"
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 3]))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_fullgraph_train_step_matches_eager_gradients():
    torch._dynamo.reset()
    eager = tiny_model().train()
    compiled_model = tiny_model().train()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    pixel_values, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def step(model) -> torch.Tensor:
        logits = model(pixel_values).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        return loss.detach()

    assert torch.allclose(step(compiled), step(eager), atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_model.parameters()):
        assert p_compiled.grad is not None, name
        assert torch.allclose(p_compiled.grad, p_eager.grad, atol=1e-5, rtol=1e-4), name
    # A second call with the same shapes reuses the graph instead of recompiling.
    graphs = counters["stats"]["unique_graphs"]
    step(compiled)
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize(
    "options",
    [
        dict(layer_scale_init_value=1e-5, num_register_tokens=4, prefix_position_embeddings=False, pooling="cls_mean"),
        dict(use_cls_token=False, pooling="map", pre_norm=True, mlp_type="swiglu", hidden_act="silu"),
        dict(position_embedding_type="rope", num_register_tokens=4, layer_scale_init_value=1e-5),
        # MAE's mean pooling with fc_norm; CLIP's QuickGELU and bias-free patch embedding; DeiT III's patch-only
        # positions with LayerScale: what the three cases above leave out, in one model.
        dict(
            pooling="mean",
            hidden_act="quick_gelu",
            patch_embedding_bias=False,
            prefix_position_embeddings=False,
            layer_scale_init_value=1e-6,
        ),
    ],
    ids=["dinov2-registers", "siglip-map-swiglu", "dinov3-rope", "mae-mean-clip-deit3"],
)
def test_family_train_step_compiles_whole_with_eager_gradients(options):
    torch._dynamo.reset()
    eager = tiny_model(**options).train()
    compiled_model = tiny_model(**options).train()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")  # raises on any graph break
    pixel_values, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def step(model) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(pixel_values).logits.float(), labels)
        loss.backward()
        return loss.detach()

    assert torch.allclose(step(compiled), step(eager), atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled_model.parameters()):
        assert torch.allclose(p_compiled.grad, p_eager.grad, atol=1e-5, rtol=1e-4), name

import pytest

from vit_accel.training.arguments import ModelArguments
from vit_accel.training.model import build_model

TINY = "image_size=16,patch_size=4,hidden_size=32,num_attention_heads=2,intermediate_size=64,num_hidden_layers=2"


@pytest.mark.parametrize("backend", [None, "eager", "flex_attention"])
def test_attn_implementation_flag_reaches_the_model(backend):
    args = ModelArguments(
        model_name_or_path="vit-tiny-p16-224", from_scratch=True, config_overrides=TINY, attn_implementation=backend
    )
    model, _, _ = build_model(args, ["a", "b"])
    assert model.config._attn_implementation == (backend or "sdpa")
    assert all(layer.attention.config._attn_implementation == (backend or "sdpa") for layer in model.vit.layers)

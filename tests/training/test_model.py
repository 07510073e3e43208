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

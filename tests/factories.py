"""Builders of small models and synthetic data shared by the tests (nothing here touches a network)."""


def tiny_config_kwargs(**overrides) -> dict:
    """Fields of a ViT small enough for a CPU unit test: 2 blocks, width 48, 32-px images, 5 labels."""
    kwargs = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        num_labels=5,
    )
    kwargs.update(overrides)
    return kwargs

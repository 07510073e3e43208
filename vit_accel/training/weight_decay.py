"""Which parameters weight decay applies to: the one rule, for the plain optimizer groups and layer decay's."""

from __future__ import annotations

# Parameters that are not weights of a linear map: decaying them hurts (Google, timm and transformers all exempt them;
# timm's no_weight_decay() names the register tokens too).
NO_DECAY_NAMES = ("position_embeddings", "cls_token", "register_tokens")


def is_decayed(name: str, ndim: int) -> bool:
    """Weight decay applies to matrices and kernels, never to biases, norms, LayerScale, position embeddings, CLS or
    register tokens."""
    return not (ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES))

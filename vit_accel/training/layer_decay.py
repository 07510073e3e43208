"""Layer-wise learning-rate decay (BEiT, MAE, timm's `param_groups_layer_decay`), as optimizer parameter groups.

With L blocks, the embeddings (patch projection, position embeddings, CLS and register tokens) and the LayerNorm
before the first block (CLIP's `pre_layernorm`) are layer 0, block i (LayerScale included) is layer i + 1, and
everything after the last block (final norm, `fc_norm`, attention pooling, pre_logits, classifier) is layer L + 1.
A parameter of layer `id` learns at `learning_rate * decay ** (L + 1 - id)`: the head at the full rate, the
embeddings at `decay ** (L + 1)` of it.
Weight decay is exempted exactly as in `optim.parameter_groups`.
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import UserError
from .optim import _NO_DECAY_NAMES

# Names as they appear in our model, also when wrapped by peft (`base_model.model.vit.layers.3...`).
_BLOCK_RE = re.compile(r"(?:^|\.)vit\.layers\.(\d+)\.")
_EMBEDDINGS_RE = re.compile(r"(?:^|\.)vit\.(?:embeddings|pre_layernorm)\.")


def check_layer_decay(layer_decay: float | None) -> None:
    """`--layer_decay` must lie in (0, 1]: 1 is a uniform rate, 0 or less (or above 1) has no meaning."""
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise UserError(f"--layer_decay must be in (0, 1], got {layer_decay}.")


def layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, i + 1 for block i, `num_layers + 1` for what follows the last block."""
    if _EMBEDDINGS_RE.search(name):
        return 0
    match = _BLOCK_RE.search(name)
    if match:
        return int(match[1]) + 1
    return num_layers + 1


def is_decayed(name: str, ndim: int) -> bool:
    """Weight decay applies to matrices and kernels, never to biases, norms, position embeddings or CLS."""
    return not (ndim <= 1 or name.endswith(".bias") or any(key in name for key in _NO_DECAY_NAMES))


def layer_decay_parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float, num_layers: int
) -> list[dict]:
    """One group per (layer, decayed or not) holding only trainable parameters.

    Each group carries `lr` (already scaled, so that schedules built on it scale every group alike), `lr_scale` and
    `weight_decay`; empty groups are left out.
    """
    check_layer_decay(layer_decay)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, num_layers)
        decayed = is_decayed(name, param.ndim)
        if (layer, decayed) not in groups:
            scale = layer_decay ** (num_layers + 1 - layer)
            groups[(layer, decayed)] = {
                "params": [],
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decayed else 0.0,
                "layer_id": layer,
            }
        groups[(layer, decayed)]["params"].append(param)
    return [groups[key] for key in sorted(groups)]

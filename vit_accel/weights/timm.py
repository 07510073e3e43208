"""timm `VisionTransformer` state dicts to our parameter names and back.

Key map (timm -> ours):

| timm | ours |
|---|---|
| `cls_token` | `vit.embeddings.cls_token` |
| `pos_embed` | `vit.embeddings.position_embeddings` |
| `patch_embed.proj.{weight,bias}` | `vit.embeddings.patch_embeddings.projection.{weight,bias}` |
| `blocks.{i}.norm1` / `norm2` | `vit.layers.{i}.layernorm_before` / `layernorm_after` |
| `blocks.{i}.attn.qkv.{weight,bias}` (fused, q then k then v) | `vit.layers.{i}.attention.{q,k,v}_proj` (split) |
| `blocks.{i}.attn.proj` | `vit.layers.{i}.attention.o_proj` |
| `blocks.{i}.mlp.fc1` / `fc2` | `vit.layers.{i}.mlp.fc1` / `fc2` |
| `norm` | `vit.layernorm` |
| `pre_logits.fc` (older timm, `representation_size`) | `vit.pooler.dense` |
| `head` | `classifier` |

Anything else (`fc_norm` of average pooling, register tokens, q/k norms, layer scale) is not a plain ViT and is refused
with the keys named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .core import Checkpoint, CheckpointError

_FIXED = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "pre_logits.fc.weight": "vit.pooler.dense.weight",
    "pre_logits.fc.bias": "vit.pooler.dense.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}
_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
# timm's own training checkpoints wrap the weights; DDP adds "module.".
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")


def unwrap(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a timm checkpoint (`{"state_dict": ...}`, `{"model": ...}`, `module.` prefix)."""
    if isinstance(obj, Mapping):
        for key in _WRAPPERS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(value, torch.Tensor) for value in obj.values()):
        raise CheckpointError(f"{source}: expected a dict of tensors (a state dict), got {type(obj).__name__}.")
    return {(key[7:] if key.startswith("module.") else key): value for key, value in obj.items()}


def is_timm_state_dict(keys: set[str] | list[str]) -> bool:
    return "blocks.0.attn.qkv.weight" in set(keys)


def timm_to_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "timm") -> Checkpoint:
    """Convert a timm ViT state dict to a `Checkpoint` under our names (fused qkv split into q, k, v)."""
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _FIXED:
            ours[_FIXED[key]] = value
            continue
        match = _BLOCK_RE.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, module, kind = match.groups()
        prefix = f"vit.layers.{index}."
        if module == "attn.qkv":
            if value.shape[0] % 3:
                raise CheckpointError(f"{source}: {key!r} has shape {tuple(value.shape)}, not 3 x width rows.")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                ours[f"{prefix}attention.{name}.{kind}"] = part.contiguous()
        elif module in _BLOCK:
            ours[f"{prefix}{_BLOCK[module]}.{kind}"] = value
        else:
            unknown.append(key)
    # An empty `fc_norm` (Identity) leaves no keys; a real one means average pooling, which a CLS-token ViT is not.
    if unknown:
        raise CheckpointError(
            f"{source}: timm keys that a plain CLS-token ViT does not have: {sorted(unknown)[:8]} "
            "(average pooling, register tokens, q/k norm and layer scale are not supported)."
        )
    if "vit.embeddings.cls_token" not in ours:
        raise CheckpointError(f"{source}: no 'cls_token': ViTAccel needs a class-token ViT.")
    return Checkpoint(
        state_dict=ours,
        source=source,
        format="timm",
        resample_mode="bicubic",  # timm's checkpoint_filter_fn: bicubic with antialias
        resample_antialias=True,
        config={"layer_norm_eps": 1e-6, "hidden_act": "gelu"},
    )


def state_dict_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `ViTAccelForImageClassification` state dict as timm `VisionTransformer` keys (q, k, v fused into qkv)."""
    reverse = {ours: theirs for theirs, ours in _FIXED.items()}
    block_reverse = {ours: theirs for theirs, ours in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in reverse:
            out[reverse[key]] = value
            continue
        match = re.match(r"^vit\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if match is None:
            raise CheckpointError(f"No timm name for our key {key!r}.")
        index, module, kind = match.groups()
        if module in ("attention.k_proj", "attention.v_proj"):
            continue
        if module == "attention.q_proj":
            parts = [state_dict[f"vit.layers.{index}.attention.{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")]
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
        else:
            out[f"blocks.{index}.{block_reverse[module]}.{kind}"] = value
    return out

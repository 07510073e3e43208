"""Meta's original DINOv2 checkpoints (the `.pth` files its `torch.hub` entry points load, `dinov2_vit{s,b,l,g}14`
and their `_reg` versions): detect, read into our names.

The file is a plain state dict of Meta's `DinoVisionTransformer`, under timm's ViT names but for:

| Meta | timm (then ours, as `timm_families` reads it) |
|---|---|
| `mask_token` (1, width), always present | none: masked-image modelling only, dropped |
| `register_tokens` | `reg_token` |
| `pos_embed`: a CLS row, then the patches' (registers have none) | with registers: the patches', CLS's in `cls_token` |
| `blocks.{chunk}.{i}.*` (FSDP block chunks, `i` counted over the whole depth) | `blocks.{i}.*` |
| `blocks.{i}.mlp.w12` / `w3` (ViT-g's SwiGLU: gate and value packed, gate first) | `blocks.{i}.mlp.fc1` / `fc2` |

Without registers or SwiGLU, the layout is timm's `vit_*_dinov2` but for `mask_token`. Meta's code fixes what the
shapes do not show: LayerNorm eps 1e-6, GELU (SiLU gating in SwiGLU). At another resolution the table is resampled
as timm resamples it when it reads this layout (bicubic, antialiased); Meta's own on-the-fly interpolation (a scale
factor with a 0.1 offset in the models without registers) is not reproduced. The attention heads are in no tensor
and Meta's file records nothing else: they are asked for (`num_attention_heads=`), never assumed. The classifier
reads DINOv2's linear-evaluation features, the CLS token concatenated with the patch mean (`pooling="cls_mean"`);
the file has no head, so one is new.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from typing import Any

import torch

from . import timm_families
from .files import read_tensors
from .source_weights import Checkpoint, CheckpointError

FORMAT = "meta-dinov2"
_QKV_RE = re.compile(r"^blocks\.(\d+\.)?\d+\.attn\.qkv\.weight$")
_CHUNKED_RE = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
# timm's name for the same architecture: its facts (eps, activation, LayerScale's starting value) are Meta's too.
_TIMM_ARCHITECTURE = {False: "vit_base_patch14_dinov2", True: "vit_base_patch14_reg4_dinov2"}


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether these tensor names are a Meta DINOv2 state dict: timm-like ViT names with Meta's `mask_token` and no
    MAE decoder."""
    if config is not None:
        return False
    keys = set(names)
    return (
        {"mask_token", "cls_token", "pos_embed"} <= keys
        and "decoder_pred.weight" not in keys
        and any(_QKV_RE.match(key) for key in keys)
    )


def read(path: str | os.PathLike, progress: Any = None, lazy: bool = False) -> Checkpoint:
    """A Meta DINOv2 `.pth` (read with `weights_only=True`) as a `Checkpoint` under our names."""
    return from_meta(read_tensors(path), str(path))


def _unchunked(tensors: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """`blocks.{chunk}.{i}.*` as `blocks.{i}.*` (each block in one chunk, the chunks in order)."""
    if not any(_CHUNKED_RE.match(key) for key in tensors):
        return dict(tensors)
    out: dict[str, torch.Tensor] = {}
    chunk_of: dict[int, int] = {}
    for key, value in tensors.items():
        match = _CHUNKED_RE.match(key)
        if match is None:
            if key.startswith("blocks."):
                raise CheckpointError(f"{source}: {key!r} mixes unchunked blocks with Meta's block chunks.")
            out[key] = value
            continue
        chunk, index, rest = int(match[1]), int(match[2]), match[3]
        if chunk_of.setdefault(index, chunk) != chunk:
            raise CheckpointError(f"{source}: block {index} appears in chunks {chunk_of[index]} and {chunk}.")
        out[f"blocks.{index}.{rest}"] = value
    order = [chunk_of[index] for index in sorted(chunk_of)]
    if order != sorted(order):
        raise CheckpointError(f"{source}: Meta's block chunks do not hold the blocks in order: {order}.")
    return out


def from_meta(tensors: Mapping[str, torch.Tensor], source: str) -> Checkpoint:
    """Meta's DINOv2 state dict under timm's names, then ours (`timm_families.to_checkpoint`)."""
    state_dict = _unchunked(tensors, source)
    timm_names: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "mask_token":
            continue
        if key.endswith(".mlp.w12.weight") or key.endswith(".mlp.w12.bias"):
            key = key.replace(".mlp.w12.", ".mlp.fc1.")
        elif key.endswith(".mlp.w3.weight") or key.endswith(".mlp.w3.bias"):
            key = key.replace(".mlp.w3.", ".mlp.fc2.")
        timm_names["reg_token" if key == "register_tokens" else key] = value
    registers = "reg_token" in timm_names
    if registers:
        # Meta adds the table (CLS row first) before inserting the registers: they get no position, the CLS token
        # always the same one, which is folded into the token (timm's and transformers' layout of the same model).
        pos = timm_names["pos_embed"]
        timm_names["cls_token"] = timm_names["cls_token"] + pos[:, :1]
        timm_names["pos_embed"] = pos[:, 1:].contiguous()
    try:
        checkpoint = timm_families.to_checkpoint(timm_names, _TIMM_ARCHITECTURE[registers], {}, "token", source)
    except CheckpointError as error:
        raise CheckpointError(f"{error} (read as Meta's DINOv2 layout)") from error
    if registers and checkpoint.config.get("prefix_position_embeddings", True):
        raise CheckpointError(f"{source}: Meta's position table does not fit its patch grid and CLS token.")
    checkpoint.format = FORMAT
    checkpoint.config["pooling"] = "cls_mean"
    return checkpoint


__all__ = ["FORMAT", "detect", "from_meta", "read"]

"""What every converter shares: the checkpoint record, the streaming safetensors writer, and model assembly.

Every converter turns its source into a state dict under *our* parameter names (transformers v5 in-memory ViT names)
with everything the source holds, head and `pre_logits` included, plus a few facts the shapes cannot tell (number of
heads, LayerNorm epsilon, how the source's own loaders resample position embeddings). `build_model` then applies the
fine-tuning policy: drop or keep the head and `pre_logits`, initialise a new head, resample the position embeddings,
check every shape against the chosen configuration.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configuration_vit_accel import VIT_SIZES, ViTAccelConfig
from ..errors import UserError
from ..modeling_vit_accel import resample_position_embeddings

# Called once per tensor while a large checkpoint is read: (index, total, key, bytes).
ProgressFn = Callable[[int, int, str, int], None]

HEAD_INITS = ("zeros", "normal")

POS_KEY = "vit.embeddings.position_embeddings"
PATCH_KEY = "vit.embeddings.patch_embeddings.projection.weight"
POOLER_KEYS = ("vit.pooler.dense.weight", "vit.pooler.dense.bias")
HEAD_KEYS = ("classifier.weight", "classifier.bias")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unknown format, refused content, or shapes that do not fit."""


@dataclass
class Checkpoint:
    """A source checkpoint converted to our parameter names, with what its shapes alone cannot tell."""

    state_dict: dict[str, torch.Tensor]
    source: str
    format: str  # "google-npz", "timm", "transformers", "vit_accel"
    resample_mode: str = "bicubic"
    resample_antialias: bool = False
    num_attention_heads: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # extra ViTAccelConfig fields read from the source
    # For a lazily read checkpoint: reads the tensor that a meta tensor of `state_dict` stands for.
    materialize: Callable[[str], torch.Tensor] | None = None

    def metadata(self) -> dict[str, str]:
        """String metadata for a cached safetensors file, enough to rebuild this record without the source."""
        return {
            "format": "pt",
            "vit_accel_source_format": self.format,
            "vit_accel_source": self.source,
            "vit_accel_resample": json.dumps([self.resample_mode, self.resample_antialias]),
            "vit_accel_heads": json.dumps(self.num_attention_heads),
            "vit_accel_config": json.dumps(self.config),
        }

    @classmethod
    def from_metadata(cls, state_dict: dict[str, torch.Tensor], source: str, meta: Mapping[str, str]) -> Checkpoint:
        mode, antialias = json.loads(meta.get("vit_accel_resample", '["bicubic", false]'))
        return cls(
            state_dict=state_dict,
            source=source,
            format=meta.get("vit_accel_source_format", "vit_accel"),
            resample_mode=mode,
            resample_antialias=antialias,
            num_attention_heads=json.loads(meta.get("vit_accel_heads", "null")),
            config=json.loads(meta.get("vit_accel_config", "{}")),
        )


# ---------------------------------------------------------------------------------------------------------------------
# safetensors, written one tensor at a time

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    materialize: Callable[[str], torch.Tensor] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor (no second in-memory copy of the whole dict), atomically.

    `safetensors.torch.save_file` first serialises every tensor to bytes, which doubles the peak memory of converting
    a 1.2 GB checkpoint; the format is simple (8-byte header length, JSON header, raw little-endian data) to stream.
    Meta tensors are placeholders: `materialize(key)` supplies their data when their turn comes; what it returns must
    stay valid until the call after next (it may reuse two buffers in turn).
    """
    path = Path(path)
    header: dict[str, Any] = {}
    offset = 0
    for key, tensor in tensors.items():
        if tensor.dtype not in _ST_DTYPES:
            raise CheckpointError(f"Cannot write {key!r} of dtype {tensor.dtype} to safetensors.")
        size = tensor.numel() * tensor.element_size()
        header[key] = {
            "dtype": _ST_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned, as safetensors itself writes it
    partial = path.with_name(path.name + ".partial")
    total = len(tensors)
    # One writer thread: tensor i is written while tensor i+1 is read and transposed (file writes and torch copies
    # both release the GIL). At most one write is in flight, so a materialize() that alternates two buffers is safe.
    with open(partial, "wb") as handle, ThreadPoolExecutor(max_workers=1) as writer:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        pending = None
        for index, (key, tensor) in enumerate(tensors.items()):
            if tensor.is_meta:
                if materialize is None:
                    raise CheckpointError(f"{key!r} is a placeholder (meta tensor) and nothing can read its data.")
                real = materialize(key)
                if tuple(real.shape) != tuple(tensor.shape):
                    raise CheckpointError(f"{key!r}: read shape {tuple(real.shape)}, planned {tuple(tensor.shape)}.")
                tensor = real.to(tensor.dtype)
            data = tensor.detach().cpu().contiguous().reshape(-1)
            if pending is not None:
                pending.result()  # also re-raises a failed write here
            pending = writer.submit(handle.write, memoryview(data.view(torch.uint8).numpy())) if data.numel() else None
            if progress is not None:
                progress(index + 1, total, key, data.numel() * data.element_size())
        if pending is not None:
            pending.result()
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------------------------------
# model assembly


def _layer_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    indices = {int(key.split(".")[2]) for key in state_dict if key.startswith("vit.layers.")}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"Encoder blocks are not numbered 0..N-1: found {sorted(indices)}.")
    return len(indices)


def infer_config_fields(checkpoint: Checkpoint) -> dict[str, Any]:
    """ViTAccelConfig fields implied by the checkpoint's shapes (and the facts its converter recorded)."""
    sd = checkpoint.state_dict
    for key in (PATCH_KEY, POS_KEY, "vit.layers.0.mlp.fc1.weight"):
        if key not in sd:
            raise CheckpointError(f"{checkpoint.source}: no {key!r} after conversion; is this a plain ViT checkpoint?")
    hidden, channels, patch_h, patch_w = sd[PATCH_KEY].shape
    num_positions = sd[POS_KEY].shape[1] - 1
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise CheckpointError(f"{checkpoint.source}: {num_positions} position embeddings do not form a square grid.")
    heads = checkpoint.num_attention_heads
    if heads is None:  # timm and raw state dicts do not say: every ViT in VIT_SIZES but huge uses 64-wide heads
        heads = next((h for w, _, h, _ in VIT_SIZES.values() if w == hidden), max(hidden // 64, 1))
    fields: dict[str, Any] = {
        "hidden_size": int(hidden),
        "num_hidden_layers": _layer_count(sd),
        "num_attention_heads": int(heads),
        "intermediate_size": int(sd["vit.layers.0.mlp.fc1.weight"].shape[0]),
        "num_channels": int(channels),
        "patch_size": int(patch_h) if patch_h == patch_w else [int(patch_h), int(patch_w)],
        "image_size": int(side * patch_h) if patch_h == patch_w else [int(side * patch_h), int(side * patch_w)],
        "qkv_bias": "vit.layers.0.attention.q_proj.bias" in sd,
    }
    fields.update(checkpoint.config)
    return fields


def source_grid(checkpoint: Checkpoint) -> tuple[int, int]:
    side = math.isqrt(checkpoint.state_dict[POS_KEY].shape[1] - 1)
    return (side, side)


def build_config(
    checkpoint: Checkpoint,
    variant: str | None = None,
    config: ViTAccelConfig | None = None,
    **overrides: Any,
) -> ViTAccelConfig:
    """The configuration to build: a given config, a named variant, or the checkpoint's own shapes; then overrides.

    Without `representation_size` in the overrides the result has none: `pre_logits` is dropped for fine-tuning, as
    Google and timm do, unless asked for.
    """
    if config is not None:
        fields = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            fields.pop(key, None)
        fields.update(overrides)
        return ViTAccelConfig(**fields)
    if variant is not None:
        fields = {key: value for key, value in checkpoint.config.items() if key in ("layer_norm_eps", "hidden_act")}
        fields.update(overrides)
        return ViTAccelConfig.from_variant(variant, **fields)
    fields = infer_config_fields(checkpoint)
    fields.update(overrides)
    return ViTAccelConfig(**fields)


def _new_head(out_features: int, in_features: int, head_init: str, std: float) -> dict[str, torch.Tensor]:
    weight = torch.zeros(out_features, in_features)
    if head_init == "normal":  # transformers' ViT: truncated normal (std initializer_range), zero bias
        torch.nn.init.trunc_normal_(weight, mean=0.0, std=std)
    # "zeros": Google's fine-tuning starts every new head from zeros (vit_jax, `zero_init` of the head)
    return {"classifier.weight": weight, "classifier.bias": torch.zeros(out_features)}


def adapt_state_dict(
    checkpoint: Checkpoint,
    config: ViTAccelConfig,
    head_init: str = "zeros",
    resample_mode: str | None = None,
    resample_antialias: bool | None = None,
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors made to fit `config` (for `ViTAccelForImageClassification`).

    - `pre_logits` is kept only when `config.representation_size` is set, and then must match it.
    - The head is kept when its shape fits (`num_labels` equal to the checkpoint's classes, e.g. 21843); otherwise a
      new head is made with `head_init` (`"zeros"` as Google, `"normal"` as transformers).
    - Position embeddings are resampled to the config's grid in float32, CLS kept, in the source's mode by default
      (bilinear for Google npz as Google and timm do; bicubic otherwise) or the mode given.
    """
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}.")
    sd = dict(checkpoint.state_dict)
    pooler = {key: sd.pop(key) for key in POOLER_KEYS if key in sd}
    head = {key: sd.pop(key) for key in HEAD_KEYS if key in sd}

    if config.representation_size is not None:
        if len(pooler) != 2:
            raise CheckpointError(
                f"{checkpoint.source}: representation_size={config.representation_size} asks for the pre_logits layer, "
                "but the checkpoint has none."
            )
        width = pooler["vit.pooler.dense.weight"].shape[0]
        if width != config.representation_size:
            raise CheckpointError(
                f"{checkpoint.source}: pre_logits has width {width}, "
                f"not representation_size={config.representation_size}."
            )
        sd.update(pooler)

    features = config.representation_size or config.hidden_size
    if config.num_labels > 0:
        wanted = (config.num_labels, features)
        if len(head) == 2 and tuple(head["classifier.weight"].shape) == wanted:
            sd.update(head)
        else:
            sd.update(_new_head(config.num_labels, features, head_init, config.initializer_range))

    if POS_KEY in sd:
        pos = sd[POS_KEY]
        new_grid = config.grid_size
        if pos.shape[1] != new_grid[0] * new_grid[1] + 1 or source_grid(checkpoint) != new_grid:
            sd[POS_KEY] = resample_position_embeddings(
                pos,
                new_grid,
                old_grid=source_grid(checkpoint),
                mode=resample_mode or checkpoint.resample_mode,
                antialias=checkpoint.resample_antialias if resample_antialias is None else resample_antialias,
            )
    return sd


def load_into(
    cls: type,
    config: ViTAccelConfig,
    state_dict: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Instantiate `cls(config)` without allocating weights and adopt `state_dict`'s tensors, checking every shape."""
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict()
    if not any(key.startswith("vit.") for key in expected):  # the bare ViTAccelModel: no prefix, no classifier
        state_dict = {key[4:]: value for key, value in state_dict.items() if key.startswith("vit.")}
    for key, value in state_dict.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: checkpoint tensor {key!r} has shape {tuple(value.shape)} but the model "
                f"(hidden_size={config.hidden_size}, layers={config.num_hidden_layers}, "
                f"patch_size={config.patch_size}, image_size={config.image_size}) expects {tuple(expected[key].shape)}."
            )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: checkpoint does not fit the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} "
            f"(model has {config.num_hidden_layers} layers)."
        )
    if dtype is not None:
        state_dict = {key: value.to(dtype) for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()  # as transformers' from_pretrained leaves it
    return model

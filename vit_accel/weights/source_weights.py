"""The record every format module reads into: a state dict under our names plus what its shapes cannot tell.

Our names are transformers' v5 in-memory ViT names (`vit.embeddings.*`, `vit.layers.{i}.attention.q_proj`, ...,
`vit.pooler.dense.*` for Google's `pre_logits` or transformers' pooler, `classifier.*` for the head).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError

# Called once per tensor while a large checkpoint is read or written: (index, total, key, bytes).
ProgressFn = Callable[[int, int, str, int], None]

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
    # Extra ViTAccelConfig fields read from the source: LayerNorm epsilon, activation, and `id2label` where the source
    # names its classes (those go with the source's head and only with it).
    config: dict[str, Any] = field(default_factory=dict)
    # For a lazily read checkpoint: reads the tensor that a meta tensor of `state_dict` stands for.
    materialize: Callable[[str], torch.Tensor] | None = None
    # Where the source's files lie when `source` names it otherwise (a Hub repo read from the HF cache).
    folder: str | None = None

    def tensor(self, key: str) -> torch.Tensor:
        """The real data of `key`, read now if the checkpoint holds only a placeholder for it."""
        value = self.state_dict[key]
        if value.is_meta:
            if self.materialize is None:
                raise CheckpointError(f"{self.source}: {key!r} is a placeholder and nothing can read its data.")
            return self.materialize(key)
        return value

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
        config = json.loads(meta.get("vit_accel_config", "{}"))
        if "id2label" in config:  # JSON keys are strings
            config["id2label"] = {int(k): v for k, v in config["id2label"].items()}
        return cls(
            state_dict=state_dict,
            source=source,
            format=meta.get("vit_accel_source_format", "vit_accel"),
            resample_mode=mode,
            resample_antialias=antialias,
            num_attention_heads=json.loads(meta.get("vit_accel_heads", "null")),
            config=config,
        )

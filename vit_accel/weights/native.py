"""ViTAccel's own safetensors: a directory (`config.json` of `model_type: vit_accel` + `model.safetensors`), a bare
safetensors file under our names, or one of our cached conversions (a safetensors file whose metadata records its
source): detect, read, write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from ..configuration_vit_accel import ViTAccelConfig
from ..modeling_vit_accel import _ON_DISK_VIT_NAMES
from .files import read_json, read_tensors, safetensors_header, save_safetensors
from .source_weights import Checkpoint, CheckpointError, ProgressFn
from .transformers_vit import rename_state_dict

# Keys only the later ViT families have (LayerScale, registers, pre-norm, fc_norm, the attention pool).
_FAMILY_KEY = re.compile(r"(lambda1|register_tokens|pre_layernorm\.|fc_norm\.|attention_pool\.)")

# Fields of our config.json that the tensors' shapes cannot tell.
_CONFIG_FIELDS = (
    "layer_norm_eps",
    "hidden_act",
    "initializer_range",
    "pooler_act",
    "id2label",
    # the family options: what the blocks compute and what the classifier reads
    "use_cls_token",
    "num_register_tokens",
    "prefix_position_embeddings",
    "patch_embedding_bias",
    "pre_norm",
    "layer_scale_init_value",
    "mlp_type",
    "pooling",
    "position_embedding_type",
    "rope_theta",
    "qkv_bias",
)


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a directory's `config.json` says `model_type: vit_accel`, or these tensor names are our classifier's."""
    if config is not None:
        return config.get("model_type") == "vit_accel"
    names = set(names)
    return "vit.embeddings.cls_token" in names and any(name.startswith("vit.layers.") for name in names)


def read(path: str | os.PathLike, progress: ProgressFn | None = None, lazy: bool = False) -> Checkpoint:
    """One of our directories or safetensors files as a `Checkpoint` (memory-mapped)."""
    path = Path(path)
    if path.is_dir():
        config = read_json(path / "config.json")
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise CheckpointError(f"{path}: no model.safetensors next to its config.json.")
        tensors = _classifier_names(read_tensors(weights), str(path))
        checkpoint = Checkpoint(state_dict=tensors, source=str(path), format="vit_accel")
        apply_config(checkpoint, config)
        return checkpoint
    meta = safetensors_header(path).get("__metadata__") or {}
    tensors = read_tensors(path)
    if "vit_accel_source_format" in meta:  # one of our cached conversions
        return Checkpoint.from_metadata(tensors, str(path), meta)
    # A bare file records neither epsilon nor activation: ViTAccelConfig's defaults, which a config.json beside it
    # (sources._with_config_beside) or the caller's keywords replace. Its heads stay unknown: they are never assumed.
    defaults = ViTAccelConfig()
    config = {"layer_norm_eps": defaults.layer_norm_eps, "hidden_act": defaults.hidden_act}
    tensors = _classifier_names(tensors, str(path))
    return Checkpoint(state_dict=tensors, source=str(path), format="vit_accel", config=config)


def apply_config(checkpoint: Checkpoint, config: Mapping[str, Any]) -> None:
    """The heads and the fields of our `config.json` that the tensors' shapes cannot tell, onto `checkpoint`."""
    checkpoint.num_attention_heads = config.get("num_attention_heads")
    checkpoint.config = {key: config[key] for key in _CONFIG_FIELDS if key in config}
    if "id2label" in checkpoint.config:
        checkpoint.config["id2label"] = {int(k): v for k, v in checkpoint.config["id2label"].items()}


def _classifier_names(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Our names with the `vit.` prefix, whichever names the file holds: `save_pretrained` writes transformers' ViT
    on-disk names (as transformers' own ViT does), our streaming writer the in-memory ones, and a bare
    `ViTAccelModel`'s keys carry no prefix."""

    if not any(_FAMILY_KEY.search(key) for key in tensors):
        return rename_state_dict(tensors, source)
    # A family's parts have no transformers ViT name: undo the on-disk renaming of our blocks as transformers does.
    out = {}
    for key, value in tensors.items():
        for pattern, new in _ON_DISK_VIT_NAMES:
            key = re.sub(pattern, new, key)
        out[key if key.startswith(("vit.", "classifier.")) else f"vit.{key}"] = value
    return out


def write(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    progress: ProgressFn | None = None,
    materialize: Callable[[str], torch.Tensor] | None = None,
) -> Path:
    """Write `model` as one of our directories: config.json, model.safetensors and the model's code (so the
    directory also loads without vit_accel, through `trust_remote_code`).

    The weights go through our streaming writer: `save_pretrained` (through `safetensors.torch.save_file`) would first
    hold a second copy of every tensor as bytes, and a conversion is meant to peak near one checkpoint's size. Meta
    tensors in the state dict are read by `materialize(key)` when their turn comes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    if getattr(model, "_auto_class", None) is not None:
        # As save_pretrained does: copy the model files next to the weights.
        from transformers.dynamic_module_utils import custom_object_save

        custom_object_save(model, out_dir, config=model.config)
    model.config.save_pretrained(out_dir)
    save_safetensors(model.state_dict(), out_dir / "model.safetensors", {"format": "pt"}, progress, materialize)
    return out_dir

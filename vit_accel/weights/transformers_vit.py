"""transformers `ViT` checkpoints (directories, Hub snapshots, bare state dicts): detect, read into our names, write.

Two name sets exist. transformers v5 keeps the *legacy* names on disk (what `save_pretrained` writes and what the Hub's
`google/vit-*-in21k` repos hold) and renames them to new names in memory; our names are those in-memory names.
`ViTModel` checkpoints carry no `vit.` prefix and hold a `pooler` (the 21k `pre_logits`).

| on disk (legacy) | in memory (v5) = ours |
|---|---|
| `[vit.]encoder.layer.{i}.attention.attention.{query,key,value}` | `vit.layers.{i}.attention.{q,k,v}_proj` |
| `[vit.]encoder.layer.{i}.attention.output.dense` | `vit.layers.{i}.attention.o_proj` |
| `[vit.]encoder.layer.{i}.intermediate.dense` | `vit.layers.{i}.mlp.fc1` |
| `[vit.]encoder.layer.{i}.output.dense` | `vit.layers.{i}.mlp.fc2` |
| `[vit.]encoder.layer.{i}.layernorm_{before,after}` | `vit.layers.{i}.layernorm_{before,after}` |
| `[vit.]embeddings.*`, `[vit.]layernorm`, `[vit.]pooler.dense` | `vit.embeddings.*`, `vit.layernorm`, `vit.pooler...` |
| `classifier` | `classifier` |
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointError

_LEGACY_BLOCK = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}
_V5_BLOCK = {value: value for value in _LEGACY_BLOCK.values()}
_LEGACY_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
_V5_RE = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")
_TOP = (
    "embeddings.cls_token",
    "embeddings.position_embeddings",
    "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embeddings.projection.bias",
    "layernorm.weight",
    "layernorm.bias",
    "pooler.dense.weight",
    "pooler.dense.bias",
)
# Parts of transformers' ViT that a classifier does not use (masked-image-modeling token).
_IGNORED = ("embeddings.mask_token",)


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a directory's `config.json` says `model_type: vit`, or these tensor names are a transformers ViT's."""
    if config is not None:
        return config.get("model_type") == "vit"
    keys = set(names)
    return any(
        key.startswith(("vit.encoder.layer.", "encoder.layer.", "vit.layers.", "layers.")) and "attention" in key
        for key in keys
    ) and any(key.endswith("embeddings.cls_token") for key in keys)


def rename_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "transformers") -> dict[str, torch.Tensor]:
    """Rename a transformers ViT state dict (legacy or v5 names, with or without `vit.`) to our names."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            out[key] = value
            continue
        bare = key[4:] if key.startswith("vit.") else key
        if bare in _IGNORED:
            continue
        if bare in _TOP:
            out[f"vit.{bare}"] = value
            continue
        for pattern, table in ((_LEGACY_RE, _LEGACY_BLOCK), (_V5_RE, _V5_BLOCK)):
            match = pattern.match(bare)
            if match and match.group(2) in table:
                index, module, kind = match.groups()
                out[f"vit.layers.{index}.{table[module]}.{kind}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of a transformers ViT: {sorted(unknown)[:8]}.")
    return out


def config_fields(vit_config: Mapping[str, Any]) -> dict[str, Any]:
    """ViTAccelConfig fields from a transformers `ViTConfig` dict (its LayerNorm eps, activation, heads, labels)."""
    names = ("layer_norm_eps", "hidden_act", "num_attention_heads", "qkv_bias", "initializer_range", "pooler_act")
    fields = {key: vit_config[key] for key in names if key in vit_config}
    if vit_config.get("id2label"):
        fields["id2label"] = {int(k): v for k, v in vit_config["id2label"].items()}
        fields["label2id"] = {v: int(k) for k, v in vit_config["id2label"].items()}
    return fields


def to_checkpoint(
    state_dict: Mapping[str, torch.Tensor], vit_config: Mapping[str, Any] | None, source: str
) -> Checkpoint:
    """A `Checkpoint` from a transformers ViT state dict and its config dict."""
    vit_config = dict(vit_config or {})
    fields = config_fields(vit_config)
    heads = fields.pop("num_attention_heads", None)
    return Checkpoint(
        state_dict=rename_state_dict(state_dict, source),
        source=source,
        format="transformers",
        resample_mode="bicubic",  # transformers' interpolate_pos_encoding: bicubic, no antialias
        resample_antialias=False,
        num_attention_heads=heads,
        config=fields,
    )


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def read(
    path: str | os.PathLike,
    progress: Any = None,
    lazy: bool = False,
    use_safetensors: bool | None = None,
    weights_name: str | None = None,
) -> Checkpoint:
    """A transformers ViT directory (`config.json` + safetensors, sharded or not, or a weights-only `.bin`), or a
    bare state dict file under its names. In a directory, `use_safetensors` chooses the weights as transformers does
    (True: safetensors only; False: `pytorch_model.bin`), and `weights_name` names the file outright."""
    from .files import read_json, read_tensors

    path = Path(path)
    if not path.is_dir():
        # A bare file records neither epsilon nor activation: the defaults of the config class that wrote its names
        # (transformers' ViTConfig, eps 1e-12, for the on-disk `encoder.layer.` names; v5's in-memory names are ours
        # too, so ViTAccelConfig's), which a config.json beside it or the caller's keywords replace. Its heads stay
        # unknown: they are never assumed.
        from transformers import ViTConfig

        from ..configuration_vit_accel import ViTAccelConfig

        tensors = read_tensors(path)
        legacy = any(key.startswith(("encoder.layer.", "vit.encoder.layer.")) for key in tensors)
        defaults = ViTConfig() if legacy else ViTAccelConfig()
        config = {"layer_norm_eps": defaults.layer_norm_eps, "hidden_act": defaults.hidden_act}
        return to_checkpoint(tensors, config, str(path))
    vit_config = read_json(path / "config.json")
    names = [weights_name] if weights_name else WEIGHT_FILES
    names = [n for n in names if use_safetensors is None or use_safetensors == ("safetensors" in n)]
    weights = next((path / name for name in names if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no {' or '.join(names)}.")
    if weights.name.endswith(".index.json"):
        state_dict = {}
        for shard in sorted(set(read_json(weights).get("weight_map", {}).values())):
            state_dict.update(read_tensors(path / shard))
    else:
        state_dict = read_tensors(weights)
    return to_checkpoint(state_dict, vit_config, str(path))


def write(model: torch.nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write `model` (ViTAccelForImageClassification) as a transformers-native `ViT` directory (`model_type: vit`).

    transformers' own `save_pretrained` writes it, so the files are exactly what `ViTForImageClassification` expects.
    """
    from transformers import ViTConfig, ViTForImageClassification

    config = model.config
    if config.representation_size is not None:
        raise CheckpointError(
            "transformers' ViTForImageClassification has no pre_logits layer before its classifier; export a model "
            "without representation_size (the fine-tuning setting)."
        )
    vit_config = ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,  # ViTConfig's default is 1e-12; ours (and Google's) 1e-6
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        qkv_bias=config.qkv_bias,
        num_labels=config.num_labels,
        id2label=dict(config.id2label),
        label2id=dict(config.label2id),
        problem_type=config.problem_type,
    )
    with torch.device("meta"):
        target = ViTForImageClassification(vit_config)
    target.load_state_dict(model.state_dict(), strict=True, assign=True)
    out_dir = Path(out_dir)
    target.save_pretrained(out_dir)
    return out_dir

"""transformers' own ViT families (directories written by `save_pretrained`): `Dinov2Model`,
`Dinov2WithRegistersModel` (and their `...ForImageClassification`), `CLIPVisionModel`, `SiglipVisionModel` and
`ViTMAEModel`: detect, read into our names.

transformers reads its own directory (its on-disk names, shards, dtype), through the class the directory's
`config.json` names, and hands over its in-memory state dict; this module renames it:

- DINOv2: `embeddings.*`, `layernorm` and `encoder.layer.{i}.attention.*`, `layer_scale{1,2}.lambda1` keep their
  names under `vit.` (`vit.layers.{i}...`); `norm1`/`norm2` are `layernorm_before`/`layernorm_after`; SwiGLU's
  `mlp.gate_proj` and `mlp.up_proj` are packed into `mlp.fc1` (gate first), `mlp.down_proj` is `mlp.fc2`.
- CLIP and SigLIP: `embeddings.class_embedding` -> `vit.embeddings.cls_token`, `patch_embedding` ->
  `patch_embeddings.projection`, `position_embedding.weight` -> `position_embeddings`, `pre_layrnorm` ->
  `vit.pre_layernorm`, `encoder.layers.{i}.layer_norm1`/`2` -> `vit.layers.{i}.layernorm_before`/`after`,
  `self_attn.{q,k,v,out}_proj` -> `attention.{q,k,v,o}_proj`, `post_layernorm` -> `vit.layernorm`.
- SigLIP's head: `head.probe`, `head.attention.in_proj_*` (q, k, v stacked), `out_proj`, `layernorm`, `mlp` ->
  `vit.attention_pool.probe`, `q_proj`/`k_proj`/`v_proj`, `o_proj`, `layernorm`, `feed_forward`.
- ViTMAE: transformers' ViT names (`transformers_vit`); its decoder is not read.
- DINOv3 (`DINOv3ViTModel`, 2-D RoPE: `position_embedding_type="rope"`): `embeddings.cls_token`/`register_tokens`
  keep their names under `vit.`, `embeddings.patch_embeddings` is `patch_embeddings.projection`,
  `model.layer.{i}.norm1`/`norm2` are `layernorm_before`/`layernorm_after`, `attention.*` and `layer_scale*` keep
  theirs, `mlp.up_proj`/`down_proj` are `mlp.fc1`/`fc2` (gated: `gate_proj` and `up_proj` packed into `fc1`), `norm`
  is `vit.layernorm`. A bias transformers' config leaves out (its key bias, by default) is a zero bias of ours.

DINOv2 with registers gives the CLS token a position and the registers none: the CLS token's position is folded
into the token (the same sum at every input), and the remaining table covers the patches only
(`prefix_position_embeddings=False`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint, CheckpointError
from .transformers_vit import rename_state_dict

# model_type -> (what it is, its pooling for our classifier: each family's own linear head)
SUPPORTED = {
    "dinov2": ("DINOv2", "cls_mean"),
    "dinov2_with_registers": ("DINOv2 with registers", "cls_mean"),
    "clip_vision_model": ("CLIP's vision tower", "cls"),
    "siglip_vision_model": ("SigLIP's vision tower", "map"),
    "vit_mae": ("MAE", "cls"),
    "dinov3_vit": ("DINOv3", "cls"),
}
UNSUPPORTED = {
    "siglip2_vision_model": "SigLIP2 NaFlex (variable resolution)",
    "aimv2_vision_model": "AIMv2 (RMSNorm, SwiGLU)",
    "aimv2": "AIMv2 (RMSNorm, SwiGLU)",
    "clip": "a whole CLIP model (image and text); save its CLIPVisionModel",
    "siglip": "a whole SigLIP model (image and text); save its SiglipVisionModel",
    "siglip2": "a whole SigLIP2 model (image and text)",
}
# Classifiers whose head is none of our poolings (they average the patch tokens without any LayerNorm).
_FOREIGN_HEADS = {
    "CLIPForImageClassification": "averages CLIP's patch tokens before the final LayerNorm",
    "SiglipForImageClassification": "averages SigLIP's tokens and ignores its attention-pooling head",
}

# Each family's published normalisation (its Hub repos' image processors), for a directory saved without one.
_IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
PREPROCESSING = {
    "dinov2": _IMAGENET,
    "dinov2_with_registers": _IMAGENET,
    "vit_mae": _IMAGENET,
    "dinov3_vit": _IMAGENET,
    "clip_vision_model": {
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    },
    "siglip_vision_model": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
}

_DINO_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "mlp.down_proj": "mlp.fc2",  # SwiGLU's output; its gate_proj and up_proj are packed into mlp.fc1
}
_CLIP_BLOCK = {
    "layer_norm1": "layernorm_before",
    "layer_norm2": "layernorm_after",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.out_proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_CLIP_TOP = {
    "embeddings.patch_embedding.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "pre_layrnorm.weight": "vit.pre_layernorm.weight",
    "pre_layrnorm.bias": "vit.pre_layernorm.bias",
    "post_layernorm.weight": "vit.layernorm.weight",
    "post_layernorm.bias": "vit.layernorm.bias",
    "head.probe": "vit.attention_pool.probe",
    "head.attention.out_proj.weight": "vit.attention_pool.o_proj.weight",
    "head.attention.out_proj.bias": "vit.attention_pool.o_proj.bias",
    "head.layernorm.weight": "vit.attention_pool.layernorm.weight",
    "head.layernorm.bias": "vit.attention_pool.layernorm.bias",
    "head.mlp.fc1.weight": "vit.attention_pool.feed_forward.fc1.weight",
    "head.mlp.fc1.bias": "vit.attention_pool.feed_forward.fc1.bias",
    "head.mlp.fc2.weight": "vit.attention_pool.feed_forward.fc2.weight",
    "head.mlp.fc2.bias": "vit.attention_pool.feed_forward.fc2.bias",
}
_DINO_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_CLIP_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def default_processor(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The family's normalisation for a directory of it that holds no image processor of its own; else None."""
    from .files import read_json

    settings = PREPROCESSING.get(read_json(Path(folder) / "config.json").get("model_type"))
    return dict(settings) if settings is not None else None


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a directory's `config.json` is one of transformers' ViT families (loadable or refused by name)."""
    if config is None:
        return False
    model_type = config.get("model_type")
    return model_type in SUPPORTED or model_type in UNSUPPORTED


def read(path: str | os.PathLike, progress: Any = None, lazy: bool = False) -> Checkpoint:
    """A transformers family directory as a `Checkpoint`, read by transformers itself."""
    import transformers

    from .files import read_json

    path = Path(path)
    config = read_json(path / "config.json")
    model_type = config.get("model_type")
    architecture = (config.get("architectures") or [None])[0]
    if architecture in _FOREIGN_HEADS:
        raise CheckpointError(
            f"{path}: transformers' {architecture} {_FOREIGN_HEADS[architecture]}, a head vit_accel does not have; "
            "save its backbone (model.base_model) and load that with num_labels= for a new head."
        )
    if model_type in UNSUPPORTED:
        raise CheckpointError(
            f"{path}: transformers' {model_type!r} model, {UNSUPPORTED[model_type]}: vit_accel cannot load it yet "
            f"(transformers families it loads: {', '.join(what for what, _ in SUPPORTED.values())})."
        )
    cls = getattr(transformers, architecture, None) if architecture else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = transformers.AutoModel
    model = cls.from_pretrained(path, dtype=torch.float32)
    family_config = model.config
    # A classifier's backbone sits under its base_model_prefix (`dinov2.`), a vision tower's under `vision_model.`.
    prefixes = tuple(f"{name}." for name in (model.base_model_prefix, "vision_model") if name)
    state_dict = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in prefixes if key.startswith(p)), "")
        state_dict[key[len(prefix) :]] = value
    return to_checkpoint(state_dict, family_config, str(path))


def to_checkpoint(state_dict: Mapping[str, torch.Tensor], config: Any, source: str) -> Checkpoint:
    """A family's in-memory state dict and its config as a `Checkpoint` under our names."""
    model_type = config.model_type
    head = {key: value for key, value in state_dict.items() if key.startswith("classifier.")}
    body = {key: value for key, value in state_dict.items() if not key.startswith("classifier.")}
    if model_type in ("dinov2", "dinov2_with_registers"):
        ours, fields = _dinov2(body, config, source)
    elif model_type in ("clip_vision_model", "siglip_vision_model"):
        ours, fields = _clip(body, config, source)
    elif model_type == "dinov3_vit":
        ours, fields = _dinov3(body, config, source)
    else:  # vit_mae: transformers' ViT names
        ours = rename_state_dict({k: v for k, v in body.items() if not k.startswith("decoder")}, source)
        fields = {"pooling": "cls"}
    ours.update(head)
    fields = {
        "layer_norm_eps": float(config.layer_norm_eps),
        "hidden_act": config.hidden_act,
        "initializer_range": float(getattr(config, "initializer_range", 0.02)),
        **fields,
    }
    if getattr(config, "id2label", None) and head:
        fields["id2label"] = {int(k): v for k, v in config.id2label.items()}
    return Checkpoint(
        state_dict=ours,
        source=source,
        format="transformers",
        resample_mode="bicubic",  # as each family's interpolate_pos_encoding; DINOv2 with registers antialiases
        resample_antialias=model_type == "dinov2_with_registers",
        num_attention_heads=int(config.num_attention_heads),
        config=fields,
    )


def _dinov2(sd: dict[str, torch.Tensor], config: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key == "embeddings.mask_token":
            continue  # masked-image modelling only
        if key.startswith(("embeddings.", "layernorm.")):
            ours[f"vit.{key}"] = value
            continue
        match = _DINO_RE.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, module, kind = match.groups()
        if module == "mlp.up_proj":
            continue  # packed with gate_proj below
        if module == "mlp.gate_proj":
            # Our packed SwiGLU reads the gate from the first half of fc1's features, the value from the second.
            up = sd[f"encoder.layer.{index}.mlp.up_proj.{kind}"]
            ours[f"vit.layers.{index}.mlp.fc1.{kind}"] = torch.cat((value, up), dim=0)
            continue
        ours[f"vit.layers.{index}.{_DINO_BLOCK.get(module, module)}.{kind}"] = value
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of a transformers DINOv2: {sorted(unknown)[:8]}.")
    registers = int(getattr(config, "num_register_tokens", 0) or 0)
    prefix_positions = True
    if registers:
        # CLS has a position, the registers none: fold CLS's into the token, keep the patches' table.
        pos = ours["vit.embeddings.position_embeddings"]
        ours["vit.embeddings.cls_token"] = ours["vit.embeddings.cls_token"] + pos[:, :1]
        ours["vit.embeddings.position_embeddings"] = pos[:, 1:].contiguous()
        prefix_positions = False
    swiglu = bool(getattr(config, "use_swiglu_ffn", False))
    fields = {
        "num_register_tokens": registers,
        "prefix_position_embeddings": prefix_positions,
        "layer_scale_init_value": float(config.layerscale_value),
        "mlp_type": "swiglu" if swiglu else "mlp",
        **({"hidden_act": "silu"} if swiglu else {}),  # transformers' DINOv2 SwiGLU gates with SiLU
        "intermediate_size": int(ours["vit.layers.0.mlp.fc2.weight"].shape[1]),
        "qkv_bias": bool(getattr(config, "qkv_bias", True)),
        "pooling": "cls_mean",
    }
    return ours, fields


_DINOV3_RE = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_DINOV3_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp.down_proj": "mlp.fc2"}


def _dinov3(sd: dict[str, torch.Tensor], config: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    gated = bool(getattr(config, "use_gated_mlp", False))
    for key, value in sd.items():
        if key == "embeddings.mask_token":
            continue  # masked-image modelling only
        if key in ("embeddings.cls_token", "embeddings.register_tokens"):
            ours[f"vit.{key}"] = value
            continue
        if key.startswith("embeddings.patch_embeddings."):
            ours[f"vit.embeddings.patch_embeddings.projection.{key.rsplit('.', 1)[1]}"] = value
            continue
        if key.startswith("norm."):
            ours[f"vit.layernorm.{key.rsplit('.', 1)[1]}"] = value
            continue
        match = _DINOV3_RE.match(key)
        if match is None:
            unknown.append(key)
            continue
        index, module, kind = match.groups()
        if module == "mlp.up_proj" and gated:
            continue  # packed with gate_proj below
        if module == "mlp.gate_proj":
            up = sd[key.replace("mlp.gate_proj", "mlp.up_proj")]
            ours[f"vit.layers.{index}.mlp.fc1.{kind}"] = torch.cat((value, up), dim=0)
            continue
        module = "mlp.fc1" if module == "mlp.up_proj" else _DINOV3_BLOCK.get(module, module)
        ours[f"vit.layers.{index}.{module}.{kind}"] = value
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of a transformers DINOv3: {sorted(unknown)[:8]}.")
    qkv_bias = any(getattr(config, name, True) for name in ("query_bias", "key_bias", "value_bias"))
    # Our attention has one bias flag for q, k and v, and biases on its output and MLP: the ones transformers' config
    # leaves out are zeros here (the same outputs).
    layers = int(config.num_hidden_layers)
    needed = {"attention.o_proj": config.hidden_size, "mlp.fc2": config.hidden_size}
    if qkv_bias:
        needed.update({f"attention.{n}_proj": config.hidden_size for n in "qkv"})
    needed["mlp.fc1"] = config.intermediate_size * (2 if gated else 1)
    for index in range(layers):
        for module, width in needed.items():
            key = f"vit.layers.{index}.{module}.bias"
            if key not in ours:
                ours[key] = torch.zeros(width)
    fields = {
        "position_embedding_type": "rope",
        "rope_theta": float(config.rope_theta),
        "image_size": config.image_size,
        "num_register_tokens": int(config.num_register_tokens),
        "layer_scale_init_value": float(config.layerscale_value),
        "mlp_type": "swiglu" if gated else "mlp",
        "intermediate_size": int(config.intermediate_size),
        "qkv_bias": qkv_bias,
        "pooling": "cls",
    }
    return ours, fields


def _clip(sd: dict[str, torch.Tensor], config: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in _CLIP_TOP:
            ours[_CLIP_TOP[key]] = value
        elif key == "embeddings.class_embedding":
            ours["vit.embeddings.cls_token"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            ours["vit.embeddings.position_embeddings"] = value.unsqueeze(0)
        elif key.startswith("head.attention.in_proj_"):
            kind = "weight" if key.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                ours[f"vit.attention_pool.{name}.{kind}"] = part.contiguous()
        elif key == "embeddings.position_ids":
            continue
        else:
            match = _CLIP_RE.match(key)
            if match is None or match[2] not in _CLIP_BLOCK:
                unknown.append(key)
                continue
            ours[f"vit.layers.{match[1]}.{_CLIP_BLOCK[match[2]]}.{match[3]}"] = value
    if unknown:
        raise CheckpointError(f"{source}: keys that are not part of a transformers CLIP/SigLIP: {sorted(unknown)[:8]}.")
    use_cls = "vit.embeddings.cls_token" in ours
    pool = "map" if "vit.attention_pool.probe" in ours else "cls"
    if not use_cls and pool != "map":
        raise CheckpointError(f"{source}: a SigLIP vision tower without its attention-pooling head (vision_use_head).")
    fields = {
        "use_cls_token": use_cls,
        "patch_embedding_bias": "vit.embeddings.patch_embeddings.projection.bias" in ours,
        "pre_norm": "vit.pre_layernorm.weight" in ours,
        "pooling": pool,
    }
    return ours, fields


__all__ = ["PREPROCESSING", "SUPPORTED", "UNSUPPORTED", "default_processor", "detect", "read", "to_checkpoint"]

"""transformers' own ViT families (directories written by `save_pretrained`): `Dinov2Model`,
`Dinov2WithRegistersModel` (and their `...ForImageClassification`), `CLIPVisionModel`, `SiglipVisionModel`,
`Siglip2VisionModel` (at one fixed resolution) and `ViTMAEModel`: detect, read into our names; and write from our
names (`write`: the family class that computes the same model, or a refusal naming the class and what differs; a
SigLIP2 read at a fixed resolution is SigLIP's architecture and writes as `SiglipVisionModel`).

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
- SigLIP2 (`Siglip2VisionModel`): SigLIP's names. Its processor cuts the image into patches, each flattened in
  (row, column, channel) order, for a Linear patch embedding: that weight, `(hidden, p * p * C)`, is our convolution's
  `(hidden, C, p, p)` with its input axes reordered. Its square position table is resized at run time to each image's
  patch grid (bilinear, `align_corners=False`, antialiased); ours is resized once, the same way, to the grid of the
  `image_size` the model is built at (by default the table's own grid: `sqrt(num_patches) * patch_size`).
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
import transformers

from .files import read_json
from .source_weights import Checkpoint, CheckpointError
from .transformers_vit import rename_state_dict

# model_type -> (what it is, its pooling for our classifier: each family's own linear head)
SUPPORTED = {
    "dinov2": ("DINOv2", "cls_mean"),
    "dinov2_with_registers": ("DINOv2 with registers", "cls_mean"),
    "clip_vision_model": ("CLIP's vision tower", "cls"),
    "siglip_vision_model": ("SigLIP's vision tower", "map"),
    "siglip2_vision_model": ("SigLIP2's vision tower (at a fixed resolution)", "map"),
    "vit_mae": ("MAE", "cls"),
    "dinov3_vit": ("DINOv3", "cls"),
}
UNSUPPORTED = {
    "aimv2_vision_model": "AIMv2 (RMSNorm, SwiGLU)",
    "aimv2": "AIMv2 (RMSNorm, SwiGLU)",
    "clip": "a whole CLIP model (image and text); save its CLIPVisionModel",
    "siglip": "a whole SigLIP model (image and text); save its SiglipVisionModel",
    "siglip2": "a whole SigLIP2 model (image and text); save its Siglip2VisionModel",
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
    "siglip2_vision_model": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
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

    settings = PREPROCESSING.get(read_json(Path(folder) / "config.json").get("model_type"))
    return dict(settings) if settings is not None else None


def whole_image_processor(settings: dict[str, Any]) -> dict[str, Any]:
    """A source directory's image processor settings as our models take images: SigLIP2's processor (any of its
    backends) cuts images into flattened patches for its Linear patch embedding, where ours takes the whole image at
    the model's size, so only its normalisation is kept (written as a resizing `ViTImageProcessor`)."""
    if str(settings.get("image_processor_type", "")).startswith("Siglip2ImageProcessor"):
        return {key: list(settings[key]) for key in ("image_mean", "image_std")}
    return settings


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a directory's `config.json` is one of transformers' ViT families (loadable or refused by name)."""
    if config is None:
        return False
    model_type = config.get("model_type")
    return model_type in SUPPORTED or model_type in UNSUPPORTED


def read(path: str | os.PathLike, progress: Any = None, lazy: bool = False) -> Checkpoint:
    """A transformers family directory as a `Checkpoint`, read by transformers itself."""

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
    elif model_type == "siglip2_vision_model":
        ours, fields = _clip(_siglip2_patches(body, config), config, source)
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
        # As each family resizes its table at run time: its interpolate_pos_encoding (bicubic; DINOv2 with registers
        # antialiases), or SigLIP2's resize to every image's grid (bilinear, antialiased).
        resample_mode="bilinear" if model_type == "siglip2_vision_model" else "bicubic",
        resample_antialias=model_type in ("dinov2_with_registers", "siglip2_vision_model"),
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
            if value.numel():  # transformers keeps an empty register table when there are none
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


def _siglip2_patches(sd: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """SigLIP2's Linear patch embedding as the convolution of ours: its inputs are a patch's pixels in
    (row, column, channel) order, as its image processor flattens them."""
    sd = dict(sd)
    key = "embeddings.patch_embedding.weight"
    patch, channels = int(config.patch_size), int(config.num_channels)
    if key in sd:  # without it, `_clip` names what is missing
        sd[key] = sd[key].reshape(-1, patch, patch, channels).permute(0, 3, 1, 2).contiguous()
    return sd


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


# ---------------------------------------------------------------------------------------------------------------------
# Writing: one of our models as the transformers family class that computes the same outputs, by the inverse of the
# renaming above. Each family class fixes parts of its architecture that are options of ours; a model whose options
# differ from its family's is refused, naming them, rather than written as another model.

_EXPORT_CLASSES = {
    # model_type -> (config class, bare model class, classifier class or None)
    "dinov2": ("Dinov2Config", "Dinov2Model", "Dinov2ForImageClassification"),
    "dinov2_with_registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersModel",
        "Dinov2WithRegistersForImageClassification",
    ),
    "dinov3_vit": ("DINOv3ViTConfig", "DINOv3ViTModel", None),
    "clip_vision_model": ("CLIPVisionConfig", "CLIPVisionModel", None),
    "siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel", None),
    # MAE pre-training (`ViTAccelForPreTraining`): transformers' whole model, or its encoder alone
    "vit_mae": ("ViTMAEConfig", "ViTMAEModel", "ViTMAEForPreTraining"),
}
_MAE_MODEL_TYPE = "vit_accel_mae"  # ViTAccelMAEConfig's
# Why a family's classifier cannot be written: transformers' class for it reads other features than ours.
_HEAD_REFUSALS = {
    "dinov3_vit": "transformers has no DINOv3 image-classification class",
    "clip_vision_model": "transformers' CLIPForImageClassification averages the patch tokens before the final "
    "LayerNorm, where ours reads the CLS token after it",
    "siglip_vision_model": "transformers' SiglipForImageClassification averages the tokens and ignores the "
    "attention-pooling (MAP) head that ours reads",
}
# What each family fixes (field -> value its transformers class has), beyond the checks of `export_family`.
_FIXED = {
    "dinov2": {
        "use_cls_token": True,
        "pre_norm": False,
        "patch_embedding_bias": True,
        "num_register_tokens": 0,
        "prefix_position_embeddings": True,
        "position_embedding_type": "learned",
    },
    "dinov2_with_registers": {
        "use_cls_token": True,
        "pre_norm": False,
        "patch_embedding_bias": True,
        "prefix_position_embeddings": False,
        "position_embedding_type": "learned",
    },
    "dinov3_vit": {"use_cls_token": True, "pre_norm": False, "patch_embedding_bias": True},
    "clip_vision_model": {
        "use_cls_token": True,
        "pre_norm": True,
        "patch_embedding_bias": False,
        "num_register_tokens": 0,
        "prefix_position_embeddings": True,
        "layer_scale_init_value": None,
        "mlp_type": "mlp",
        "qkv_bias": True,
        "position_embedding_type": "learned",
    },
    "siglip_vision_model": {
        "use_cls_token": False,
        "pre_norm": False,
        "patch_embedding_bias": True,
        "num_register_tokens": 0,
        "layer_scale_init_value": None,
        "mlp_type": "mlp",
        "qkv_bias": True,
        "position_embedding_type": "learned",
        "pooling": "map",
    },
}


def export_family(config: Any) -> str | None:
    """The transformers family (its `model_type`) of one of our configurations, or None for Google's ViT (which
    `transformers_vit` writes). Refuses, naming the options, a configuration that no transformers family class has."""

    def option(name: str, default: Any) -> Any:
        return getattr(config, name, default)

    if getattr(config, "model_type", None) == _MAE_MODEL_TYPE:
        from .timm_families import family_options

        if family_options(config):
            raise CheckpointError(
                f"transformers' ViTMAEForPreTraining is Google's ViT with MAE's decoder; it has no "
                f"{', '.join(family_options(config))}."
            )
        return "vit_mae"
    if option("pooling", "cls") == "mean":
        raise CheckpointError(
            "pooling='mean' (the patch mean behind fc_norm, MAE's fine-tuning) is in no transformers class (its ViT, "
            "ViTMAE and DINO classes end in a LayerNorm on every token); export --to timm instead."
        )
    if option("position_embedding_type", "learned") == "rope":
        family = "dinov3_vit"
    elif not option("use_cls_token", True):
        family = "siglip_vision_model"
    elif option("pre_norm", False):
        family = "clip_vision_model"
    elif option("num_register_tokens", 0):
        family = "dinov2_with_registers"
    elif (
        option("layer_scale_init_value", None) is not None
        or option("mlp_type", "mlp") != "mlp"
        or option("pooling", "cls") == "cls_mean"
        or not option("prefix_position_embeddings", True)
    ):
        family = "dinov2"
    else:
        return None
    wrong = [
        f"{name}={option(name, value)!r}" for name, value in _FIXED[family].items() if option(name, value) != value
    ]
    if family in ("dinov2", "dinov2_with_registers") and config.pooling not in ("cls", "cls_mean"):
        wrong.append(f"pooling={config.pooling!r}")
    if family == "dinov3_vit" and config.pooling not in ("cls", "cls_mean"):
        wrong.append(f"pooling={config.pooling!r}")
    if config.representation_size is not None:
        wrong.append(f"representation_size={config.representation_size!r}")
    if family in ("dinov2", "dinov2_with_registers") and config.mlp_type == "swiglu" and config.hidden_act != "silu":
        wrong.append(f"hidden_act={config.hidden_act!r} with mlp_type='swiglu' (transformers' DINOv2 gates with silu)")
    if wrong:
        what = SUPPORTED[family][0]
        raise CheckpointError(
            f"transformers' {what} class ({_EXPORT_CLASSES[family][1]}) has no {', '.join(wrong)}: it would compute "
            "another model; export --to timm instead."
        )
    return family


def export_class(config: Any, backbone_only: bool = False) -> str:
    """The transformers class `write` would write for one of our configurations (refusing as `write` does)."""
    family = export_family(config)
    if family is None:  # its directory is also `ViTModel`'s: transformers reads the backbone of a classifier
        return "ViTForImageClassification"
    _, bare, classifier = _EXPORT_CLASSES[family]
    if family == "vit_mae":  # the pre-training model, whose `noise` decides the same mask in both
        return bare if backbone_only else classifier
    if backbone_only or config.num_labels == 0:
        return bare
    if classifier is None:
        raise CheckpointError(
            f"{_HEAD_REFUSALS[family]}, so it would change this classifier's outputs; export "
            f"the backbone only (--backbone-only: {bare}) or --to timm instead."
        )
    if config.pooling != "cls_mean":
        raise CheckpointError(
            f"transformers' {classifier} reads the CLS token and the patch mean (pooling='cls_mean'), not "
            f"pooling={config.pooling!r}, so it would change this classifier's outputs; export the backbone only "
            f"(--backbone-only: {bare}) or --to timm instead."
        )
    return classifier


def _mlp_ratio(hidden: int, width: int, swiglu: bool) -> int:
    """DINOv2's `mlp_ratio` (a whole number in transformers' config) that gives an MLP `width` wide: transformers
    derives the width from it (SwiGLU: two thirds of `hidden * mlp_ratio`, rounded up to a multiple of 8)."""
    for ratio in range(1, 65):
        built = hidden * ratio
        if swiglu:
            built = (int(built * 2 / 3) + 7) // 8 * 8
        if built == width:
            return ratio
    raise CheckpointError(
        f"transformers' DINOv2 derives its MLP width from a whole mlp_ratio and cannot build "
        f"intermediate_size={width} at hidden_size={hidden}{' with SwiGLU' if swiglu else ''}; export --to timm "
        "instead."
    )


def _family_config(family: str, config: Any, architecture: str) -> Any:
    common = {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "initializer_range": config.initializer_range,
        "architectures": [architecture],
    }
    labels = {
        "num_labels": config.num_labels,
        "id2label": dict(config.id2label),
        "label2id": dict(config.label2id),
        "problem_type": config.problem_type,
    }
    layer_scale = config.layer_scale_init_value if config.layer_scale_init_value is not None else 1.0
    if family in ("dinov2", "dinov2_with_registers"):
        swiglu = config.mlp_type == "swiglu"
        fields = {
            **common,
            **labels,
            "mlp_ratio": _mlp_ratio(config.hidden_size, config.intermediate_size, swiglu),
            "use_swiglu_ffn": swiglu,
            "qkv_bias": config.qkv_bias,
            "layerscale_value": layer_scale,
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
            "drop_path_rate": config.drop_path_rate,
        }
        if family == "dinov2_with_registers":
            fields["num_register_tokens"] = config.num_register_tokens
    elif family == "dinov3_vit":
        fields = {
            **common,
            "intermediate_size": config.intermediate_size,
            "rope_theta": config.rope_theta,
            "num_register_tokens": config.num_register_tokens,
            "layerscale_value": layer_scale,
            "use_gated_mlp": config.mlp_type == "swiglu",
            "query_bias": config.qkv_bias,
            "value_bias": config.qkv_bias,
            "key_bias": config.qkv_bias,  # set from the weights in `write`: transformers' DINOv3 drops a zero key bias
            "attention_dropout": config.attention_probs_dropout_prob,
            "drop_path_rate": config.drop_path_rate,
        }
    elif family == "vit_mae":
        fields = {
            **common,
            "intermediate_size": config.intermediate_size,
            "qkv_bias": config.qkv_bias,
            "hidden_dropout_prob": config.hidden_dropout_prob,
            "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
            "decoder_hidden_size": config.decoder_hidden_size,
            "decoder_num_hidden_layers": config.decoder_num_hidden_layers,
            "decoder_num_attention_heads": config.decoder_num_attention_heads,
            "decoder_intermediate_size": config.decoder_intermediate_size,
            "mask_ratio": config.mask_ratio,
            "norm_pix_loss": config.norm_pix_loss,
        }
    else:  # CLIP's and SigLIP's vision towers
        fields = {
            **common,
            "intermediate_size": config.intermediate_size,
            "attention_dropout": config.attention_probs_dropout_prob,
        }
        if family == "siglip_vision_model":
            fields["vision_use_head"] = True
    config_class, _, _ = _EXPORT_CLASSES[family]
    return getattr(transformers, config_class)(**fields)


def _from_ours(family: str, sd: Mapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Our backbone state dict (`vit.*`) under the family's in-memory names, without its base-model prefix."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith("vit."):
            continue
        key = key[4:]
        block = re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias|lambda1)$", key)
        if family in ("dinov2", "dinov2_with_registers"):
            if block is None:
                out[key] = value
                continue
            index, module, kind = block.groups()
            module = {"layernorm_before": "norm1", "layernorm_after": "norm2"}.get(module, module)
            if config.mlp_type == "swiglu" and module in ("mlp.fc1", "mlp.fc2"):
                if module == "mlp.fc2":
                    out[f"encoder.layer.{index}.mlp.down_proj.{kind}"] = value
                else:
                    gate, up = value.chunk(2, dim=0)
                    out[f"encoder.layer.{index}.mlp.gate_proj.{kind}"] = gate.contiguous()
                    out[f"encoder.layer.{index}.mlp.up_proj.{kind}"] = up.contiguous()
                continue
            out[f"encoder.layer.{index}.{module}.{kind}"] = value
        elif family == "dinov3_vit":
            if block is None:
                name = {
                    "embeddings.patch_embeddings.projection.weight": "embeddings.patch_embeddings.weight",
                    "embeddings.patch_embeddings.projection.bias": "embeddings.patch_embeddings.bias",
                    "layernorm.weight": "norm.weight",
                    "layernorm.bias": "norm.bias",
                }.get(key, key)
                out[name] = value
                continue
            index, module, kind = block.groups()
            module = {"layernorm_before": "norm1", "layernorm_after": "norm2", "mlp.fc2": "mlp.down_proj"}.get(
                module, module
            )
            if module == "mlp.fc1":
                if config.mlp_type == "swiglu":
                    gate, up = value.chunk(2, dim=0)
                    out[f"model.layer.{index}.mlp.gate_proj.{kind}"] = gate.contiguous()
                    out[f"model.layer.{index}.mlp.up_proj.{kind}"] = up.contiguous()
                    continue
                module = "mlp.up_proj"
            out[f"model.layer.{index}.{module}.{kind}"] = value
        else:  # CLIP and SigLIP
            clip_top = {ours[4:]: theirs for theirs, ours in _CLIP_TOP.items()}
            clip_block = {ours: theirs for theirs, ours in _CLIP_BLOCK.items()}
            if key in clip_top:
                out[clip_top[key]] = value
            elif key == "embeddings.cls_token":
                out["embeddings.class_embedding"] = value.reshape(-1)
            elif key == "embeddings.position_embeddings":
                out["embeddings.position_embedding.weight"] = value[0]
            elif key.startswith("attention_pool.") and key.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                kind = key.rsplit(".", 1)[1]
                if key.split(".")[1] == "q_proj":
                    parts = [sd[f"vit.attention_pool.{name}.{kind}"] for name in ("q_proj", "k_proj", "v_proj")]
                    out[f"head.attention.in_proj_{kind}"] = torch.cat(parts, dim=0)
            elif block is not None and block[2] in clip_block:
                out[f"encoder.layers.{block[1]}.{clip_block[block[2]]}.{block[3]}"] = value
            else:
                out[key] = value  # named by the strict load below
    return out


def write(model: torch.nn.Module, out_dir: str | os.PathLike, backbone_only: bool = False) -> Path:
    """Write one of our models (a classifier, or with `backbone_only` / `num_labels=0` its backbone) as the
    transformers family class that computes its outputs (`export_class`), by transformers' own `save_pretrained`:
    the directory loads with that class's `from_pretrained`, without vit_accel.

    Registers' CLS position (DINOv2 with registers) is written as a zero row before the patches' table, LayerScale
    absent from ours as ones, and the zero key bias of a DINOv3 dropped where transformers' `key_bias=False` has none.
    """

    config = model.config
    family = export_family(config)
    if family is None:
        from .transformers_vit import write as write_vit

        return write_vit(model, out_dir)
    # A bare ViTAccelModel (or a classifier without a head) is a backbone whatever its labels say.
    backbone_only = backbone_only or not hasattr(model, "vit")
    architecture = export_class(config, backbone_only)
    if family == "vit_mae":
        return _write_mae(model, config, architecture, Path(out_dir))
    state_dict = {
        (key if key.startswith(("vit.", "classifier.")) else f"vit.{key}"): value
        for key, value in model.state_dict().items()
    }
    state_dict = {
        key: value.detach().to("cpu", torch.float32) if value.is_floating_point() else value
        for key, value in state_dict.items()
    }
    body = _from_ours(family, state_dict, config)
    family_config = _family_config(family, config, architecture)
    if family == "dinov3_vit" and config.qkv_bias:
        keys = [body[f"model.layer.{i}.attention.k_proj.bias"] for i in range(config.num_hidden_layers)]
        family_config.key_bias = any(bool(bias.any()) for bias in keys)
        if not family_config.key_bias:
            for index in range(config.num_hidden_layers):
                del body[f"model.layer.{index}.attention.k_proj.bias"]
    if family == "dinov2_with_registers":
        # The CLS token's position is folded into the token (see `_dinov2`): its own position row is zero.
        table = body["embeddings.position_embeddings"]
        body["embeddings.position_embeddings"] = torch.cat((torch.zeros_like(table[:, :1]), table), dim=1)
    with torch.device("meta"):
        target = getattr(transformers, architecture)(family_config)
    prefix = "" if architecture == _EXPORT_CLASSES[family][1] else f"{target.base_model_prefix}."
    wanted = target.state_dict()
    theirs = {f"{prefix}{key}": value for key, value in body.items()}
    if architecture != _EXPORT_CLASSES[family][1]:
        theirs.update({key: value for key, value in state_dict.items() if key.startswith("classifier.")})
    for key, value in wanted.items():
        if key not in theirs and (key.endswith("layer_scale1.lambda1") or key.endswith("layer_scale2.lambda1")):
            theirs[key] = torch.ones(value.shape)  # no LayerScale of ours: the identity
        elif key not in theirs and key.endswith(("mask_token", "register_tokens")):
            theirs[key] = torch.zeros(value.shape)  # masked-image modelling only; or no registers
    target.load_state_dict(theirs, strict=True, assign=True)
    out_dir = Path(out_dir)
    target.save_pretrained(out_dir)
    return out_dir


def _write_mae(model: torch.nn.Module, config: Any, architecture: str, out_dir: Path) -> Path:
    """`ViTAccelForPreTraining` as transformers' `ViTMAEForPreTraining` (the same names in memory), or its encoder as
    `ViTMAEModel` (the names under `vit.`)."""
    state_dict = {key: value.detach().to("cpu") for key, value in model.state_dict().items()}
    if architecture == "ViTMAEModel":
        state_dict = {key[4:]: value for key, value in state_dict.items() if key.startswith("vit.")}
    with torch.device("meta"):
        target = getattr(transformers, architecture)(_family_config("vit_mae", config, architecture))
    target.load_state_dict(state_dict, strict=True, assign=True)
    target.save_pretrained(out_dir)
    return out_dir


__all__ = [
    "PREPROCESSING",
    "SUPPORTED",
    "UNSUPPORTED",
    "default_processor",
    "detect",
    "export_class",
    "export_family",
    "read",
    "to_checkpoint",
    "whole_image_processor",
    "write",
]

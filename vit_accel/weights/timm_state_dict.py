"""timm `VisionTransformer` state dicts (`.pth`, `.bin`, `.safetensors`; timm's Hub layout of `config.json` +
`model.safetensors`): detect, read into our names, write from our names.

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

import json
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from ..configuration_vit_accel import VIT_SIZES
from .files import read_json, read_tensors, save_safetensors
from .source_weights import Checkpoint, CheckpointError

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


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether these tensor names (or a directory's `config.json`, timm's Hub layout) are a timm ViT's."""
    if config is not None and "architecture" in config and "model_type" not in config:
        return True
    return "blocks.0.attn.qkv.weight" in set(names)


def read(path: str | os.PathLike, progress: Any = None, lazy: bool = False) -> Checkpoint:
    """A timm state dict file, or a directory in timm's Hub layout (`config.json` with `architecture`, and
    `model.safetensors` or `pytorch_model.bin`); the directory's `label_names`, when given, name the head's classes."""
    path = Path(path)
    if not path.is_dir():
        return to_checkpoint(read_tensors(path), str(path))
    config = read_json(path / "config.json")
    names = ("model.safetensors", "pytorch_model.bin")
    weights = next((path / name for name in names if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: a timm directory without model.safetensors or pytorch_model.bin.")
    checkpoint = to_checkpoint(read_tensors(weights), str(path))
    apply_config(checkpoint, config, path / "config.json")
    return checkpoint


# timm's registered plain ViTs, `vit_{size}_patch{N}_...`: the size names timm's own widths, depths and heads.
_ARCHITECTURE_RE = re.compile(r"^vit_(?P<size>tiny|small|base|large|huge)_patch\d+")


def apply_config(checkpoint: Checkpoint, config: Mapping[str, Any], config_file: str | os.PathLike) -> None:
    """What timm's `config.json` says beyond the tensors: the head's `label_names`, and the attention heads, from
    `model_args.num_heads` (what `vit-accel export --to timm` and `timm.create_model(**model_args)` use) or from a
    registered architecture name (`vit_base_patch16_224`: 12). Nothing is guessed: a config that says neither leaves
    the heads unknown, for the caller to be asked."""

    labels = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if labels:
        checkpoint.config["id2label"] = dict(enumerate(labels))
    model_args = config.get("model_args") or {}
    width = int(checkpoint.state_dict["vit.embeddings.patch_embeddings.projection.weight"].shape[0])
    if model_args.get("embed_dim") not in (None, width):
        raise CheckpointError(
            f"{config_file}: model_args.embed_dim is {model_args['embed_dim']}, but the weights beside it are "
            f"{width} wide: this config.json describes another model."
        )
    for key in ("act_layer", "norm_layer"):
        if model_args.get(key) is not None:
            raise CheckpointError(
                f"{config_file}: model_args.{key}={model_args[key]!r}; only timm's default (GELU, LayerNorm with "
                "eps 1e-6) is read, so drop it or convert the model in timm first."
            )
    heads = model_args.get("num_heads")
    named = _ARCHITECTURE_RE.match(str(config.get("architecture", "")))
    if heads is None and named and VIT_SIZES[named["size"]][0] == width:
        heads = VIT_SIZES[named["size"]][2]
    if heads:
        checkpoint.num_attention_heads = int(heads)


# timm's registered plain ViTs (`timm.list_models("vit_*")`), by our size names: `config.json`'s `architecture` names
# the one of the model's size, patch and resolution, so that `timm.create_model("local-dir:...")` finds a model
# function; `model_args` carry the real shape, which overrides that function's defaults.
TIMM_VIT_NAMES: tuple[str, ...] = (
    "vit_tiny_patch16_224", "vit_tiny_patch16_384",
    "vit_small_patch8_224", "vit_small_patch16_224", "vit_small_patch16_384", "vit_small_patch32_224",
    "vit_small_patch32_384",
    "vit_base_patch8_224", "vit_base_patch16_224", "vit_base_patch16_384", "vit_base_patch32_224",
    "vit_base_patch32_384",
    "vit_large_patch14_224", "vit_large_patch16_224", "vit_large_patch16_384", "vit_large_patch32_224",
    "vit_large_patch32_384",
    "vit_huge_patch14_224",
)  # fmt: skip
_TIMM_FALLBACK = "vit_base_patch16_224"
# timm's names for the activations our config takes.
_TIMM_ACTIVATIONS = {"gelu": None, "gelu_pytorch_tanh": "gelu_tanh"}


def timm_architecture(config: Any) -> str:
    """The registered timm ViT that matches the model's size, patch and resolution (the nearest for other shapes)."""
    # Deferred: the configuration module imports torch; a timm export alone needs its sizes.
    from ..configuration_vit_accel import VIT_SIZES

    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    size = next((name for name, dims in VIT_SIZES.items() if dims == shape), None)
    image = config.image_size if isinstance(config.image_size, int) else max(config.image_size)
    patch = config.patch_size if isinstance(config.patch_size, int) else max(config.patch_size)
    candidates = [n for n in TIMM_VIT_NAMES if size is None or n.startswith(f"vit_{size}_")]
    exact = f"vit_{size}_patch{patch}_{image}"
    if exact in candidates:
        return exact
    same_patch = [n for n in candidates if f"_patch{patch}_" in n]
    return (same_patch or candidates or [_TIMM_FALLBACK])[0] if size is not None else _TIMM_FALLBACK


def write(model: torch.nn.Module, out_dir: str | os.PathLike, preprocessing: Mapping[str, Any] | None = None) -> Path:
    """Write a `ViTAccelForImageClassification` in timm's Hub layout, as timm's `save_for_hf` does: `model.safetensors`
    under timm's names and a `config.json` with the registered `architecture`, `num_classes`, `label_names`,
    `model_args` and a `pretrained_cfg` that timm's data config reads (input size, mean/std, interpolation, crop).

    `preprocessing` is the source's `preprocessor_config.json`: its mean/std go into `pretrained_cfg`, with the
    resize-to-square that `vit-accel predict` does (timm's `crop_mode="squash"` at `crop_pct=1.0`, bilinear)."""

    config = model.config
    if config.representation_size is not None:
        raise CheckpointError("timm's VisionTransformer has no pre_logits layer; export without representation_size.")
    if config.hidden_act not in _TIMM_ACTIVATIONS:
        raise CheckpointError(f"timm export: hidden_act {config.hidden_act!r} has no timm equivalent.")
    if abs(config.layer_norm_eps - 1e-6) > 1e-12:
        raise CheckpointError(f"timm export: timm's ViT uses LayerNorm eps 1e-6, this model {config.layer_norm_eps}.")
    height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
    model_args = {
        "img_size": [height, width],
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "qkv_bias": config.qkv_bias,
        "num_classes": config.num_labels,
        "global_pool": "token",
    }
    if _TIMM_ACTIVATIONS[config.hidden_act] is not None:
        model_args["act_layer"] = _TIMM_ACTIVATIONS[config.hidden_act]
    tensors = from_ours(model.state_dict())
    return write_hub_layout(out_dir, tensors, config, timm_architecture(config), model_args, "token", preprocessing)


def write_hub_layout(
    out_dir: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    config: Any,
    architecture: str,
    model_args: Mapping[str, Any],
    global_pool: str,
    preprocessing: Mapping[str, Any] | None = None,
) -> Path:
    """`tensors` (under timm's names) as `model.safetensors` and the `config.json` timm's `save_for_hf` writes: the
    registered `architecture`, `num_classes`, `label_names`, `model_args` and a `pretrained_cfg` that timm's data
    config reads (input size, mean/std from `preprocessing`, the resize to the square size that `vit-accel predict`
    does: `crop_mode="squash"` at `crop_pct=1.0`, bilinear). One writer for every ViT family timm has."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(dict(tensors), out_dir / "model.safetensors", {"format": "pt"})
    height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
    pretrained_cfg: dict[str, Any] = {
        "custom_load": False,
        "input_size": [config.num_channels, height, width],
        "fixed_input_size": True,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    if preprocessing and preprocessing.get("image_mean") and preprocessing.get("image_std"):
        pretrained_cfg["mean"] = list(preprocessing["image_mean"])
        pretrained_cfg["std"] = list(preprocessing["image_std"])
    pretrained_cfg.update(
        {"num_classes": config.num_labels, "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head"}
    )
    meta = {
        "architecture": architecture,
        "num_classes": config.num_labels,
        "num_features": config.hidden_size,
        "global_pool": global_pool,
        "label_names": [config.id2label[i] for i in range(config.num_labels)],
        "model_args": dict(model_args),
        "pretrained_cfg": pretrained_cfg,
    }
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def to_checkpoint(state_dict: Mapping[str, torch.Tensor], source: str = "timm") -> Checkpoint:
    """Convert a timm ViT state dict to a `Checkpoint` under our names (fused qkv split into q, k, v)."""
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _FIXED:
            ours[_FIXED[key]] = value
            continue
        renamed = rename_block(key, value, source)
        if renamed is None:
            unknown.append(key)
        else:
            ours.update(renamed)
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


def rename_block(
    key: str, value: torch.Tensor, source: str = "timm", prefix: str = "vit.layers."
) -> dict[str, torch.Tensor] | None:
    """One tensor of a timm block (`blocks.{i}.*`) under our names, rooted at `prefix` (the fused qkv split into
    q, k, v); None for a key that is not part of a plain ViT block."""
    match = _BLOCK_RE.match(key)
    if match is None:
        return None
    index, module, kind = match.groups()
    root = f"{prefix}{index}."
    if module == "attn.qkv":
        if value.shape[0] % 3:
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(value.shape)}, not 3 x width rows.")
        parts = zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0))
        return {f"{root}attention.{name}.{kind}": part.contiguous() for name, part in parts}
    if module in _BLOCK:
        return {f"{root}{_BLOCK[module]}.{kind}": value}
    return None


def from_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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

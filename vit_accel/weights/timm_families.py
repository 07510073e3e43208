"""timm `VisionTransformer` families beyond Google's ViT, in timm's Hub layout (`config.json` + weights, as
`timm.models.save_for_hf` writes them): DINOv2 (with registers), DeiT III, CLIP (OpenAI's QuickGELU too), SigLIP,
and average pooling with `fc_norm` (MAE's fine-tuning): detect, read into our names, write from our names.

Key map (timm -> ours), on top of `timm_state_dict`'s:

| timm | ours |
|---|---|
| `reg_token` | `vit.embeddings.register_tokens` |
| `norm_pre` | `vit.pre_layernorm` |
| `blocks.{i}.ls1.gamma` / `ls2.gamma` | `vit.layers.{i}.layer_scale1.lambda1` / `layer_scale2.lambda1` |
| `fc_norm` | `vit.fc_norm` |
| `attn_pool.latent` | `vit.attention_pool.probe` |
| `attn_pool.q` / `kv` (fused, k then v) / `proj` | `vit.attention_pool.q_proj` / `k_proj`, `v_proj` / `o_proj` |
| `attn_pool.norm` / `mlp.fc1` / `mlp.fc2` | `vit.attention_pool.layernorm` / `feed_forward.fc1` / `feed_forward.fc2` |

The weights tell most of the architecture (which of these parts exist, the width of a packed SwiGLU, whether the
position table covers the prefix tokens); what they cannot tell (the activation, the LayerNorm epsilon) timm fixes
per model name, so it is read from `config.json`'s `architecture` (and `model_args`, which override it). A bare state
dict of a family has neither, and is refused.

DINOv3 (`vit_*_dinov3`, `vit_*_dinov3_qkvb`) is a model of timm's `Eva` class, read and written by the `dinov3_`
functions below: `reg_token`, `patch_embed.proj`, `blocks.{i}.gamma_1`/`gamma_2` (LayerScale), `norm1`/`norm2`,
`attn.qkv` (fused; `attn.q_bias` and `attn.v_bias` in the `_qkvb` models, whose key bias is a zero buffer),
`attn.proj`, `mlp.fc1`/`fc2`, `norm`, `head`; no position table (2-D RoPE, `position_embedding_type="rope"`). The
other models of timm that are not a `VisionTransformer` (EVA, EVA-02, AIMv2, NaFlex ViT) are refused by name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from . import timm_state_dict
from .files import read_json, read_tensors
from .source_weights import Checkpoint, CheckpointError

_TOP = {
    "reg_token": "vit.embeddings.register_tokens",
    "norm_pre.weight": "vit.pre_layernorm.weight",
    "norm_pre.bias": "vit.pre_layernorm.bias",
    "fc_norm.weight": "vit.fc_norm.weight",
    "fc_norm.bias": "vit.fc_norm.bias",
    "attn_pool.latent": "vit.attention_pool.probe",
    "attn_pool.q.weight": "vit.attention_pool.q_proj.weight",
    "attn_pool.q.bias": "vit.attention_pool.q_proj.bias",
    "attn_pool.proj.weight": "vit.attention_pool.o_proj.weight",
    "attn_pool.proj.bias": "vit.attention_pool.o_proj.bias",
    "attn_pool.norm.weight": "vit.attention_pool.layernorm.weight",
    "attn_pool.norm.bias": "vit.attention_pool.layernorm.bias",
    "attn_pool.mlp.fc1.weight": "vit.attention_pool.feed_forward.fc1.weight",
    "attn_pool.mlp.fc1.bias": "vit.attention_pool.feed_forward.fc1.bias",
    "attn_pool.mlp.fc2.weight": "vit.attention_pool.feed_forward.fc2.weight",
    "attn_pool.mlp.fc2.bias": "vit.attention_pool.feed_forward.fc2.bias",
}
_KV = ("attn_pool.kv.weight", "attn_pool.kv.bias")
_LAYER_SCALE_RE = re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$")
_OUR_LAYER_SCALE_RE = re.compile(r"^vit\.layers\.(\d+)\.layer_scale([12])\.lambda1$")
_OUR_BLOCK_RE = re.compile(r"^vit\.layers\.(\d+)\.(.+)$")
# Keys that only a family has: one of them in a timm state dict makes it a family's.
_FAMILY_MARKERS = ("reg_token", "norm_pre.weight", "fc_norm.weight", "attn_pool.latent", "blocks.0.ls1.gamma")

# timm models that are not a `VisionTransformer` (or whose blocks differ), by their model name: refused, named.
UNSUPPORTED = (
    (re.compile(r"^eva02_"), "EVA-02 (SwiGLU with an inner norm and 2-D RoPE)"),
    (re.compile(r"^eva_"), "EVA (timm's Eva)"),
    (re.compile(r"^aimv2_"), "AIMv2 (RMSNorm, SwiGLU, no biases)"),
    (re.compile(r"^naflexvit_"), "NaFlex ViT (variable-resolution SigLIP2)"),
)
# The same families in a bare state dict, by a key only they have (checked before the families above).
_UNSUPPORTED_KEYS = (
    (
        "gamma_1",
        "a ViT of timm's Eva class (DINOv3 or EVA: LayerScale as gamma_1, RoPE) without the config.json that says "
        "which (save DINOv3 with timm.models.save_for_hf and pass that directory; EVA vit_accel cannot load yet)",
    ),
    ("q_bias", "a ViT of timm's Eva class (EVA or EVA-02: separate q and v biases, RoPE)"),
    ("fc1_g", "a ViT with a split SwiGLU MLP (EVA-02 or AIMv2)"),
    ("embeds.pos_embed", "a NaFlex ViT (variable-resolution SigLIP2)"),
)
# What timm fixes per model name that the weights do not show. The first match wins.
_FAMILIES: tuple[tuple[re.Pattern, str, dict[str, Any]], ...] = (
    (re.compile(r"^deit3_"), "DeiT III", {"layer_scale_init_value": 1e-6}),
    (re.compile(r"_reg\d+_dinov2$"), "DINOv2 with registers", {"layer_scale_init_value": 1e-5}),
    (re.compile(r"_dinov2$"), "DINOv2", {"layer_scale_init_value": 1e-5}),
    (re.compile(r"_clip_quickgelu_"), "CLIP (QuickGELU)", {"layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}),
    (re.compile(r"_clip_"), "CLIP", {"layer_norm_eps": 1e-5}),
    # SigLIP2's models (and a few SigLIP ones) use GELU's tanh approximation, the rest exact GELU.
    (
        re.compile(r"^vit_(base_patch32|giantopt_patch16|so400m_patch16)_siglip_|^vit_large_patch16_siglip_(gap_)?512"),
        "SigLIP",
        {"hidden_act": "gelu_pytorch_tanh"},
    ),
    (re.compile(r"_siglip_"), "SigLIP", {}),
)
# timm's activation names (`act_layer` in `model_args`) as transformers' ACT2FN names.
_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu", "silu": "silu"}
_ACTIVATION_NAMES = {ours: theirs for theirs, ours in _ACTIVATIONS.items()}


# DINOv3 in timm's Eva: the model names, and what their functions fix (model_args override them).
_DINOV3_RE = re.compile(r"_dinov3(_qkvb)?$")
_DINOV3_DEFAULTS = {"layer_norm_eps": 1e-5, "rope_temperature": 100.0, "init_values": 1e-5}
_EVA_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_EVA_BLOCK = {
    "gamma_1": "layer_scale1.lambda1",
    "gamma_2": "layer_scale2.lambda1",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "attn.q_bias": "attention.q_proj.bias",
    "attn.v_bias": "attention.v_proj.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_EVA_TOP = {
    "cls_token": "vit.embeddings.cls_token",
    "reg_token": "vit.embeddings.register_tokens",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}


def is_dinov3(architecture: str) -> bool:
    """Whether a timm model name is DINOv3's (timm's Eva class with DINOv3's RoPE)."""
    return _DINOV3_RE.search(architecture) is not None


def unsupported_family(architecture: str) -> str | None:
    """What a timm model name is, when it is a family this package cannot load; else None."""
    return next((what for pattern, what in UNSUPPORTED if pattern.search(architecture)), None)


def family_name(architecture: str) -> str:
    return next((what for pattern, what, _ in _FAMILIES if pattern.search(architecture)), "ViT")


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a timm directory's `config.json` names a family (or a pooling other than the CLS token), or these
    tensor names hold a family's parts."""
    if config is not None:
        if "architecture" not in config or "model_type" in config:
            return False
        architecture = str(config["architecture"])
        pool = config.get("global_pool", (config.get("model_args") or {}).get("global_pool", "token"))
        return (
            unsupported_family(architecture) is not None
            or is_dinov3(architecture)
            or any(pattern.search(architecture) for pattern, _, _ in _FAMILIES)
            or pool not in ("token", "", None)
        )
    keys = set(names)
    if "blocks.0.attn.qkv.weight" not in keys:
        return False
    return any(marker in keys for marker in _FAMILY_MARKERS) or _unsupported_keys(keys) is not None


def _unsupported_keys(keys: Collection[str]) -> str | None:
    return next((what for part, what in _UNSUPPORTED_KEYS if any(part in key for key in keys)), None)


def read(path: str | os.PathLike, progress: Any = None, lazy: bool = False) -> Checkpoint:
    """A timm family's directory in timm's Hub layout as a `Checkpoint`; a bare state dict file is refused."""

    path = Path(path)
    if not path.is_dir():
        what = _unsupported_keys(set(read_tensors(path)))
        if what is not None:
            raise CheckpointError(f"{path}: {what}, a family vit_accel cannot load yet.")
        raise CheckpointError(
            f"{path}: a timm state dict of a ViT family (its keys include "
            f"{sorted(set(read_tensors(path)) & set(_FAMILY_MARKERS))}), without the config.json that says which "
            "model it is (activation, LayerNorm epsilon, heads); save it with timm.models.save_for_hf and pass that "
            "directory."
        )
    config = read_json(path / "config.json")
    architecture = str(config["architecture"])
    what = unsupported_family(architecture)
    if what is not None:
        raise CheckpointError(
            f"{path}: timm's {architecture!r} is {what}, a family vit_accel cannot load yet (timm families it loads: "
            f"{', '.join(dict.fromkeys(name for _, name, _ in _FAMILIES))}, DINOv3, and average pooling with "
            "fc_norm)."
        )
    names = ("model.safetensors", "pytorch_model.bin")
    weights = next((path / name for name in names if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: a timm directory without model.safetensors or pytorch_model.bin.")
    model_args = config.get("model_args") or {}
    pool = config.get("global_pool", model_args.get("global_pool", "token"))
    convert = dinov3_to_checkpoint if is_dinov3(architecture) else to_checkpoint
    checkpoint = convert(read_tensors(weights), architecture, model_args, pool, str(path))
    if is_dinov3(architecture):
        # No position table to tell the resolution: the model's own (`model_args`), else its pretrained config's.
        size = model_args.get("img_size") or ((config.get("pretrained_cfg") or {}).get("input_size") or [224])[-1]
        checkpoint.config["image_size"] = size
    labels = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if labels:
        checkpoint.config["id2label"] = dict(enumerate(labels))
    if model_args.get("num_heads"):
        checkpoint.num_attention_heads = int(model_args["num_heads"])
    return checkpoint


def to_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    architecture: str,
    model_args: Mapping[str, Any],
    global_pool: str | None,
    source: str,
) -> Checkpoint:
    """A timm family's state dict, with the facts its model name and `model_args` fix, as a `Checkpoint`."""
    ours: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _LAYER_SCALE_RE.match(key)
        if key in _TOP:
            ours[_TOP[key]] = value
        elif key in _KV:
            kind = key.rsplit(".", 1)[1]
            key_part, value_part = value.chunk(2, dim=0)
            ours[f"vit.attention_pool.k_proj.{kind}"] = key_part.contiguous()
            ours[f"vit.attention_pool.v_proj.{kind}"] = value_part.contiguous()
        elif match is not None:
            ours[f"vit.layers.{match[1]}.layer_scale{match[2]}.lambda1"] = value
        else:
            rest[key] = value
    has_cls = "cls_token" in rest
    if not has_cls:  # timm's plain converter requires the CLS token; a model without one (SigLIP) lends it none
        rest["cls_token"] = torch.zeros(1, 1, 1)
    base = timm_state_dict.to_checkpoint(rest, source)
    if not has_cls:
        del base.state_dict["vit.embeddings.cls_token"]
    ours.update(base.state_dict)

    fields: dict[str, Any] = {"layer_norm_eps": 1e-6, "hidden_act": "gelu"}
    facts = next((facts for pattern, _, facts in _FAMILIES if pattern.search(architecture)), {})
    fields.update(facts)
    fields.update(_shape_fields(ours, global_pool, source))
    if fields["layer_scale_init_value"] is not None:
        # Where training starts, which the trained scales replace: the model name's value, or model_args'.
        fields["layer_scale_init_value"] = float(
            model_args.get("init_values") or facts.get("layer_scale_init_value") or 1e-5
        )
    act = model_args.get("act_layer")
    if isinstance(act, str):
        if act not in _ACTIVATIONS:
            raise CheckpointError(f"{source}: model_args act_layer {act!r} is not one of {', '.join(_ACTIVATIONS)}.")
        fields["hidden_act"] = _ACTIVATIONS[act]
    if fields["mlp_type"] == "swiglu":
        fields["hidden_act"] = "silu"  # timm's SwiGLUPacked gates with SiLU
    return Checkpoint(
        state_dict=ours,
        source=source,
        format="timm",
        resample_mode="bicubic",  # timm's checkpoint_filter_fn: bicubic with antialias
        resample_antialias=True,
        config=fields,
    )


def dinov3_to_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    architecture: str,
    model_args: Mapping[str, Any],
    global_pool: str | None,
    source: str,
) -> Checkpoint:
    """timm's DINOv3 (an `Eva` with DINOv3's RoPE) as a `Checkpoint` of ours with `position_embedding_type="rope"`.

    Its linear head reads the CLS token (DINOv3's); timm's default `global_pool="avg"` averages the normalised
    patch tokens without `fc_norm`, a pooling vit_accel does not have: refused with a trained head, and without one
    (a backbone) the model gets DINOv3's CLS pooling.
    """
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        match = _EVA_BLOCK_RE.match(key)
        if key in _EVA_TOP:
            ours[_EVA_TOP[key]] = value
        elif match is not None and match[2] == "attn.qkv.weight":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                ours[f"vit.layers.{match[1]}.attention.{name}.weight"] = part.contiguous()
        elif match is not None and match[2] in _EVA_BLOCK:
            ours[f"vit.layers.{match[1]}.{_EVA_BLOCK[match[2]]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source}: parts of timm's {architecture!r} that vit_accel's DINOv3 does not have (SwiGLU, an inner "
            f"attention norm, q/k norms): {sorted(unknown)[:6]}."
        )
    if "vit.layers.0.attention.q_proj.bias" in ours:
        # DINOv3 has no key bias (timm keeps a zero buffer); ours starts at zero, the same attention.
        for key in [k for k in ours if k.endswith(".attention.q_proj.bias")]:
            ours[key.replace(".q_proj.", ".k_proj.")] = torch.zeros_like(ours[key])
    pool = global_pool or "token"
    if pool not in ("token", "avg"):
        raise CheckpointError(f"{source}: timm's DINOv3 with global_pool={pool!r} is not a pooling vit_accel has.")
    if pool == "avg" and "classifier.weight" in ours:
        raise CheckpointError(
            f"{source}: timm's DINOv3 with a head on global_pool='avg' (the mean of the normalised patch tokens, no "
            "fc_norm) is not a pooling vit_accel has; DINOv3's own head reads the CLS token (global_pool='token')."
        )
    registers = int(ours["vit.embeddings.register_tokens"].shape[1]) if "vit.embeddings.register_tokens" in ours else 0
    fields: dict[str, Any] = {
        "position_embedding_type": "rope",
        "rope_theta": float(model_args.get("rope_temperature") or _DINOV3_DEFAULTS["rope_temperature"]),
        "layer_norm_eps": _DINOV3_DEFAULTS["layer_norm_eps"],
        "hidden_act": "gelu",
        "use_cls_token": "vit.embeddings.cls_token" in ours,
        "num_register_tokens": registers,
        "patch_embedding_bias": "vit.embeddings.patch_embeddings.projection.bias" in ours,
        "layer_scale_init_value": (
            float(model_args.get("init_values") or _DINOV3_DEFAULTS["init_values"])
            if "vit.layers.0.layer_scale1.lambda1" in ours
            else None
        ),
        "intermediate_size": int(ours["vit.layers.0.mlp.fc2.weight"].shape[1]),
        "pooling": "cls",
    }
    if isinstance(model_args.get("norm_layer"), str) or model_args.get("act_layer") not in (None, "gelu"):
        raise CheckpointError(f"{source}: model_args norm_layer/act_layer of timm's DINOv3 are not read by vit_accel.")
    return Checkpoint(state_dict=ours, source=source, format="timm", config=fields)


def dinov3_write(
    model: torch.nn.Module, out_dir: str | os.PathLike, preprocessing: Mapping[str, Any] | None = None
) -> Path:
    """Write our DINOv3 (`position_embedding_type="rope"`) as timm's `vit_base_patch16_dinov3` (or `_qkvb`), in
    timm's Hub layout; `model_args` give the sizes."""

    config = model.config
    problems = []
    if config.pooling != "cls" or not config.use_cls_token:
        problems.append(f"pooling={config.pooling!r} (timm's DINOv3 head reads the CLS token)")
    if config.mlp_type != "mlp" or config.hidden_act != "gelu":
        problems.append(f"mlp_type={config.mlp_type!r}, hidden_act={config.hidden_act!r} (it has a GELU MLP)")
    if config.layer_norm_eps != 1e-5 or config.pre_norm or not config.patch_embedding_bias:
        problems.append("layer_norm_eps other than 1e-5, pre_norm or no patch-embedding bias")
    state_dict = model.state_dict()
    key_biases = [key for key in state_dict if key.endswith(".attention.k_proj.bias")]
    if any(bool(state_dict[key].any()) for key in key_biases):
        problems.append("a non-zero key bias (timm's DINOv3 has none)")
    if problems:
        raise CheckpointError(f"export to timm's DINOv3 cannot write {'; '.join(problems)}.")
    top = {ours: theirs for theirs, ours in _EVA_TOP.items()}
    block = {ours: theirs for theirs, ours in _EVA_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _OUR_BLOCK_RE.match(key)
        if key in top:
            out[top[key]] = value
        elif match is not None and match[2] == "attention.q_proj.weight":
            parts = [
                state_dict[f"vit.layers.{match[1]}.attention.{name}.weight"] for name in ("q_proj", "k_proj", "v_proj")
            ]
            out[f"blocks.{match[1]}.attn.qkv.weight"] = torch.cat(parts, dim=0)
        elif match is not None and match[2] in block:
            out[f"blocks.{match[1]}.{block[match[2]]}"] = value
        elif match is None or match[2] not in (
            "attention.k_proj.weight",
            "attention.v_proj.weight",
            "attention.k_proj.bias",
        ):
            raise CheckpointError(f"export to timm's DINOv3: no timm name for {key!r}.")
    architecture = "vit_base_patch16_dinov3_qkvb" if config.qkv_bias else "vit_base_patch16_dinov3"
    model_args = {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "num_reg_tokens": config.num_register_tokens,
        "init_values": config.layer_scale_init_value,
        "rope_temperature": config.rope_theta,
        "global_pool": "token",
        "num_classes": config.num_labels,
    }
    return timm_state_dict.write_hub_layout(out_dir, out, config, architecture, model_args, "token", preprocessing)


def _shape_fields(sd: Mapping[str, torch.Tensor], global_pool: str | None, source: str) -> dict[str, Any]:
    """The family fields that the converted tensors show."""
    use_cls = "vit.embeddings.cls_token" in sd
    registers = int(sd["vit.embeddings.register_tokens"].shape[1]) if "vit.embeddings.register_tokens" in sd else 0
    patches = int(sd["vit.embeddings.position_embeddings"].shape[1])
    grid = patches - int(use_cls) - registers
    # A square grid with no room for the prefix means positions on the patches only (timm's no_embed_class).
    prefix_positions = not (registers + use_cls and _is_square(patches) and not _is_square(grid))
    fc1, fc2 = sd["vit.layers.0.mlp.fc1.weight"], sd["vit.layers.0.mlp.fc2.weight"]
    swiglu = fc1.shape[0] == 2 * fc2.shape[1]
    if "vit.attention_pool.probe" in sd:
        pooling = "map"
    elif "vit.fc_norm.weight" in sd:
        pooling = "mean"
    elif global_pool in ("token", "", None):
        pooling = "cls"
    else:
        raise CheckpointError(
            f"{source}: timm's global_pool={global_pool!r} without fc_norm is not a pooling vit_accel has "
            "(it has the CLS token, the patch mean with fc_norm, and attention pooling)."
        )
    if pooling == "mean" and "vit.layernorm.weight" in sd:
        raise CheckpointError(f"{source}: both a final norm and fc_norm; vit_accel's mean pooling has fc_norm alone.")
    scales = [key for key in sd if key.endswith(".layer_scale1.lambda1")]
    return {
        "use_cls_token": use_cls,
        "num_register_tokens": registers,
        "prefix_position_embeddings": bool(prefix_positions),
        "patch_embedding_bias": "vit.embeddings.patch_embeddings.projection.bias" in sd,
        "pre_norm": "vit.pre_layernorm.weight" in sd,
        "layer_scale_init_value": 1.0 if scales else None,  # the value comes from the model name (to_checkpoint)
        "mlp_type": "swiglu" if swiglu else "mlp",
        "intermediate_size": int(fc2.shape[1]),
        "pooling": pooling,
    }


def _is_square(number: int) -> bool:
    return number >= 0 and math.isqrt(number) ** 2 == number


def family_options(config: Any) -> list[str]:
    """The family options (as `field=value`) in which one of our configurations differs from Google's ViT."""
    defaults = {
        "use_cls_token": True,
        "num_register_tokens": 0,
        "prefix_position_embeddings": True,
        "patch_embedding_bias": True,
        "pre_norm": False,
        "layer_scale_init_value": None,
        "mlp_type": "mlp",
        "pooling": "cls",
        "position_embedding_type": "learned",
    }
    return [
        f"{key}={getattr(config, key)!r}" for key, value in defaults.items() if getattr(config, key, value) != value
    ]


def is_family(config: Any) -> bool:
    """Whether one of our configurations uses any family option (else `timm_state_dict` writes it)."""
    return bool(family_options(config))


def architecture_for(config: Any) -> str:
    """A timm model name whose fixed settings (LayerNorm epsilon) are this configuration's; `model_args` give the
    rest. Refuses what timm's `VisionTransformer` cannot rebuild."""
    if config.pooling == "cls_mean":
        raise CheckpointError(
            "timm's VisionTransformer has no CLS + patch-mean pooling (DINOv2's linear head); export with another "
            "pooling."
        )
    if config.mlp_type == "swiglu":
        raise CheckpointError("export of a SwiGLU model to timm is not supported yet (timm builds it by model name).")
    if config.hidden_act not in _ACTIVATION_NAMES:
        raise CheckpointError(f"timm has no activation for hidden_act={config.hidden_act!r}.")
    if config.pre_norm == config.patch_embedding_bias:
        raise CheckpointError("timm's VisionTransformer has a patch-embedding bias exactly when it has no pre_norm.")
    if config.layer_norm_eps == 1e-5:
        return "vit_base_patch16_clip_224"  # timm's CLIP models: LayerNorm eps 1e-5
    if config.layer_norm_eps == 1e-6:
        return "vit_base_patch16_224"
    raise CheckpointError(
        f"timm's VisionTransformer models have LayerNorm eps 1e-6 or 1e-5, not {config.layer_norm_eps}."
    )


def write(model: torch.nn.Module, out_dir: str | os.PathLike, preprocessing: Mapping[str, Any] | None = None) -> Path:
    """Write a family's `ViTAccelForImageClassification` in timm's Hub layout: `model.safetensors` under timm's
    names and a `config.json` whose `architecture` and `model_args` rebuild it with `timm.create_model`."""

    config = model.config
    if getattr(config, "position_embedding_type", "learned") == "rope":
        return dinov3_write(model, out_dir, preprocessing)
    architecture = architecture_for(config)
    state_dict = model.state_dict()
    theirs = {theirs: ours for theirs, ours in _TOP.items()}
    reverse = {ours: key for key, ours in theirs.items()}
    out: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _OUR_LAYER_SCALE_RE.match(key)
        if key in reverse:
            out[reverse[key]] = value
        elif key.startswith("vit.attention_pool.") and key.split(".")[2] in ("k_proj", "v_proj"):
            if key.split(".")[2] == "k_proj":
                kind = key.rsplit(".", 1)[1]
                other = state_dict[f"vit.attention_pool.v_proj.{kind}"]
                out[f"attn_pool.kv.{kind}"] = torch.cat((value, other), dim=0)
        elif match is not None:
            out[f"blocks.{match[1]}.ls{match[2]}.gamma"] = value
        else:
            rest[key] = value
    out.update(timm_state_dict.from_ours(rest))
    pool = {"cls": "token", "mean": "avg", "map": "map"}[config.pooling]
    model_args = {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.intermediate_size * (2 if config.mlp_type == "swiglu" else 1) / config.hidden_size,
        "qkv_bias": config.qkv_bias,
        "class_token": config.use_cls_token,
        "reg_tokens": config.num_register_tokens,
        "no_embed_class": not config.prefix_position_embeddings,
        "pre_norm": config.pre_norm,
        "init_values": config.layer_scale_init_value,
        "global_pool": pool,
        "fc_norm": config.pooling == "mean",
        "act_layer": _ACTIVATION_NAMES[config.hidden_act],
        "num_classes": config.num_labels,
    }
    return timm_state_dict.write_hub_layout(out_dir, out, config, architecture, model_args, pool, preprocessing)


__all__ = [
    "UNSUPPORTED",
    "detect",
    "dinov3_to_checkpoint",
    "dinov3_write",
    "family_options",
    "is_dinov3",
    "is_family",
    "read",
    "to_checkpoint",
    "unsupported_family",
    "write",
]

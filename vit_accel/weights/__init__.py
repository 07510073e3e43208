"""Pretrained weights for ViTAccel: named variants, Google npz, timm and transformers checkpoints, detected by content.

    ViTAccelForImageClassification.from_pretrained("vit-base-p16-384", num_labels=100)

Importing this module (vit_accel does) installs `resolve` as `ViTAccelPreTrainedModel._checkpoint_resolver`, so the
usual `from_pretrained` also accepts:

- a named variant (`vit-base-p16-224`, `vit-large-p32-384`, ...): Google's 224-px ImageNet-21k file is downloaded once
  into the HF cache, converted to safetensors, and the position embeddings resampled to the variant's grid;
- a Google `.npz` (vit_jax / AugReg / big_vision, `opt/target/` and `params/` prefixes, scanned or not);
- a timm state dict (`.pth`, `.bin`, `.safetensors`; fused `qkv`);
- a transformers ViT directory or Hub id (`google/vit-base-patch16-224-in21k`), legacy or v5 names;
- a safetensors file under our names.

A directory (or Hub repo) of ours goes down transformers' standard path. Nothing is ever unpickled: npz files are read
with `allow_pickle=False`, torch files with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..configuration_vit_accel import VIT_VARIANTS, ViTAccelConfig
from ..modeling_vit_accel import ViTAccelPreTrainedModel
from . import download, google
from . import timm as timm_format
from . import transformers as hf_format
from .core import (
    HEAD_INITS,
    Checkpoint,
    CheckpointError,
    ProgressFn,
    adapt_state_dict,
    build_config,
    load_into,
    save_safetensors,
)
from .download import WeightsDownloadError

ACCEPTED = (
    "a named variant (" + ", ".join(VIT_VARIANTS[:2]) + ", ...), a Google .npz, a timm state dict (.pth/.bin/"
    ".safetensors), a transformers ViT directory or Hub id, a safetensors file or directory of ViTAccel"
)
_ZIP = b"PK\x03\x04"


# ---------------------------------------------------------------------------------------------------------------------
# reading


def sniff(path: str | os.PathLike) -> str:
    """The format of a file from its first bytes and structure: "npz", "torch", "safetensors" or "pickle"."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(_ZIP):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:
            raise CheckpointError(f"{path}: starts like a zip file but is not a valid one ({error}).") from error
        if names and all(name.endswith(".npy") for name in names):
            return "npz"
        if any(name.endswith("data.pkl") for name in names):
            return "torch"
        raise CheckpointError(
            f"{path}: a zip file that is neither an npz nor a torch checkpoint. Accepted: {ACCEPTED}."
        )
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if head[8:9] == b"{" and 0 < header_len < 100_000_000 and header_len + 8 <= path.stat().st_size:
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+ (also torch's legacy, non-zip format)
        return "pickle"
    raise CheckpointError(f"{path}: unknown checkpoint format (first bytes {head[:8]!r}). Accepted: {ACCEPTED}.")


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file (memory-mapped) or a torch file read with `weights_only=True`."""
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if kind in ("torch", "pickle"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "torch")
        except Exception as error:  # torch raises UnpicklingError/RuntimeError for anything beyond plain tensors
            raise CheckpointError(
                f"{path}: refusing to unpickle: this file holds Python objects beyond tensors and plain containers "
                f"(torch.load(weights_only=True) said: {str(error).splitlines()[0]}). Convert it to safetensors or a "
                "plain state dict where it was made."
            ) from error
        return timm_format.unwrap(obj, str(path))
    raise CheckpointError(f"{path}: an {kind} file, not a tensor file.")


def _checkpoint_from_tensors(tensors: dict[str, torch.Tensor], source: str) -> Checkpoint:
    keys = set(tensors)
    if timm_format.is_timm_state_dict(keys):
        return timm_format.timm_to_state_dict(tensors, source)
    if any(key.startswith("vit.layers.") for key in keys) and "vit.embeddings.cls_token" in keys:
        return Checkpoint(state_dict=tensors, source=source, format="vit_accel")
    if hf_format.is_transformers_state_dict(keys):
        return hf_format.transformers_to_checkpoint(tensors, None, source)
    raise CheckpointError(
        f"{source}: tensors with unrecognised names (e.g. {sorted(keys)[:4]}): not a ViT from timm, transformers or "
        f"ViTAccel. Accepted: {ACCEPTED}."
    )


def read_checkpoint(source: str | os.PathLike, progress: ProgressFn | None = None, lazy: bool = False) -> Checkpoint:
    """A local file or directory, whatever its format, as a `Checkpoint` under our names."""
    path = Path(source)
    if path.is_dir():
        config_file = path / "config.json"
        model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
        if model_type == "vit":
            return hf_format.load_transformers_dir(path, read_tensors)
        if model_type == "vit_accel":
            fields = json.loads(config_file.read_text())
            checkpoint = _checkpoint_from_tensors(read_tensors(path / "model.safetensors"), str(path))
            checkpoint.num_attention_heads = fields.get("num_attention_heads")
            return checkpoint
        raise CheckpointError(
            f"{path}: a directory without a config.json of model_type 'vit' or 'vit_accel' (found {model_type!r}). "
            f"Accepted: {ACCEPTED}."
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory. Accepted: {ACCEPTED}.")
    kind = sniff(path)
    if kind == "npz":
        return google.load_npz(path, progress=progress, lazy=lazy)
    if kind == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        tensors = read_tensors(path)
        if "vit_accel_source_format" in meta:  # one of our cached conversions
            return Checkpoint.from_metadata(tensors, str(path), meta)
        return _checkpoint_from_tensors(tensors, str(path))
    return _checkpoint_from_tensors(read_tensors(path), str(path))


def named_checkpoint(
    variant: str, weights: str | None = None, progress: ProgressFn | None = None, quiet: bool = False
) -> Checkpoint:
    """The 21k checkpoint a named variant starts from: downloaded and converted once, then read from the cache."""
    relative = download.weight_file(variant, weights)
    name = Path(relative).name
    cached = download.cache_dir() / (Path(name).stem + ".safetensors")
    if not cached.is_file():
        npz = download.fetch(relative, verify=google.verify_npz, quiet=quiet)
        # Streamed: each array is read, converted and written in turn (peak memory about one array).
        checkpoint = google.load_npz(npz, progress=progress, lazy=True)
        checkpoint.source = download.base_url() + relative
        save_safetensors(checkpoint.state_dict, cached, checkpoint.metadata(), progress, checkpoint.materialize)
    return read_checkpoint(cached)


def _hub_checkpoint(repo_id: str, **hub_kwargs: Any) -> Checkpoint | None:
    """A transformers ViT repo on the Hub, or None when the repo is not one (or cannot be reached: the standard path
    then raises transformers' own error)."""
    try:
        from huggingface_hub import hf_hub_download

        config_file = hf_hub_download(repo_id, "config.json", **hub_kwargs)
    except Exception:
        return None
    vit_config = json.loads(Path(config_file).read_text())
    if vit_config.get("model_type") != "vit":
        return None
    for name in ("model.safetensors", "pytorch_model.bin"):
        try:
            weights = hf_hub_download(repo_id, name, **hub_kwargs)
        except Exception:
            continue
        return hf_format.transformers_to_checkpoint(read_tensors(weights), vit_config, repo_id)
    raise CheckpointError(f"{repo_id}: a transformers ViT repo without model.safetensors or pytorch_model.bin.")


def _is_ours_dir(path: Path) -> bool:
    config_file = path / "config.json"
    return config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "vit_accel"


# ---------------------------------------------------------------------------------------------------------------------
# building


def load_pretrained(cls: type, source: str | os.PathLike | Checkpoint, **kwargs: Any) -> torch.nn.Module:
    """Build `cls` (ViTAccelForImageClassification or ViTAccelModel) from any supported source.

    Keyword arguments are those of `_build`: variant, config, head_init, resample_mode, resample_antialias, weights,
    dtype, progress, quiet, and ViTAccelConfig fields.
    """
    model, _ = _build(cls, source, **kwargs)
    return model


def _build(
    cls: type,
    source: str | os.PathLike | Checkpoint,
    *,
    variant: str | None = None,
    config: ViTAccelConfig | None = None,
    head_init: str = "zeros",
    resample_mode: str | None = None,
    resample_antialias: bool | None = None,
    weights: str | None = None,
    dtype: torch.dtype | str | None = None,
    progress: ProgressFn | None = None,
    quiet: bool = False,
    lazy: bool = False,
    **overrides: Any,
) -> tuple[torch.nn.Module, Checkpoint]:
    """The model and the checkpoint it was built from (with `lazy`, large npz tensors stay meta placeholders).

    Args:
        source: a named variant, a local file or directory, a Hub id of a transformers ViT, or a `Checkpoint`.
        variant: for a file, the named variant it must fit (otherwise the shape of the file decides).
        config: a full ViTAccelConfig to build instead.
        head_init: a new head starts from `"zeros"` (Google's fine-tuning) or `"normal"` (transformers' truncated
            normal). The checkpoint's head is kept only when `num_labels` equals its classes (e.g. 21843).
        resample_mode / resample_antialias: override how position embeddings are resampled to a new grid (default:
            bilinear without antialias for Google npz, as Google and timm; bicubic for timm and transformers sources).
        weights: for a named variant, "orig" (the paper's 21k files) or "augreg".
        overrides: ViTAccelConfig fields (`num_labels`, `image_size`, `representation_size` to keep `pre_logits`,
            `id2label`, `drop_path_rate`, ...).
    """
    if isinstance(source, Checkpoint):
        checkpoint = source
    elif str(source) in VIT_VARIANTS:
        source = str(source)
        if variant is not None and variant != source:
            raise ValueError(f"variant={variant!r} contradicts the named source {source!r}.")
        checkpoint, variant = named_checkpoint(source, weights, progress, quiet), source
    elif Path(source).exists():
        checkpoint = read_checkpoint(source, progress, lazy=lazy)
    else:
        source = str(source)
        checkpoint = _hub_checkpoint(source)
        if checkpoint is None:
            raise CheckpointError(
                f"{source}: not found locally nor a transformers ViT on the Hub. Accepted: {ACCEPTED}."
            )
    built = build_config(checkpoint, variant=variant, config=config, **overrides)
    state_dict = adapt_state_dict(checkpoint, built, head_init, resample_mode, resample_antialias)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = load_into(cls, built, state_dict, checkpoint.source, dtype if isinstance(dtype, torch.dtype) else None)
    return model, checkpoint


# Keyword arguments of transformers' from_pretrained that mean nothing for a converted checkpoint (built on CPU, the
# head replaced whenever its shape does not fit, so `ignore_mismatched_sizes` is what happens anyway).
_IGNORED_KWARGS = (
    "cache_dir",
    "local_files_only",
    "revision",
    "token",
    "trust_remote_code",
    "device_map",
    "use_safetensors",
    "ignore_mismatched_sizes",
    "low_cpu_mem_usage",
    "attn_implementation",
    "force_download",
    "proxies",
    "weights_only",
    "_from_auto",
    "_from_pipeline",
)
_OUR_KWARGS = (
    "variant",
    "config",
    "head_init",
    "resample_mode",
    "resample_antialias",
    "weights",
    "dtype",
    "progress",
    "quiet",
)


def resolve(cls: type, source: Any, *model_args: Any, **kwargs: Any) -> torch.nn.Module | None:
    """The `from_pretrained` hook: build from a non-ViTAccel source, or None to let transformers' standard path run."""
    if model_args or not isinstance(source, (str, os.PathLike)):
        return None
    text = str(source)
    target: str | Checkpoint = text
    if text not in VIT_VARIANTS:
        path = Path(text)
        if path.is_dir() and _is_ours_dir(path):
            return None
        if not path.exists():
            hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if kwargs.get(k) is not None}
            hub = _hub_checkpoint(text, **hub_kwargs)
            if hub is None:
                return None  # a Hub repo of ours, or unreachable: transformers' own path and errors
            target = hub
    config_fields = set(ViTAccelConfig().to_dict()) | {"id2label", "label2id", "num_labels"}
    options: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _IGNORED_KWARGS:
            continue
        if key == "torch_dtype":
            key = "dtype"
        if key in _OUR_KWARGS or key in config_fields:
            options[key] = value
        else:
            raise TypeError(
                f"from_pretrained({text!r}) got an unexpected keyword {key!r}; it takes ViTAccelConfig fields and "
                f"{', '.join(_OUR_KWARGS)}."
            )
    if options.get("config") is not None and not isinstance(options["config"], ViTAccelConfig):
        return None
    return load_pretrained(cls, target, **options)


def convert(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: ProgressFn | None = None,
    write_progress: ProgressFn | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Convert any supported source to a ViTAccel directory (config.json + model.safetensors); returns the model.

    The weights are written by our streaming writer: `safetensors.torch.save_file` (and so `save_pretrained`) would
    first hold a second copy of every tensor as bytes, and the conversion is meant to peak near one checkpoint's size.
    """
    from ..modeling_vit_accel import ViTAccelForImageClassification

    # Planned lazily: large npz arrays are read one at a time while the output is written.
    model, checkpoint = _build(ViTAccelForImageClassification, source, progress=progress, lazy=True, **kwargs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["ViTAccelForImageClassification"]
    if getattr(model, "_auto_class", None) is not None:
        # As save_pretrained does: copy the model files next to the weights, so the directory also loads without
        # vit_accel through trust_remote_code.
        from transformers.dynamic_module_utils import custom_object_save

        custom_object_save(model, out_dir, config=model.config)
    model.config.save_pretrained(out_dir)
    save_safetensors(
        model.state_dict(), out_dir / "model.safetensors", {"format": "pt"}, write_progress, checkpoint.materialize
    )
    return model


def export(
    model_or_dir: torch.nn.Module | str | os.PathLike, out_dir: str | os.PathLike, to: str = "transformers"
) -> Path:
    """Write a ViTAccel model as a transformers `ViT` directory (`to="transformers"`) or timm weights (`"timm"`)."""
    from ..modeling_vit_accel import ViTAccelForImageClassification

    model = (
        model_or_dir
        if isinstance(model_or_dir, torch.nn.Module)
        else ViTAccelForImageClassification.from_pretrained(model_or_dir)
    )
    out_dir = Path(out_dir)
    if to == "transformers":
        return hf_format.export_transformers(model, out_dir)
    if to == "timm":
        config = model.config
        if config.representation_size is not None:
            raise CheckpointError(
                "timm's VisionTransformer has no pre_logits layer; export without representation_size."
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        save_safetensors(
            timm_format.state_dict_to_timm(model.state_dict()), out_dir / "model.safetensors", {"format": "pt"}
        )
        model_args = {
            "img_size": config.image_size,
            "patch_size": config.patch_size,
            "in_chans": config.num_channels,
            "embed_dim": config.hidden_size,
            "depth": config.num_hidden_layers,
            "num_heads": config.num_attention_heads,
            "mlp_ratio": config.intermediate_size / config.hidden_size,
            "qkv_bias": config.qkv_bias,
            "num_classes": config.num_labels,
        }
        meta = {
            "architecture": "vit",
            "model_args": model_args,
            "label_names": [config.id2label[i] for i in range(config.num_labels)],
        }
        (out_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return out_dir
    raise ValueError(f"export to must be 'transformers' or 'timm', got {to!r}.")


ViTAccelPreTrainedModel._checkpoint_resolver = resolve

__all__ = [
    "ACCEPTED",
    "HEAD_INITS",
    "Checkpoint",
    "CheckpointError",
    "WeightsDownloadError",
    "convert",
    "export",
    "load_pretrained",
    "read_checkpoint",
    "resolve",
    "save_safetensors",
    "sniff",
]

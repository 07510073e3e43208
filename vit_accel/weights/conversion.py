"""`convert` (any source to one of our directories) and `export` (one of our models to another ecosystem's files).

Both check their output before any work: an output that is an existing file, the source itself, or a directory that
already holds anything is refused in one line, so that nothing is lost. A directory that holds files is never written
into: replacing only the files a conversion writes would leave the rest (a model card, results, another format's
weights) describing another model, and emptying it would delete files this tool did not write.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import ViTImageProcessor

from ..configuration_vit_accel import ViTAccelConfig, ViTAccelMAEConfig
from ..errors import UserError
from ..formats import EXPORT_TARGETS
from ..modeling_vit_accel import ViTAccelForImageClassification, ViTAccelForPreTraining
from . import graph_export, mae, meta_dinov2, native, policy, timm_families, timm_state_dict, transformers_families
from .files import read_json
from .loading import split_keywords
from .source_weights import Checkpoint, CheckpointError, ProgressFn
from .sources import HubOptions, _hub_download, locate

PROCESSOR_FILE = "preprocessor_config.json"
GOOGLE_MEAN_STD = (0.5, 0.5, 0.5)


def check_output(out_dir: str | os.PathLike, source: Any, writes: tuple[str, ...]) -> Path:
    """`out_dir` as a Path, or one error if writing `writes` there would clobber a file, the source, or anything a
    non-empty directory holds."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is a file; the output must be a new or empty directory.")
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        source_path = Path(source).resolve()
        targets = {(out_dir / name).resolve() for name in writes}
        if out_dir.resolve() == source_path or source_path in targets:
            raise UserError(
                f"{out_dir}: is the source {source} itself; writing there would replace what is being read. "
                "Choose another output directory."
            )
    if out_dir.is_dir():
        held = sorted(path.name for path in out_dir.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise UserError(
                f"{out_dir}: not empty (it holds {shown}); writing there would replace or mix with those files. "
                "Choose a new directory, or empty this one first."
            )
    return out_dir


def convert(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: ProgressFn | None = None,
    write_progress: ProgressFn | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Convert any supported source to one of our directories (config.json + model.safetensors, and
    preprocessor_config.json where the source says how its images were prepared: see `source_processor`); returns
    the model.

    Keywords are those of the converting `from_pretrained` (see `loading`) but placement: the head rule, config
    fields, `variant`, `head_init`, `resample_mode`, `weights`, `dtype`, and where to fetch from. Large npz arrays are
    read one at a time while the output is written (peak memory about one array above the small ones).
    """

    out_dir = check_output(out_dir, source, ("config.json", "model.safetensors"))
    hub, placement, ours, fields = split_keywords(str(source), kwargs)
    dtype = placement.pop("dtype", None)
    if placement:
        raise UserError(f"convert writes files and places no model: {', '.join(placement)} does not apply.")
    checkpoint = locate(
        source, hub, weights=ours.pop("weights", None), progress=progress, quiet=ours.pop("quiet", False), lazy=True
    )
    ours.pop("progress", None)
    if mae.has_decoder(checkpoint):  # an MAE pre-training checkpoint: its encoder, with MAE's pooling
        options = {**ours, **fields}
        checkpoint = mae.encoder_checkpoint(ViTAccelForImageClassification, checkpoint, options)
        fields["pooling"] = options["pooling"]
    model, state_dict, _ = policy.plan(ViTAccelForImageClassification, checkpoint, **ours, **fields)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = policy.load_into(model, state_dict, dtype if isinstance(dtype, torch.dtype) else None)
    processor = source_processor(checkpoint, hub)  # a corrupt file of the source is named before anything is written
    native.write(model, out_dir, write_progress, checkpoint.materialize)
    if processor is not None:
        write_processor(processor, model.config.image_size, out_dir)
    return model


def source_processor(checkpoint: Checkpoint, hub: HubOptions | None = None) -> dict[str, Any] | None:
    """The image processor settings (`preprocessor_config.json`'s) that the source documents, or None where it does
    not say how its images were prepared (a bare timm or safetensors state dict)."""
    if checkpoint.format == "google-npz":
        # Google's ViTs (vit_jax, big_vision) take pixels scaled to [-1, 1], resized bilinearly.
        return {"image_mean": list(GOOGLE_MEAN_STD), "image_std": list(GOOGLE_MEAN_STD)}
    folder = Path(checkpoint.folder or checkpoint.source)
    if folder.is_dir() and (folder / PROCESSOR_FILE).is_file():
        return transformers_families.whole_image_processor(read_json(folder / PROCESSOR_FILE))
    if checkpoint.format in ("mae", meta_dinov2.FORMAT):  # both train (their files say nothing) on ImageNet's
        return dict(transformers_families.PREPROCESSING["vit_mae"])
    if folder.is_dir():
        if checkpoint.format == "timm":  # timm's Hub layout records its normalisation in `pretrained_cfg`
            cfg = read_json(folder / "config.json").get("pretrained_cfg") or {}
            if cfg.get("mean") and cfg.get("std"):
                return {"image_mean": list(cfg["mean"]), "image_std": list(cfg["std"])}
        if checkpoint.format == "transformers":  # a family saved without its processor: the family's own
            return transformers_families.default_processor(folder)
        return None
    if checkpoint.format == "transformers" and not folder.exists():  # a Hub repo id
        try:
            found = _hub_download(checkpoint.source, PROCESSOR_FILE, hub or HubOptions(), missing_ok=True)
        except CheckpointError:
            return None
        return transformers_families.whole_image_processor(read_json(found)) if found is not None else None
    return None


def write_processor(settings: dict[str, Any], image_size: Any, out_dir: Path) -> Path:
    """`preprocessor_config.json` in `out_dir`: the source's settings at the model's `image_size`.

    A source's own file is kept as it is but for its size (and crop size, where it crops); mean/std alone become a
    transformers `ViTImageProcessor` (resize to the model's size, rescale to [0, 1], normalise)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if "image_processor_type" not in settings:
        ViTImageProcessor(
            size={"height": height, "width": width},
            image_mean=settings["image_mean"],
            image_std=settings["image_std"],
        ).save_pretrained(out_dir)
        return out_dir / PROCESSOR_FILE
    settings = dict(settings)
    size = settings.get("size")
    if isinstance(size, dict) and "shortest_edge" in size and "height" not in size:
        settings["size"] = {**size, "shortest_edge": min(height, width)}
    else:
        settings["size"] = {"height": height, "width": width}
    if isinstance(settings.get("crop_size"), dict):
        settings["crop_size"] = {"height": height, "width": width}
    (out_dir / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return out_dir / PROCESSOR_FILE


def export(
    model_or_dir: torch.nn.Module | str | os.PathLike,
    out_dir: str | os.PathLike,
    to: str = "transformers",
    backbone_only: bool = False,
) -> Path:
    """Write a ViTAccel classifier for another ecosystem, into the directory `out_dir`:

    - `"transformers"`: transformers' own class for the model's family, written by transformers itself: Google's
      ViT as `ViTForImageClassification`, DINOv2 (with registers) as `Dinov2[WithRegisters]ForImageClassification`
      (or its `...Model` with `backbone_only`), DINOv3, CLIP and SigLIP as `DINOv3ViTModel`, `CLIPVisionModel` and
      `SiglipVisionModel` (their backbone only: transformers' classifiers of these read other features than ours,
      and are refused by name, as is what no transformers class computes; see `transformers_families.write`);
      MAE pre-training (`ViTAccelForPreTraining`) as `ViTMAEForPreTraining` (its encoder: `ViTMAEModel`);
    - `"timm"`: timm's Hub layout (`model.safetensors` under timm's names, `config.json` with the registered
      `architecture`, `num_classes`, `model_args`, `label_names` and `pretrained_cfg`), which
      `timm.create_model("local-dir:" + out_dir, pretrained=True)` opens;
    - `"onnx"`: `model.onnx` (+ `model.onnx.data`) from torch's ONNX exporter, dynamic batch;
    - `"exported-program"`: `model.pt2`, a `torch.export` ExportedProgram, dynamic batch.

    The source directory's image processor (`preprocessor_config.json`) goes along, and for the graph formats our
    `config.json` too (labels, image size), so that each output is usable on its own.
    """

    if to not in EXPORT_TARGETS:
        raise UserError(f"export to must be one of {', '.join(EXPORT_TARGETS)}, got {to!r}.")
    if backbone_only and to != "transformers":
        raise UserError(f"backbone_only applies to export to transformers, not to {to!r}.")
    writes = {
        "transformers": ("config.json", "model.safetensors"),
        "timm": ("config.json", "model.safetensors"),
        "onnx": (graph_export.ONNX_FILE, graph_export.ONNX_FILE + ".data", "config.json"),
        "exported-program": (graph_export.PROGRAM_FILE, "config.json"),
    }[to]
    source = None if isinstance(model_or_dir, torch.nn.Module) else model_or_dir
    out_dir = check_output(out_dir, source, (*writes, PROCESSOR_FILE))
    if to == "onnx":
        graph_export.require_onnx_exporter()  # before loading anything
    saved = Path(source) / "config.json" if source is not None else None
    saved_type = read_json(saved).get("model_type") if saved is not None and saved.is_file() else None
    pretraining = isinstance(model_or_dir, ViTAccelForPreTraining) or saved_type == ViTAccelMAEConfig.model_type
    if pretraining and to != "transformers":
        raise UserError(
            f"an MAE pre-training model (encoder and decoder) exports to transformers (ViTMAEForPreTraining), not to "
            f"{to!r}; to export its encoder, fine-tune it (from_pretrained with num_labels=) or convert it first."
        )
    model_class = ViTAccelForPreTraining if pretraining else ViTAccelForImageClassification
    if to == "transformers" and saved_type in (ViTAccelConfig.model_type, ViTAccelMAEConfig.model_type):
        # A family class that would compute another model is refused before the weights are read.
        transformers_families.export_class(model_class.config_class.from_pretrained(source), backbone_only)
    model = model_or_dir if source is None else model_class.from_pretrained(source)
    if to == "transformers":
        transformers_families.write(model, out_dir, backbone_only=backbone_only)
    elif to == "timm":
        processor = Path(source) / PROCESSOR_FILE if source is not None else None
        settings = read_json(processor) if processor is not None and processor.is_file() else None
        (timm_families if timm_families.is_family(model.config) else timm_state_dict).write(model, out_dir, settings)
    elif to == "onnx":
        graph_export.write_onnx(model, out_dir)
        model.config.save_pretrained(out_dir)
    else:
        graph_export.write_exported_program(model, out_dir)
        model.config.save_pretrained(out_dir)
    processor = Path(source) / PROCESSOR_FILE if source is not None else None
    if processor is not None and processor.is_file():
        # So that, e.g., `pipeline("image-classification", model=out_dir)` works on the transformers export as is.
        shutil.copy(processor, out_dir / PROCESSOR_FILE)
    return out_dir


__all__ = ["EXPORT_TARGETS", "check_output", "convert", "export", "source_processor", "write_processor"]

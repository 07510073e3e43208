"""`convert` (any source to one of our directories) and `export` (one of our models to another ecosystem's files).

Both check their output before any work: an output that is an existing file, or that is (or would overwrite) the
source itself, is refused in one line, so that nothing is lost.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from . import graph_export, native, policy, timm_state_dict, transformers_vit
from .checkpoint import ProgressFn
from .loading import split_keywords
from .sources import locate

EXPORT_TARGETS = ("transformers", "timm", "onnx", "exported-program")
PROCESSOR_FILE = "preprocessor_config.json"


def check_output(out_dir: str | os.PathLike, source: Any, writes: tuple[str, ...]) -> Path:
    """`out_dir` as a Path, or one error if writing `writes` there would clobber a file or the source."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is a file; the output must be a directory (new, or one to add to).")
    if isinstance(source, (str, os.PathLike)) and Path(source).exists():
        source_path = Path(source).resolve()
        targets = {(out_dir / name).resolve() for name in writes}
        if out_dir.resolve() == source_path or source_path in targets:
            raise UserError(
                f"{out_dir}: is the source {source} itself; writing there would replace what is being read. "
                "Choose another output directory."
            )
    return out_dir


def convert(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: ProgressFn | None = None,
    write_progress: ProgressFn | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Convert any supported source to one of our directories (config.json + model.safetensors); returns the model.

    Keywords are those of the converting `from_pretrained` (see `loading`) but placement: the head rule, config
    fields, `variant`, `head_init`, `resample_mode`, `weights`, `dtype`, and where to fetch from. Large npz arrays are
    read one at a time while the output is written (peak memory about one array above the small ones).
    """
    from ..modeling_vit_accel import ViTAccelForImageClassification

    out_dir = check_output(out_dir, source, ("config.json", "model.safetensors"))
    hub, placement, ours, fields = split_keywords(str(source), kwargs)
    dtype = placement.pop("dtype", None)
    if placement:
        raise UserError(f"convert writes files and places no model: {', '.join(placement)} does not apply.")
    checkpoint = locate(
        source, hub, weights=ours.pop("weights", None), progress=progress, quiet=ours.pop("quiet", False), lazy=True
    )
    ours.pop("progress", None)
    model, state_dict, _ = policy.plan(ViTAccelForImageClassification, checkpoint, **ours, **fields)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    model = policy.load_into(model, state_dict, dtype if isinstance(dtype, torch.dtype) else None)
    native.write(model, out_dir, write_progress, checkpoint.materialize)
    return model


def export(
    model_or_dir: torch.nn.Module | str | os.PathLike, out_dir: str | os.PathLike, to: str = "transformers"
) -> Path:
    """Write a ViTAccel classifier for another ecosystem, into the directory `out_dir`:

    - `"transformers"`: a transformers `ViT` directory (`model_type: vit`), written by transformers itself;
    - `"timm"`: timm's layout (`model.safetensors` under timm's names, `config.json` with `model_args`, `label_names`);
    - `"onnx"`: `model.onnx` (+ `model.onnx.data`) from torch's ONNX exporter, dynamic batch;
    - `"exported-program"`: `model.pt2`, a `torch.export` ExportedProgram, dynamic batch.

    The source directory's image processor (`preprocessor_config.json`) goes along, and for the graph formats our
    `config.json` too (labels, image size), so that each output is usable on its own.
    """
    from ..modeling_vit_accel import ViTAccelForImageClassification

    if to not in EXPORT_TARGETS:
        raise UserError(f"export to must be one of {', '.join(EXPORT_TARGETS)}, got {to!r}.")
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
    model = model_or_dir if source is None else ViTAccelForImageClassification.from_pretrained(source)
    if to == "transformers":
        transformers_vit.write(model, out_dir)
    elif to == "timm":
        timm_state_dict.write(model, out_dir)
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


__all__ = ["EXPORT_TARGETS", "check_output", "convert", "export"]

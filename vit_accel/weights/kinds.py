"""What a path given as a model is when it is not one: the outputs of this project that hold no model to load.

An adapter directory, a training checkpoint and a graph export all sit beside model directories and look like them
(the ONNX and ExportedProgram directories even hold our `config.json`), so "no config.json" or "no weights" would be
true and useless. `other_kind` names the thing and what reads it instead; every entry point that loads a model
(`from_pretrained`, `vit-accel convert`, `export`, `predict`, `evaluate`) asks it first.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..adapters import ADAPTER_CONFIG, MERGED_DIR
from .graph_export import ONNX_FILE, PROGRAM_FILE

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def other_kind(source: str | os.PathLike) -> str | None:
    """For a local path that is an adapter, a training checkpoint or a graph export: what it is and what to use
    instead, as a phrase ("a LoRA adapter directory ...: ..."); None for anything else (a model, or not local)."""
    from ..training.checkpointing import STATE_FILE  # a checkpoint's record of its run (imports accelerate: lazily)

    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".onnx":
            return _onnx(path)
        if path.suffix == ".pt2":
            return _program(path)
        return None
    if not path.is_dir():
        return None
    if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file():
        merged = path / MERGED_DIR
        copy = (
            f"its merged copy {merged}"
            if (merged / "config.json").is_file()
            else "a merged copy (train with --merge_adapter, or save vit_accel.adapters.merged_copy of it)"
        )
        return (
            f"a LoRA adapter directory ({ADAPTER_CONFIG}), not a model: load it with "
            f"vit_accel.adapters.load_adapter_classifier({str(path)!r}) or vit-accel predict|evaluate --model {path}, "
            f"or use {copy}"
        )
    if (path / STATE_FILE).is_file() and not (path / "config.json").is_file():
        resume = f"continue the run with --resume_from_checkpoint {path}"
        if not (path.parent / "config.json").is_file():  # a checkpoint copied away from its run, or a run unfinished
            return f"a training checkpoint ({STATE_FILE}), not a model: {resume} (its run saves the final model)"
        return (
            f"a training checkpoint ({STATE_FILE}) of the run in {path.parent}, not a model: use the run "
            f"directory {path.parent} (its final model), or {resume}"
        )
    if not any((path / name).is_file() for name in _WEIGHTS):
        if (path / ONNX_FILE).is_file():
            return _onnx(path / ONNX_FILE)
        if (path / PROGRAM_FILE).is_file():
            return _program(path / PROGRAM_FILE)
    return None


def _onnx(file: Path) -> str:
    return (
        f"an ONNX export ({file.name}), a graph for ONNX runtimes, not a model to load: run it with onnxruntime "
        f"(onnxruntime.InferenceSession({str(file)!r})), or give the model directory it was exported from"
    )


def _program(file: Path) -> str:
    return (
        f"a torch.export ExportedProgram ({file.name}), not a model to load: run it with "
        f"torch.export.load({str(file)!r}).module(), or give the model directory it was exported from"
    )


__all__ = ["other_kind"]

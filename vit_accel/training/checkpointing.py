"""Checkpoints that are complete or invisible: written under a temporary name, renamed only once whole.

A checkpoint is `output_dir/checkpoint-{step}/` holding accelerate's `save_state` output (ZeRO-sharded under
DeepSpeed) plus `trainer_state.json` (our counters, as JSON rather than a pickle) and `model_config.json` (the model's
shape, checked before resuming so that another model's checkpoint is refused with a clear message).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_SUFFIX = ".tmp"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "model_config.json"

# Fields that decide the shape of every parameter; a checkpoint differing in one of them cannot be resumed.
SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "representation_size",
    "num_labels",
)


@dataclass
class TrainerState:
    """Where training stands: enough to continue exactly."""

    completed_steps: int = 0  # optimizer steps
    epoch: int = 0  # the epoch in progress
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed (per process)
    best_metric: float | None = None  # best eval top-1 so far
    best_step: int | None = None  # the step it was measured at
    best_checkpoint: str | None = None  # the checkpoint saved at that step, kept by rotation

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        return cls(**json.loads(path.read_text()))


def _write_json(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(text)
    os.replace(tmp, path)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (temporary, half-written ones are not listed)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def resolve_checkpoint(resume_from: str, output_dir: str | Path) -> Path:
    """`latest` → the newest complete checkpoint in `output_dir`; otherwise the path given, which must be complete."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}.")
        return checkpoints[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from}: not a complete checkpoint directory (no {STATE_FILE})."
        )
    return path


def check_compatible(checkpoint: Path, model_config) -> None:
    """Refuse a checkpoint written for a model of another shape, naming the fields that differ."""
    saved = json.loads((checkpoint / CONFIG_FILE).read_text())
    current = model_config.to_dict()
    diffs = [f"{k}={saved.get(k)!r} vs {current.get(k)!r}" for k in SHAPE_FIELDS if saved.get(k) != current.get(k)]
    if diffs:
        raise ValueError(
            f"Checkpoint {checkpoint} was written for another model shape (checkpoint vs this run: {'; '.join(diffs)})."
        )


def remove_stale_checkpoints(output_dir: str | Path, step: int) -> None:
    """Delete what does not belong to a run now at `step`: temporary directories left by a crash mid-save, and
    checkpoints past `step` (from an overwritten run, or from the abandoned future of an older checkpoint resumed)."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for path in root.glob(f"checkpoint-*{TMP_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)
    for path in list_checkpoints(root):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: TrainerState, model_config) -> Path:
    """Save the full training state as `checkpoint-{step}`; the directory appears only once everything is written."""
    final = Path(output_dir) / f"checkpoint-{state.completed_steps}"
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _maybe_inject_fault("during_save", state.completed_steps)
        _write_json(tmp / CONFIG_FILE, model_config.to_json_string())
        # trainer_state.json is written last: its presence is what marks a checkpoint complete.
        _write_json(tmp / STATE_FILE, state.to_json())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _maybe_inject_fault("after_save", state.completed_steps)
    accelerator.wait_for_everyone()
    return final


def rotate_checkpoints(output_dir: str | Path, save_total_limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `save_total_limit` checkpoints, and `keep` (the best one) whatever its age."""
    if save_total_limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints[: max(len(checkpoints) - save_total_limit, 0)]:
        if keep is None or path.name != Path(keep).name:
            shutil.rmtree(path, ignore_errors=True)


def _maybe_inject_fault(point: str, step: int) -> None:
    """Crash-test hook: `VIT_ACCEL_FAULT=during_save:6` SIGKILLs this process after the state of step 6 is written
    but before it is marked complete; `after_save:4` right after checkpoint-4 is complete."""
    if os.environ.get("VIT_ACCEL_FAULT") == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)

"""Checkpoints that are complete or invisible (whether a run may resume from one: `resume.py`).

A checkpoint is `output_dir/checkpoint-{step}/` holding accelerate's `save_state` output (ZeRO-sharded under
DeepSpeed), `model_config.json` (the model's shape) and, written last, `trainer_state.json`: our counters as JSON
(never a pickle), the settings an exact resume depends on, and the size of every other file of the checkpoint. It is
written under `checkpoint-{step}.tmp` and renamed once whole, so a crash mid-save never leaves one that looks complete;
the recorded sizes catch a file truncated or lost afterwards (a full disk, a partial copy) before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash
from accelerate import Accelerator

from ..errors import UserError

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_SUFFIX = ".tmp"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "model_config.json"


@dataclass
class TrainerState:
    """Where training stands: enough to continue exactly, and to tell whether a resume would."""

    completed_steps: int = 0  # optimizer steps
    epoch: int = 0  # the epoch in progress
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed (per process)
    best_metric: float | None = None  # best value so far of --metric_for_best_model (eval top-1 by default)
    best_step: int | None = None  # the step it was measured at
    evaluations_without_improvement: int = 0  # in a row, for --early_stopping_patience
    early_stopped_at: int | None = None  # the step --early_stopping_patience ended the run at
    best_checkpoint: str | None = None  # the checkpoint saved at that step, kept by rotation
    total_steps: int | None = None  # the optimizer steps the run was planned for
    last_eval: dict[str, float] | None = None  # the latest evaluation's results
    bad_rows: dict[str, list[int]] = field(default_factory=dict)  # unreadable rows found so far, per split
    settings: dict[str, Any] | None = None  # see `resume.resume_settings`
    # Every other file of the checkpoint: [size in bytes, xxh3-64 of its content].
    files: dict[str, list] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainerState:
        """Read a `trainer_state.json`; a damaged or foreign one is a UserError naming the file."""
        try:
            values = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path} is unreadable or not valid JSON ({error}); the checkpoint is damaged.") from error
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or not {"completed_steps", "epoch"} <= set(values) or set(values) - known:
            raise UserError(f"{path} is not a vit_accel trainer state; the checkpoint is damaged.")
        for name, kinds in _STATE_TYPES.items():
            value = values.get(name)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
                raise UserError(f"{path}: {name} is {value!r}, not a {kinds[0].__name__}; the checkpoint is damaged.")
        return cls(**values)


# What each field of a trainer state may hold (None aside), checked when one is read back.
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "completed_steps": (int,),
    "epoch": (int,),
    "batches_in_epoch": (int,),
    "best_metric": (float, int),
    "best_step": (int,),
    "evaluations_without_improvement": (int,),
    "early_stopped_at": (int,),
    "best_checkpoint": (str,),
    "total_steps": (int,),
    "last_eval": (dict,),
    "bad_rows": (dict,),
    "settings": (dict,),
    "files": (dict,),
}


def _write_json(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (temporary, half-written ones are not listed)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).is_file()]


def _holds_anything(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def resolve_checkpoint(resume_from: str, output_dir: str | Path) -> Path:
    """The checkpoint to resume: `latest` is the newest complete one in `output_dir`; a path must be complete and must
    belong to `output_dir`'s run, unless `output_dir` is empty or new (a resume never writes into another run)."""
    output_dir = Path(output_dir)
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise UserError(
                f"--resume_from_checkpoint latest: no complete checkpoint in --output_dir {output_dir} "
                "(checkpoints are written with --checkpointing_steps)."
            )
        return checkpoints[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise UserError(
            f"--resume_from_checkpoint {resume_from}: not a complete checkpoint directory (no {STATE_FILE})."
        )
    if path.resolve().parent != output_dir.resolve() and _holds_anything(output_dir):
        raise UserError(
            f"--resume_from_checkpoint {resume_from} belongs to the run in {path.parent}, but --output_dir "
            f"{output_dir} holds other files: a resume writes only into its checkpoint's own run directory "
            f"(--output_dir {path.parent}) or into an empty or new one."
        )
    return path


def file_digest(path: Path) -> str:
    """xxh3-64 of a file's content, read in 16 MiB chunks (about memory speed; a checkpoint is hashed in seconds)."""

    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(checkpoint: Path) -> TrainerState:
    """The checkpoint's state, after checking that every file it was saved with is there, whole and unchanged."""
    state = TrainerState.from_file(checkpoint / STATE_FILE)
    if _CHECKPOINT_RE.match(checkpoint.name) and checkpoint_step(checkpoint) != state.completed_steps:
        raise UserError(
            f"Checkpoint {checkpoint} records step {state.completed_steps}, not the {checkpoint_step(checkpoint)} of "
            f"its name: it was renamed. Give it back its name, checkpoint-{state.completed_steps}."
        )
    config = checkpoint / CONFIG_FILE
    if not config.is_file():
        raise UserError(f"Checkpoint {checkpoint} is damaged: {CONFIG_FILE} is missing. Resume from another one.")
    for relative, record in (state.files or {}).items():
        size, digest = (record, None) if isinstance(record, int) else record
        path = checkpoint / relative
        if not path.is_file():
            raise UserError(
                f"Checkpoint {checkpoint} is damaged: {relative} is missing. Resume from another checkpoint."
            )
        if path.stat().st_size != size:
            raise UserError(
                f"Checkpoint {checkpoint} is damaged: {relative} holds {path.stat().st_size} bytes, but {size} were "
                "written (truncated?). Resume from another checkpoint."
            )
        if digest is not None and file_digest(path) != digest:
            raise UserError(
                f"Checkpoint {checkpoint} is damaged: the content of {relative} changed since it was written "
                "(a power loss or a disk fault?). Resume from another checkpoint."
            )
    try:
        json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{config} is not valid JSON ({error}); the checkpoint is damaged.") from error
    return state


def remove_stale_checkpoints(output_dir: str | Path, step: int) -> list[str]:
    """Delete what does not belong to a run now at `step`: temporary directories left by a crash mid-save, and
    checkpoints past `step` (from an overwritten run, or the abandoned future of an older checkpoint resumed).
    Returns the names of the complete checkpoints removed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    for path in root.glob(f"checkpoint-*{TMP_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)
    removed = []
    for path in list_checkpoints(root):
        if checkpoint_step(path) > step:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _manifest(directory: Path) -> dict[str, list]:
    return {
        str(path.relative_to(directory)): [path.stat().st_size, file_digest(path)]
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != STATE_FILE
    }


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    state: TrainerState,
    model_config,
    save_state_kwargs: dict | None = None,
) -> Path:
    """Save the full training state as `checkpoint-{step}`; the directory appears only once everything is written.

    `save_state_kwargs` go to `accelerator.save_state` (DeepSpeed's `exclude_frozen_parameters` for runs that
    freeze weights)."""
    final = Path(output_dir) / f"checkpoint-{state.completed_steps}"
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), **(save_state_kwargs or {}))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_json(tmp / CONFIG_FILE, model_config.to_json_string())
            # trainer_state.json is written last, with the size and hash of everything else: its presence marks a
            # checkpoint complete, and the record lets a resume find a file damaged since.
            _write_json(tmp / STATE_FILE, dataclasses.replace(state, files=_manifest(tmp)).to_json())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except (OSError, RuntimeError) as error:
        if not _out_of_space(error, tmp):
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # give back what the half-written checkpoint took
        earlier = [p.name for p in list_checkpoints(output_dir)]
        raise UserError(
            f"No space left on the device of {output_dir} while writing {final.name}; it was not kept. "
            + (f"The last complete checkpoint, {earlier[-1]}, is intact: " if earlier else "")
            + "free some space and resume with --resume_from_checkpoint latest."
        ) from error
    accelerator.wait_for_everyone()
    return final


def _out_of_space(error: BaseException, directory: Path) -> bool:
    """A write that failed for want of space: ENOSPC/EDQUOT, or torch's serializer failing on a full disk (it reports
    an 'unexpected pos' instead of the OS error)."""

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        free = shutil.disk_usage(directory if directory.exists() else directory.parent).free
    except OSError:
        return False
    return free < (64 << 20)


def rotate_checkpoints(output_dir: str | Path, save_total_limit: int | None, keep: str | None = None) -> None:
    """Keep the newest `save_total_limit` checkpoints, and `keep` (the best one) whatever its age."""
    if save_total_limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for path in checkpoints[: max(len(checkpoints) - save_total_limit, 0)]:
        if keep is None or path.name != Path(keep).name:
            shutil.rmtree(path, ignore_errors=True)

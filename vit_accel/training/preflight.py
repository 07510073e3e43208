"""Checks of everything a run needs that can fail, made before the dataset is read and the model built.

A mistake found here costs seconds; found after loading or after training, it costs the run.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import huggingface_hub
import torch.distributed
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import DistributedType, broadcast_object_list
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from ..configuration_vit_accel import VIT_VARIANTS
from ..errors import UserError
from ..eval_loop import _metric
from ..paths import looks_local
from ..weights.kinds import other_kind
from .checkpointing import list_checkpoints

T = TypeVar("T")


def on_main_process(accelerator: Accelerator, check: Callable[[], None]) -> None:
    """Run `check` on the main process alone and raise its UserError on every process, so that no process is left
    waiting at the next barrier for one that stopped (the others raise it quietly: the main process shows it)."""

    message = [None]
    if accelerator.is_main_process:
        try:
            check()
        except UserError as error:
            message = [str(error)]
    if accelerator.num_processes > 1:
        broadcast_object_list(message)
    if message[0] is not None:
        raise UserError(message[0], shown=accelerator.is_main_process)


def main_process_first(accelerator: Accelerator, load: Callable[[], T]) -> T:
    """`load()` on the main process, then on the others (which then read its caches); a UserError on the main
    process stops every process at once, instead of leaving the others waiting at a barrier until they time out."""
    loaded: list[T] = []
    on_main_process(accelerator, lambda: loaded.append(load()))
    return loaded[0] if loaded else load()


# What the real multi-process launches set: torchrun/accelerate's multi-process launcher, and the MPI launchers
# (accelerate reads their sizes for multi-CPU runs started through mpirun).
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
MULTI_CPU_COMMAND = (
    "ACCELERATE_USE_CPU=true accelerate launch --config_file accelerate_configs/multi_cpu.yaml train.py ..."
)


def check_launcher_processes(accelerator: Accelerator, environ: dict[str, str] | None = None) -> None:
    """Refuse a single process that `accelerate launch` started in place of the several it was asked for.

    `accelerate launch --cpu --num_processes 2` (like `distributed_type: MULTI_CPU` in a config) runs accelerate's
    single-process launcher: one process, with MASTER_ADDR/MASTER_PORT set because more than one was asked for, and
    no WORLD_SIZE. It would train alone and exit 0, as if the run were what was asked."""
    env = os.environ if environ is None else environ
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in env
    asked_for_more = "MASTER_ADDR" in env and "MASTER_PORT" in env
    got_one = accelerator.num_processes == 1 and not any(name in env for name in _WORLD_SIZE_VARIABLES)
    if launched_by_accelerate and asked_for_more and got_one:
        raise UserError(
            "accelerate launch was asked for more than one process (MASTER_ADDR is set) but started only this "
            "one: `--cpu --num_processes N` and `distributed_type: MULTI_CPU` run a single process. On the CPU, "
            f"launch `{MULTI_CPU_COMMAND}` (two processes); for one process, unset MASTER_ADDR."
        )


def check_process_group(accelerator: Accelerator) -> None:
    """Refuse processes that the launcher started as one job but that do not train as one.

    `accelerate launch` sets WORLD_SIZE to the processes it started. Some configs start several without a process
    group (an FSDP config with `use_cpu: true` and no ACCELERATE_USE_CPU gives `DistributedType.NO` in each):
    unsynchronised replicas writing one output directory. And a config that asked for FSDP or DeepSpeed may silently
    run as plain data parallelism on a machine that cannot honour it.
    """

    check_launcher_processes(accelerator)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    grouped = accelerator.distributed_type != DistributedType.NO and torch.distributed.is_initialized()
    if world_size != accelerator.num_processes or (world_size > 1 and not grouped):
        raise UserError(
            f"The launcher started {world_size} processes, but they run without a process group "
            f"({accelerator.distributed_type}): each would train its own unsynchronised copy. Check the accelerate "
            "config (on a CPU, a multi-process config needs ACCELERATE_USE_CPU=true and distributed_type MULTI_GPU)."
        )
    asked = {"ACCELERATE_USE_FSDP": DistributedType.FSDP, "ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED}
    for variable, kind in asked.items():
        if os.environ.get(variable, "").lower() in ("1", "true") and accelerator.distributed_type != kind:
            raise UserError(
                f"The accelerate config asks for {kind.value}, but this machine runs it as "
                f"{accelerator.distributed_type}: the run would not be sharded as configured."
            )


# What marks a directory as a run of ours (so a resume or --overwrite_output_dir applies to it), and what a run may
# find in its own directory without taking it for someone else's files.
RUN_MARKERS = ("training_args.json", "log.jsonl", "all_results.json")
LOCK_FILE = ".vit_accel.lock"


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool, inputs: dict[str, str | None]) -> None:
    """Never write over a run, the run's own inputs or anybody's files by accident; and find an unwritable
    directory now rather than after loading.

    `inputs`: flag -> local path the run reads (the model, the dataset), which the output may neither be nor lie in.
    """
    target = output_dir.expanduser().resolve()
    for flag, value in inputs.items():
        if value and Path(value).expanduser().exists() and _inside(target, Path(value).expanduser().resolve()):
            raise UserError(
                f"--output_dir {output_dir} is (or lies inside) {flag} {value}: the run would write over it."
            )
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a directory.")
    entries = sorted(p.name for p in output_dir.iterdir() if p.name != LOCK_FILE) if output_dir.is_dir() else []
    is_run = any((output_dir / name).exists() for name in RUN_MARKERS) or bool(list_checkpoints(output_dir))
    if entries and not is_run and not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UserError(
            f"--output_dir {output_dir} holds files that are not a vit_accel run ({shown}), which the run would "
            "overwrite or mix with: choose an empty or new directory, or pass --overwrite_output_dir."
        )
    if (
        is_run
        and not resuming
        and not overwrite
        and (list_checkpoints(output_dir) or (output_dir / "all_results.json").exists())
    ):
        raise UserError(
            f"--output_dir {output_dir} already holds a run. Resume it with --resume_from_checkpoint latest, "
            "choose another directory, or pass --overwrite_output_dir."
        )
    make_writable_dir(output_dir)


def make_writable_dir(output_dir: Path) -> None:
    """Create `output_dir` and write a file into it now: an unwritable directory is found before any long work,
    not at the first save after it."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(f"--output_dir {output_dir} cannot be written: {error.strerror or error}.") from error


_held_locks: list = []  # open lock files: each run keeps its directory's for as long as the process lives


def lock_output_dir(output_dir: Path) -> None:
    """Take `output_dir` for this run alone: a second run started into it stops here, naming the first.

    An advisory `flock` on a file in the directory; the system releases it when the process ends, however it ends.
    """
    # Deferred: fcntl exists on POSIX systems only, and only the lock needs it.
    import fcntl

    path = output_dir / LOCK_FILE
    while True:
        handle = open(path, "a+")  # noqa: SIM115 (held open for the life of the process)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"--output_dir {output_dir} is in use by another run ({holder}); wait for it to end or choose "
                "another directory."
            ) from error
        # A run ending removes its lock file (`release_output_dir_locks`): a file it removed between our open and
        # our lock is no longer the directory's lock, so take the one at the path now.
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"PID {os.getpid()} on {os.uname().nodename}")
    handle.flush()
    _held_locks.append(handle)


def release_output_dir_locks() -> None:
    """Let go of the directories this process took, and remove their lock files: a run that stops on bad input leaves
    its directory as it found it. (A process that ends lets go of its locks anyway; a killed one leaves the file,
    which no check minds.)"""
    while _held_locks:
        handle = _held_locks.pop()
        # Removed while still held: a run starting now either failed on the lock already or creates a new file.
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        handle.close()


def check_model_source(source: str, from_scratch: bool, attn_implementation: str | None) -> None:
    """What can be told about --model_name_or_path and --attn_implementation without loading anything."""

    path = Path(source).expanduser()
    if source not in VIT_VARIANTS and looks_local(source) and not path.exists():
        raise UserError(f"--model_name_or_path {source}: no such file or directory.")
    if from_scratch and source not in VIT_VARIANTS and not (path / "config.json").is_file():
        close = difflib.get_close_matches(source, VIT_VARIANTS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"variants: {', '.join(VIT_VARIANTS)}."
        raise UserError(
            f"--model_name_or_path {source!r}: --from_scratch needs a variant name or a directory with config.json; "
            f"{hint}"
        )

    kind = other_kind(path) if path.exists() else None
    if kind is not None:
        raise UserError(f"--model_name_or_path {source} is {kind}.")
    if attn_implementation in ("flash_attention_2", "flash_attention_3"):
        available = is_flash_attn_2_available if attn_implementation.endswith("2") else is_flash_attn_3_available
        if not available():
            raise UserError(
                f"--attn_implementation {attn_implementation}: the flash-attn package for it is not installed, or "
                "this machine has no GPU it supports; use sdpa (the default) or eager."
            )


def check_metric_cache() -> None:
    """Load the evaluation metric now and score one example: `evaluate.load` copies the metric script into the
    Hugging Face modules cache, so an unwritable `HF_HOME` (or `HF_MODULES_CACHE`) is found before training, not
    at the first evaluation after it. The loaded metric is kept for the evaluations."""

    try:
        _metric().compute(predictions=[[0]], references=[0])
    except OSError as error:
        # Deferred: the evaluate library takes about a second to import, and only a failure needs its settings here.
        import evaluate.config

        where = Path(error.filename) if error.filename else Path(evaluate.config.HF_MODULES_CACHE)
        raise UserError(
            f"{_cache_variable(where)}: the Hugging Face cache at {where} cannot be written "
            f"({error.strerror or error}), and the evaluation metric is loaded through it; point it at a writable "
            "directory."
        ) from error


def _cache_variable(path: Path) -> str:
    """The environment variable that put `path` where it is: the most specific one set, else HF_HOME's default."""
    # Deferred: the evaluate library takes about a second to import, and only a failure needs its settings here.
    import evaluate.config

    caches = {
        "HF_MODULES_CACHE": evaluate.config.HF_MODULES_CACHE,
        "HF_METRICS_CACHE": evaluate.config.HF_METRICS_CACHE,
        "HF_EVALUATE_CACHE": evaluate.config.HF_EVALUATE_CACHE,
    }
    for name, root in caches.items():
        if os.environ.get(name) and (_inside(path, Path(root)) or _inside(Path(root), path)):
            return f"{name}={os.environ[name]}"
    for name in ("HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    return f"HF_HOME (unset: default {evaluate.config.HF_CACHE_HOME})"


def check_precision_and_accumulation(accelerator: Accelerator, gradient_accumulation_steps: int) -> None:
    """Settings accelerate would silently not apply, or apply differently from train.py's flags."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise UserError(
            "--mixed_precision fp16 (from the accelerate config or launch): accelerate trains in fp32 on the CPU, "
            "which would not be the precision asked for; use bf16 or no."
        )
    launched = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if launched is not None and int(launched) != gradient_accumulation_steps:
        raise UserError(
            f"The accelerate config or launch sets gradient accumulation to {launched}, train.py's "
            f"--gradient_accumulation_steps to {gradient_accumulation_steps}: give it once, to train.py."
        )


def check_trackers(report_to: str | list[str]) -> list[str]:
    """The trackers `--report_to` names (comma-separated or a list, or `all`), each known to accelerate and
    installed."""

    available = [str(tracker) for tracker in get_available_trackers()]
    listed = report_to.split(",") if isinstance(report_to, str) else [str(name) for name in report_to]
    names = [name.strip() for name in listed if name.strip()]
    if names == ["all"]:
        if not available:
            known = ", ".join(LOGGER_TYPE_TO_CLASS)
            raise UserError(f"--report_to all: no tracker package is installed (accelerate knows {known}).")
        return available
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise UserError(f"--report_to {name}: not a tracker accelerate knows ({', '.join(LOGGER_TYPE_TO_CLASS)}).")
        if name not in available:
            raise UserError(f"--report_to {name}: its package is not installed (pip install {name}).")
    if not names:
        raise UserError("--report_to is empty; name a tracker (tensorboard, wandb, ...) or 'all'.")
    return names


def check_hub_repo(repo_id: str, token: str | None) -> None:
    """Make sure the upload at the end can happen: the Hub answers, the token is valid and may write to `repo_id`."""
    try:
        identity = huggingface_hub.HfApi(token=token).whoami()
    except Exception as error:  # offline mode, no token, an invalid token or no network: each says what to do
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, LocalTokenNotFoundError):
            advice = "no token: set HF_TOKEN or run `hf auth login`"
        elif isinstance(error, OfflineModeIsEnabled):
            advice = "HF_HUB_OFFLINE is set; unset it to upload"
        elif isinstance(error, HfHubHTTPError) and getattr(error.response, "status_code", None) == 401:
            advice = "the token was refused (expired or mistyped?)"
        else:
            advice = f"the Hub could not be reached ({reason})"
        raise UserError(
            f"--push_to_hub {repo_id}: the upload at the end cannot be confirmed before training: {advice}; or "
            "leave out --push_to_hub."
        ) from error
    namespace = repo_id.split("/")[0]
    owners = {identity.get("name")} | {org.get("name") for org in identity.get("orgs", [])}
    if "/" in repo_id and namespace not in owners:
        raise UserError(
            f"--hub_model_id {repo_id}: the token belongs to {identity.get('name')!r}, which cannot write to "
            f"{namespace!r} (its namespaces: {', '.join(sorted(n for n in owners if n))})."
        )
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise UserError(f"--push_to_hub {repo_id}: the token is read-only; use a token with write access.")

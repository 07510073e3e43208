"""Checks of everything a run needs that can fail, made before the dataset is read and the model built.

A mistake found here costs seconds; found after loading or after training, it costs the run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..errors import UserError
from .checkpointing import list_checkpoints


def on_main_process(accelerator: Accelerator, check: Callable[[], None]) -> None:
    """Run `check` on the main process alone and raise its UserError on every process, so that no process is left
    waiting at the next barrier for one that stopped."""
    from accelerate.utils import broadcast_object_list

    message = [None]
    if accelerator.is_main_process:
        try:
            check()
        except UserError as error:
            message = [str(error)]
    if accelerator.num_processes > 1:
        broadcast_object_list(message)
    if message[0] is not None:
        raise UserError(message[0])


def check_process_group(accelerator: Accelerator) -> None:
    """Refuse processes that the launcher started as one job but that do not train as one.

    `accelerate launch` sets WORLD_SIZE to the processes it started. Some configs start several without a process
    group (an FSDP config with `use_cpu: true` and no ACCELERATE_USE_CPU gives `DistributedType.NO` in each):
    unsynchronised replicas writing one output directory. And a config that asked for FSDP or DeepSpeed may silently
    run as plain data parallelism on a machine that cannot honour it.
    """
    import torch.distributed

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


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Never overwrite a run by accident, and find an unwritable directory now rather than after loading."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a directory.")
    if not resuming and not overwrite and (list_checkpoints(output_dir) or (output_dir / "all_results.json").exists()):
        raise UserError(
            f"--output_dir {output_dir} already holds a run. Resume it with --resume_from_checkpoint latest, "
            "choose another directory, or pass --overwrite_output_dir."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(f"--output_dir {output_dir} cannot be written: {error.strerror or error}.") from error


def check_trackers(report_to: str) -> list[str]:
    """The trackers `--report_to` names (comma-separated, or `all`), each known to accelerate and installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = [str(tracker) for tracker in get_available_trackers()]
    names = [name.strip() for name in report_to.split(",") if name.strip()]
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
    from huggingface_hub import HfApi

    try:
        identity = HfApi(token=token).whoami()
    except Exception as error:  # offline mode, no token, an invalid token or no network: all end the same way
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--push_to_hub {repo_id}: the Hub cannot confirm the upload before training ({reason}). Set HF_TOKEN or "
            "run `hf auth login`, or leave out --push_to_hub."
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

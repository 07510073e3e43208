"""The `Accelerator` for a run, with the process group the launch asked for, also on machines without a GPU.

`accelerate launch` passes the config file's choice to the processes through environment variables
(`ACCELERATE_USE_FSDP`, `ACCELERATE_USE_DEEPSPEED`, `WORLD_SIZE`, ...). On a GPU machine accelerate turns them into
the right distributed state by itself. Without CUDA, accelerate 1.15 picks NCCL for DeepSpeed and keeps FSDP for
accelerator devices only: `AcceleratorState` switches to `DistributedType.FSDP` from the MULTI_GPU family of states,
never from MULTI_CPU, so an FSDP config on the CPU would silently train as plain DDP (with `ACCELERATE_USE_CPU`) or
as unsynchronised copies (without). torch's FSDP2 itself runs on the CPU over gloo, and so do accelerate's FSDP2
preparation, sharded `save_state`/`load_state` and full-state gathering; `create_accelerator` reaches them by
starting the gloo process group first and presenting it to accelerate as a data-parallel group, the state from
which accelerate applies its FSDP plugin.

It also holds the arithmetic of a resume on another number of processes (`relayout`, `micro_batches_to_skip`): the
same global batch split anew (`resume.py` decides when it applies).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from accelerate.utils.constants import MODEL_NAME
from torch.distributed.fsdp import CPUOffloadPolicy

from ..errors import UserError


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launched_processes() -> int:
    """The number of processes the launcher started (1 for a plain `python train.py`)."""
    value = os.environ.get("WORLD_SIZE", "1")
    if not value.strip().isdigit() or int(value) < 1:
        raise UserError(f"WORLD_SIZE={value!r} is not a number of processes; unset it, or let the launcher set it.")
    return int(value)


def fsdp_requested() -> bool:
    """The launch asked for FSDP (a config with `distributed_type: FSDP`, or `--use_fsdp`)."""
    return _flag("ACCELERATE_USE_FSDP")


def _cpu_only() -> bool:
    return not torch.cuda.is_available()


def name_deepspeed_accelerator() -> None:
    """Tell DeepSpeed it runs on the CPU where there is no CUDA (`DS_ACCELERATOR=cpu`, what it picks anyway).

    accelerate's `unwrap_model`/`prepare` and transformers' `save_pretrained` import DeepSpeed whenever it is
    installed, and DeepSpeed, finding no GPU, warns "Setting accelerator to CPU" on every command, also those that
    never use it (evaluate, export)."""
    if "DS_ACCELERATOR" not in os.environ and _cpu_only():
        os.environ["DS_ACCELERATOR"] = "cpu"


def create_accelerator(**kwargs) -> Accelerator:
    """`Accelerator(**kwargs)`, with gloo where there is no CUDA, and FSDP2 on the CPU when the config asks for it.

    - DeepSpeed or DDP over several processes without CUDA: the process group uses gloo (DeepSpeed would otherwise
      try NCCL; DDP on the CPU also needs `ACCELERATE_USE_CPU=true`, set by the launch, for accelerate to wrap it).
    - FSDP without CUDA (any number of processes started by `accelerate launch`): a gloo process group that
      accelerate treats as data parallel, so that its FSDP plugin applies; FSDP2's CPU offload then keeps its
      shards in ordinary memory (pinned memory needs CUDA).

    Whether the run really got the distributed type its launch asked for is `preflight.check_process_group`'s
    check (another accelerate version may decide the state differently).
    """
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if launched_processes() > 1 and missing:
        # torch would fail deep inside accelerate ("Default process group has not been initialized").
        raise UserError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set, but not {', '.join(missing)}: this process was not "
            "started by a launcher. Start the run with `accelerate launch` (or torchrun), or unset WORLD_SIZE."
        )
    name_deepspeed_accelerator()
    handlers = list(kwargs.pop("kwargs_handlers", None) or [])
    cpu_fsdp = _cpu_only() and fsdp_requested() and "LOCAL_RANK" in os.environ
    if cpu_fsdp:
        state = PartialState(cpu=True, backend="gloo")
        # accelerate attaches the FSDP plugin only to states of the MULTI_GPU family; the process group is the same.
        state.distributed_type = DistributedType.MULTI_GPU
    elif _cpu_only() and launched_processes() > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(kwargs_handlers=handlers, **kwargs)
    if cpu_fsdp and accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if getattr(plugin.cpu_offload, "pin_memory", False):
            plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)
    return accelerator


def leave_process_group() -> None:
    """End a command that succeeded: once every process is here, destroy the process group (a no-op without one).

    A process that exits with a gloo group still up can abort at interpreter shutdown ("terminate called without an
    active exception", SIGABRT), its worker threads outliving the interpreter: a run that succeeded would exit
    non-zero. Only on success: after an error, another process may be inside a collective this barrier would join.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def parameter_checksum(model: torch.nn.Module) -> torch.Tensor:
    """The sum of all parameters, as a 1-element fp32 tensor on the parameters' device.

    Sharded parameters (FSDP2's DTensors) are summed over their full value, so every process of an FSDP run reports
    the whole model's sum (a collective: all processes must call it); replicated ones (DDP) are summed locally, so
    processes whose replicas drifted apart report different sums.
    """
    total = None
    for param in model.parameters():
        value = param.detach()
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        part = value.float().sum()
        total = part if total is None else total + part
    if total is None:
        return torch.zeros(1)
    return total.reshape(1)


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's examples are split: processes x per-device batch x accumulated micro-batches.

    With accelerate's sharding (each process takes every `num_processes`-th batch of the shared order, and a step
    accumulates consecutive ones), optimizer step s trains on examples [s * G, (s + 1) * G) of the epoch's order,
    G the global batch, whatever the split: the same data at each step on any number of processes.
    """

    num_processes: int
    per_device_batch: int
    accumulation: int

    @property
    def global_batch(self) -> int:
        return self.num_processes * self.per_device_batch * self.accumulation

    def describe(self) -> str:
        return (
            f"{self.num_processes} process(es) x {self.per_device_batch} per device x {self.accumulation} "
            f"accumulation step(s) = global batch {self.global_batch}"
        )


def relayout(saved: BatchLayout, num_processes: int, max_per_device_batch: int) -> BatchLayout:
    """The split of `saved.global_batch` over `num_processes`: the fewest accumulation steps whose per-device batch
    is at most `max_per_device_batch` (so the per-device batch is kept when it divides, and never grows beyond what
    the user said fits a device).

    Raises:
        UserError: the global batch cannot be split evenly over `num_processes` within that per-device batch.
    """
    total = saved.global_batch
    for accumulation in range(1, total + 1):
        if (
            total % (num_processes * accumulation) == 0
            and total // (num_processes * accumulation) <= max_per_device_batch
        ):
            return BatchLayout(num_processes, total // (num_processes * accumulation), accumulation)
    raise UserError(
        f"--resume_from_checkpoint: the checkpoint's global batch ({saved.describe()}) cannot be split evenly over "
        f"{num_processes} process(es) with --per_device_train_batch_size at most {max_per_device_batch}; resume on a "
        f"number of processes that divides {total}."
    )


def micro_batches_to_skip(saved: BatchLayout, saved_micro_batches: int, new: BatchLayout) -> int:
    """Micro-batches per process that `new` skips to reach the example the saved run stopped at in its epoch.

    Raises:
        UserError: that position is not a whole number of `new`'s micro-batches (a checkpoint taken between
            optimizer steps, which train.py never writes).
    """
    examples = saved_micro_batches * saved.per_device_batch * saved.num_processes
    per_micro_batch = new.per_device_batch * new.num_processes
    if examples % per_micro_batch:
        raise UserError(
            f"--resume_from_checkpoint: the checkpoint stopped after example {examples} of its epoch, which is not a "
            f"boundary of {new.describe()}."
        )
    return examples // per_micro_batch


# Where `accelerator.save_state` puts DeepSpeed's own checkpoint inside ours (its tag), and where the conversion to
# DeepSpeed's universal format (one file per parameter and optimizer state, loadable on any number of processes) goes.
DEEPSPEED_TAG = MODEL_NAME
UNIVERSAL_TAG = f"{MODEL_NAME}_universal"
# The settings that may change with the number of processes, as long as the global batch does not.
WORLD_SIZE_SETTINGS = ("num_processes", "per_device_train_batch_size", "gradient_accumulation_steps")


def universal_conversion_command(checkpoint: Path) -> str:
    """The command that converts `checkpoint`'s DeepSpeed states to the universal format, next to them."""
    return (
        "python -m deepspeed.checkpoint.ds_to_universal --inject_missing_state "
        f"--input_folder {checkpoint / DEEPSPEED_TAG} --output_folder {checkpoint / UNIVERSAL_TAG}"
    )


def has_universal_checkpoint(checkpoint: Path) -> bool:
    return (checkpoint / UNIVERSAL_TAG / "zero").is_dir()

"""What every training script of the toolkit (train.py, pretrain.py) does around its loop: the `Accelerator` and
the checks of the launch before anything is loaded, the length of the run, the destinations, the trackers'
configuration, and the command-line ending (one line for a user's mistake, the results as JSON)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin

from ..errors import UserError, report
from .arguments import recorded_arguments
from .distributed import create_accelerator, leave_process_group
from .loop import Interrupted, Terminated
from .preflight import (
    check_hub_repo,
    check_model_source,
    check_output_dir,
    check_precision_and_accumulation,
    check_process_group,
    check_trackers,
    lock_output_dir,
)
from .resume import ResumePlan

logger = get_logger(__name__, log_level="INFO")


def build_accelerator(args) -> Accelerator:
    # create_accelerator: gloo where there is no CUDA, and FSDP2 for real on the CPU when the config asks for it.
    return create_accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=check_trackers(args.report_to or "all") if args.with_tracking else None,
        project_dir=args.output_dir,
        # We step the schedule ourselves once per optimizer step, so warm-up and totals are in optimizer steps.
        step_scheduler_with_optimizer=False,
        # Host-to-device copies of pinned batches overlap with compute instead of blocking every step.
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if args.torch_compile else None,
    )


def checked_accelerator(model_args, args, check_accelerator: Callable[[Accelerator], None]) -> Accelerator:
    """The run's `Accelerator`, after the checks of the launch, the accelerate config (`check_accelerator`: the
    script's own, with the config known) and the model source (nothing is loaded yet)."""
    accelerator = build_accelerator(args)
    check_process_group(accelerator)
    check_precision_and_accumulation(accelerator, args.gradient_accumulation_steps)
    check_accelerator(accelerator)
    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        # DeepSpeed clips inside its own step, with the value from its config (read at `prepare`): hand it ours.
        plugin.deepspeed_config["gradient_clipping"] = args.max_grad_norm
    check_model_source(model_args.model_name_or_path, model_args.from_scratch, model_args.attn_implementation)
    return accelerator


def run_length(num_batches: int, args) -> tuple[int, int, int, int]:
    """(optimizer steps, epochs, steps between evaluations, steps between checkpoints or 0) for `num_batches`
    micro-batches an epoch on this process."""
    steps_per_epoch = math.ceil(num_batches / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    checkpoint_every = steps_per_epoch if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps or 0)
    return total_steps, math.ceil(total_steps / steps_per_epoch), args.eval_steps or steps_per_epoch, checkpoint_every


def check_destinations(plan: ResumePlan, model_args, data_args, args) -> None:
    """Check that the Hub takes the upload (--push_to_hub) and that the run may write into --output_dir (see
    `check_output_dir`); lock the directory for this run alone."""
    if args.push_to_hub:
        check_hub_repo(args.hub_model_id, args.hub_token)
    inputs = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--dataset_name": data_args.dataset_name,
        "--train_dir": data_args.train_dir,
        "--validation_dir": data_args.validation_dir,
    }
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, plan.checkpoint is not None, args.overwrite_output_dir, inputs)
    lock_output_dir(output_dir)


def tracker_config(*arguments) -> dict:
    """Hyperparameters for the trackers: every argument that is set, the token left out."""
    flat = {k: v for values in recorded_arguments(*arguments).values() for k, v in values.items()}
    return {k: v for k, v in flat.items() if v is not None and k != "hub_token"}


def run_cli(program: str, main: Callable[[], dict]) -> None:
    """Run a script's `main` as its command line: a user's mistake, Ctrl-C or SIGTERM ends in one line on stderr (exit
    2, 130 or 143), success prints the results as JSON on the main process."""
    try:
        results = main()
    except UserError as error:
        sys.exit(report(program, error))
    except Interrupted as interruption:
        print(f"{program}: {'SIGTERM: ' if interruption.terminated else ''}{interruption}", file=sys.stderr)
        sys.exit(interruption.exit_code)
    except KeyboardInterrupt as interruption:
        signal_name = "SIGTERM: " if isinstance(interruption, Terminated) else ""
        print(f"{program}: {signal_name}interrupted before training started; nothing was written.", file=sys.stderr)
        sys.exit(143 if signal_name else 130)
    leave_process_group()  # also after the early returns (a finished run, --eval_only) that skip the final save
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results))

"""Whether and how a run continues an earlier one: every rule of resuming, decided in one place.

`plan_resume` returns a `ResumePlan`: start fresh, continue a checkpoint (on the number of processes that wrote it or
on another, keeping the global batch), or nothing to do (the run already finished, with its results). train.py acts
on the plan; the checks that need the dataset or the model (`check_resumed_data`, `check_resumed_model`) and the
length of the run (`ResumePlan.past_the_end`) come as those are known, each before any training step.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType

from ..data.decode import auto_decoder
from ..errors import UserError
from . import methods
from .checkpointing import CONFIG_FILE, TrainerState, resolve_checkpoint, verify_checkpoint
from .distributed import (
    UNIVERSAL_TAG,
    WORLD_SIZE_SETTINGS,
    BatchLayout,
    has_universal_checkpoint,
    micro_batches_to_skip,
    relayout,
    universal_conversion_command,
)

logger = get_logger(__name__, log_level="INFO")
RESULTS_FILE = "all_results.json"
# The run's length may change on resume (asking for more steps trains further); every other setting may not.
LENGTH_SETTINGS = ("max_train_steps", "num_train_epochs")

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

# The arguments that decide what a resumed run computes: its data order and augmentation (seed, batch, dataset),
# its model and its updates. A resume with another value would silently stop being the run it continues. The run's
# length (num_train_epochs, max_train_steps) is not among them: asking for more steps trains further.
RESUME_SETTINGS: dict[str, tuple[str, ...]] = {
    "ModelArguments": ("model_name_or_path", "from_scratch", "config_overrides", "image_size"),
    "DataArguments": (
        "dataset_name",
        "dataset_config_name",
        "train_dir",
        "validation_dir",
        "image_column_name",
        "label_column_name",
        "train_val_split",
        "max_train_samples",
        "max_eval_samples",
        "augmentation",
        "random_erasing",
        "bad_images",
        "streaming",
        "shuffle_buffer_size",
        "image_decoder",
    ),
    "TrainingArguments": (
        "seed",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optimizer",
        "learning_rate",
        "weight_decay",
        "momentum",
        "adam_beta1",
        "adam_beta2",
        "max_grad_norm",
        "label_smoothing",
        "lr_scheduler_type",
        "num_warmup_steps",
        "peft",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "use_dora",
        "freeze",
        "freeze_layers",
        "layer_decay",
        "ema_decay",
        "ema_warmup",
        "mixup_alpha",
        "cutmix_alpha",
        "mix_prob",
        "mix_switch_prob",
        # The best value kept in the checkpoint is of this metric: another one would compare unlike numbers.
        "metric_for_best_model",
    ),
    # pretrain.py's arguments (subclasses of the above): the decoder, the mask and the base rate.
    "PretrainingModelArguments": (
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
        "mask_ratio",
        "norm_pix_loss",
    ),
    "PretrainingTrainingArguments": ("base_learning_rate",),
}


def check_compatible(checkpoint: Path, model_config) -> None:
    """Refuse a checkpoint written for a model of another shape, naming the fields that differ."""
    saved = json.loads((checkpoint / CONFIG_FILE).read_text())
    current = model_config.to_dict()
    diffs = [f"{k}={saved.get(k)!r} vs {current.get(k)!r}" for k in SHAPE_FIELDS if saved.get(k) != current.get(k)]
    if diffs:
        raise UserError(
            f"Checkpoint {checkpoint} was written for another model shape (checkpoint vs this run: {'; '.join(diffs)})."
        )


def checkpoint_format(distributed_type) -> str:
    """How accelerate lays out a checkpoint's states under `distributed_type`: DeepSpeed and FSDP keep their own
    (sharded) formats; one process, DDP on CPUs or GPUs all write the same files."""
    name = str(getattr(distributed_type, "value", distributed_type)).upper()
    return {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}.get(name, "plain")


def resume_settings(arguments: tuple, num_processes: int) -> dict[str, Any]:
    """The values of `RESUME_SETTINGS` in these argument dataclasses, plus the number of processes."""
    settings: dict[str, Any] = {"num_processes": num_processes}
    for values in arguments:
        # A subclass (another script's arguments) adds its own settings to those of the class it extends.
        names = [n for cls in reversed(type(values).__mro__) for n in RESUME_SETTINGS.get(cls.__name__, ())]
        for name in names:
            value = getattr(values, name)
            if name in _PATH_SETTINGS and isinstance(value, str) and Path(value).expanduser().exists():
                value = str(Path(value).expanduser().resolve())  # `data/`, `./data` and `/abs/data` are one dataset
            settings[name] = value
    data = next((values for values in arguments if hasattr(values, "image_decoder")), None)
    if data is not None and data.image_decoder in (None, "auto"):
        # `auto` decodes random-resized crops with turbojpeg or simplejpeg where installed and Pillow's draft mode
        # elsewhere, each with its own libjpeg-turbo build: a resume on a machine that resolves it otherwise is a
        # changed setting.
        settings["image_decoder"] = f"auto: {auto_decoder(data.augmentation)}"
    return settings


_PATH_SETTINGS = ("model_name_or_path", "dataset_name", "train_dir", "validation_dir")


def changed_settings(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """`--flag: checkpoint value -> this run's value` for every recorded setting this run changes."""
    if recorded is None:  # a checkpoint from before settings were recorded: nothing to compare
        return []
    changes = []
    for name, value in current.items():
        if name in recorded and recorded[name] != value:
            flag = "number of processes" if name == "num_processes" else f"--{name}"
            changes.append(f"{flag}: {recorded[name]!r} in the checkpoint, {value!r} now")
    return changes


def plan_new_world_size(
    recorded: dict | None, num_processes: int, per_device_batch: int, checkpoint: Path, deepspeed: bool
) -> tuple[BatchLayout, BatchLayout] | None:
    """The checkpoint's batch layout and this run's, when this run has another number of processes than the one
    that wrote `checkpoint` (None when it has the same, or the checkpoint did not record it).

    Raises:
        UserError: the global batch does not divide over `num_processes` (see `relayout`), or a DeepSpeed checkpoint
            that has not been converted to the universal format; the message holds the command that converts it.
    """
    if not recorded or recorded.get("num_processes") in (None, num_processes):
        return None
    saved = BatchLayout(
        recorded["num_processes"], recorded["per_device_train_batch_size"], recorded["gradient_accumulation_steps"]
    )
    if deepspeed and not has_universal_checkpoint(checkpoint):
        raise UserError(
            f"--resume_from_checkpoint {checkpoint}: it holds DeepSpeed ZeRO states of {saved.num_processes} "
            f"process(es), which load only on as many; this run has {num_processes}. Convert them once to DeepSpeed's "
            f"universal checkpoint, which loads on any number, then resume again: "
            f"`{universal_conversion_command(checkpoint)}`"
        )
    return saved, relayout(saved, num_processes, per_device_batch)


def identity_changes(recorded: dict, current: dict) -> list[str]:
    """`dataset_identity` entries that differ, as `key: <recorded> in the checkpoint, <current> now` (empty when the
    data is the same)."""
    return [
        f"{key}: {recorded.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


def run_settings(arguments: tuple, accelerator: Accelerator) -> dict[str, Any]:
    """What this run records in its checkpoints and a resume compares: `resume_settings`, the run's length and the
    checkpoint format of its accelerate config."""
    settings = resume_settings(arguments, accelerator.num_processes)
    training = arguments[-1]
    settings.update({k: getattr(training, k) for k in LENGTH_SETTINGS})
    settings["checkpoint_format"] = checkpoint_format(accelerator.distributed_type)
    return settings


@dataclass
class ResumePlan:
    """What a run does about the checkpoint it was asked to resume."""

    checkpoint: Path | None = None  # None: start fresh
    state: TrainerState | None = None  # the checkpoint's trainer state
    layouts: tuple[BatchLayout, BatchLayout] | None = None  # (checkpoint's, this run's) on another process count
    finished: dict | None = None  # the results of a run with nothing left to do

    @property
    def kind(self) -> str:
        if self.finished is not None:
            return "nothing to do"
        if self.checkpoint is None:
            return "fresh"
        return "continue on another world size" if self.layouts is not None else "continue"

    def past_the_end(self, total_steps: int, output_dir: Path) -> dict | None:
        """The results to return when the checkpoint is already past the `total_steps` this run asks for (nothing to
        do), else None."""
        if self.state is None or self.state.completed_steps <= total_steps:
            return None
        logger.warning(
            f"The run in {output_dir} is already at step {self.state.completed_steps}, past the {total_steps} asked "
            "for: nothing to do.",
            main_process_only=True,
        )
        self.finished = finished_results(output_dir, self.state, None) or {"train_steps": self.state.completed_steps}
        return self.finished


def plan_resume(accelerator: Accelerator, args, settings: dict, output_dir: Path) -> ResumePlan:
    """The plan for `--resume_from_checkpoint` (fresh without it), after checking that the checkpoint is whole, was
    written under the same kind of accelerate config and that this run continues it (settings unchanged, or
    `--accept_changed_settings`). On another number of processes, `args`, `settings` and `accelerator` take the
    new batch split, which keeps the global batch."""
    if not args.resume_from_checkpoint:
        return ResumePlan()
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    state = verify_checkpoint(checkpoint)
    written = (state.settings or {}).get("checkpoint_format")
    if written is not None and written != settings["checkpoint_format"]:
        raise UserError(
            f"{checkpoint} holds its states in {written}'s format, but this run is "
            f"{accelerator.distributed_type.value}: resume it with the kind of accelerate config that wrote it."
        )
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    layouts = plan_new_world_size(
        state.settings, accelerator.num_processes, args.per_device_train_batch_size, checkpoint, deepspeed
    )
    ignored = (*LENGTH_SETTINGS, "checkpoint_format")
    if layouts is not None:
        # Another number of processes: the global batch is kept, split anew; these settings follow from it.
        new = layouts[1]
        args.per_device_train_batch_size, args.gradient_accumulation_steps = new.per_device_batch, new.accumulation
        settings.update(per_device_train_batch_size=new.per_device_batch, gradient_accumulation_steps=new.accumulation)
        ignored += WORLD_SIZE_SETTINGS
    current = {k: v for k, v in settings.items() if k not in ignored}
    changes = changed_settings(state.settings, current)
    if changes and not args.accept_changed_settings:
        raise UserError(
            f"Resuming {checkpoint} with changed settings ({'; '.join(changes)}): the run would no longer continue "
            "as it started. Restore them, or pass --accept_changed_settings to continue knowingly."
        )
    if changes:
        logger.warning(f"Resuming with changed settings, as asked: {'; '.join(changes)}.", main_process_only=True)
    plan = ResumePlan(checkpoint, state, layouts)
    if layouts is not None:
        _continue_on_new_world_size(accelerator, plan)
    if (done := finished_results(output_dir, state, settings)) is not None:
        logger.warning(
            f"The run in {output_dir} already finished at step {state.completed_steps} of "
            f"{state.total_steps}: nothing to do (ask for more with --max_train_steps).",
            main_process_only=True,
        )
        plan.finished = done
    return plan


def _continue_on_new_world_size(accelerator: Accelerator, plan: ResumePlan) -> None:
    """Take up a checkpoint of another number of processes: the new batch split, and where its epoch stands in it."""
    (saved, new), state = plan.layouts, plan.state
    accelerator.gradient_accumulation_steps = new.accumulation
    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        plugin.deepspeed_config["gradient_accumulation_steps"] = new.accumulation
        plugin.deepspeed_config["checkpoint"] = {"load_universal": True}
    examples = state.batches_in_epoch * saved.per_device_batch * saved.num_processes
    state.batches_in_epoch = micro_batches_to_skip(saved, state.batches_in_epoch, new)
    logger.info(
        f"{plan.checkpoint} was written by {saved.num_processes} process(es), this run has {new.num_processes}: "
        f"{new.describe()} keeps the global batch of {saved.describe()}; training continues at example {examples} "
        f"of epoch {state.epoch}, in the same order.",
        main_process_only=True,
    )


def check_resumed_data(plan: ResumePlan, settings: dict, identity: dict, accept_changed: bool) -> None:
    """Record the loaded dataset's `identity` in `settings`; a resumed run refuses other data under the same path
    (its rows or labels changed) unless `accept_changed`."""
    settings["dataset_identity"] = identity
    recorded = (plan.state.settings or {}).get("dataset_identity") if plan.state is not None else None
    if recorded is None or not (changes := identity_changes(recorded, identity)):
        return
    if not accept_changed:
        raise UserError(
            f"Resuming {plan.checkpoint}: the dataset is not the one the checkpoint was trained on ({changes[0]}"
            f"{f'; {len(changes) - 1} more' if len(changes) > 1 else ''}). Restore it, or pass "
            "--accept_changed_settings to continue knowingly."
        )
    logger.warning(f"Resuming on changed data, as asked: {'; '.join(changes)}.", main_process_only=True)


def check_resumed_model(plan: ResumePlan, model_config) -> None:
    """A resumed run's model must have the checkpoint's shape."""
    if plan.checkpoint is not None:
        check_compatible(plan.checkpoint, model_config)


def restore(
    plan: ResumePlan, accelerator: Accelerator, model, scheduler, frozen: bool, ema, total_steps: int, settings: dict
) -> TrainerState:
    """The state the loop starts from: a fresh one, or the checkpoint's, with model, optimizer, schedule, RNG and the
    methods' states loaded from it (also on a new process count, where DeepSpeed reads its universal conversion)."""
    if plan.checkpoint is None:
        return TrainerState(total_steps=total_steps, settings=settings)
    resumed, resume_dir = plan.state, plan.checkpoint
    load_kwargs = methods.state_kwargs(accelerator, frozen, saving=False)
    if plan.layouts is not None and accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate loads DeepSpeed's states from their own tag only; the universal conversion lies beside it.
        # Each process's random streams (dropout, drop path) belong to the old process count and are not taken.
        model.load_checkpoint(str(resume_dir), tag=UNIVERSAL_TAG, **load_kwargs)
        if ema is not None:
            ema.load(resume_dir)  # accelerate's load hooks, which read it otherwise, do not run on this path
    else:
        accelerator.load_state(str(resume_dir), **load_kwargs)
    if plan.layouts is not None:
        # load_state restored accelerate's micro-batch counter, which places the accumulation windows, as the old
        # split counted it; in the new split this process has consumed `batches_in_epoch` micro-batches.
        accelerator.step = resumed.batches_in_epoch
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate keeps a schedule prepared apart from the model out of DeepSpeed checkpoints (it expects
        # DeepSpeed to hold it): the schedule is a function of the step alone, so replaying the steps restores it.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            for _ in range(resumed.completed_steps):
                scheduler.step()
    resumed.total_steps, resumed.settings, resumed.files = total_steps, settings, None
    return resumed


def finished_results(output_dir: Path, state: TrainerState, settings: dict | None) -> dict | None:
    """The results of a run that already reached its planned length (`settings`: when this resume asks for no more
    steps; None: whatever it asks)."""
    results_file = output_dir / RESULTS_FILE
    same_length = settings is None or all((state.settings or {}).get(k) == settings[k] for k in LENGTH_SETTINGS)
    ended = state.completed_steps >= (state.total_steps or 0) or state.early_stopped_at is not None
    if state.total_steps is None or not ended or not same_length:
        return None
    if not results_file.is_file():
        return None  # stopped between its last checkpoint and its final save: resuming completes that save
    try:
        results = json.loads(results_file.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("train_steps") == state.completed_steps else None

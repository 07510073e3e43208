"""Fine-tune a ViT with Accelerate: the accelerate config file alone picks CPU, GPU, DDP or DeepSpeed ZeRO.

    accelerate launch --config_file accelerate_configs/<mode>.yaml train.py [recipe.yaml] [--flag value ...]

The loop has the shape of accelerate's own examples: `prepare` once, `accumulate`, `backward`, `clip_grad_norm_`,
`gather_for_metrics`. Everything that can fail on a user's input is checked before the dataset is read. Run
`python train.py --help` for every argument.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, TorchDynamoPlugin, gather_object, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vit_accel.data import (
    ImageClassificationDataset,
    build_pipeline,
    dataset_identity,
    identity_changes,
    load_image_dataset,
    make_dataloader,
)
from vit_accel.errors import UserError, report
from vit_accel.evaluation import evaluate_classifier
from vit_accel.hub import push_to_hub, write_model_card
from vit_accel.training import methods
from vit_accel.training.arguments import parse_args, recorded_arguments, recorded_command
from vit_accel.training.checkpointing import (
    TrainerState,
    changed_settings,
    check_compatible,
    checkpoint_format,
    list_checkpoints,
    remove_stale_checkpoints,
    resolve_checkpoint,
    resume_settings,
    rotate_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)
from vit_accel.training.distributed import (
    UNIVERSAL_TAG,
    WORLD_SIZE_SETTINGS,
    BatchLayout,
    create_accelerator,
    micro_batches_to_skip,
    parameter_checksum,
    plan_new_world_size,
)
from vit_accel.training.model import build_model, save_final_model
from vit_accel.training.optim import build_optimizer, build_scheduler
from vit_accel.training.preflight import (
    check_hub_repo,
    check_metric_cache,
    check_model_source,
    check_output_dir,
    check_precision_and_accumulation,
    check_process_group,
    check_trackers,
    lock_output_dir,
    main_process_first,
    on_main_process,
    release_output_dir_locks,
)
from vit_accel.training.reporting import CURVES_FILE, JsonlLog, check_finite_loss, plot_curves

logger = get_logger(__name__, log_level="INFO")
# The run's length may change on resume (asking for more steps trains further); every other setting may not.
LENGTH_SETTINGS = ("max_train_steps", "num_train_epochs")


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


def plan_resume(
    accelerator: Accelerator, args, settings: dict, output_dir: Path
) -> tuple[Path | None, TrainerState | None, tuple[BatchLayout, BatchLayout] | None]:
    """The checkpoint to resume, its state and, when it was written by another number of processes, its batch layout
    and this run's; after checking that it is whole and that this run continues it."""
    if not args.resume_from_checkpoint:
        return None, None, None
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
    return checkpoint, state, layouts


def continue_on_new_world_size(accelerator: Accelerator, state: TrainerState, checkpoint: Path, layouts) -> None:
    """Take up a checkpoint of another number of processes: the new batch split, and where its epoch stands in it."""
    saved, new = layouts
    accelerator.gradient_accumulation_steps = new.accumulation
    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        plugin.deepspeed_config["gradient_accumulation_steps"] = new.accumulation
        plugin.deepspeed_config["checkpoint"] = {"load_universal": True}
    examples = state.batches_in_epoch * saved.per_device_batch * saved.num_processes
    state.batches_in_epoch = micro_batches_to_skip(saved, state.batches_in_epoch, new)
    logger.info(
        f"{checkpoint} was written by {saved.num_processes} process(es), this run has {new.num_processes}: "
        f"{new.describe()} keeps the global batch of {saved.describe()}; training continues at example {examples} "
        f"of epoch {state.epoch}, in the same order.",
        main_process_only=True,
    )


def load_resumed_state(accelerator, model, scheduler, resume_dir: Path, resumed: TrainerState, layouts, frozen, ema):
    """Restore model, optimizer, schedule, RNG and the methods' states from `resume_dir` (also on a new process
    count, where DeepSpeed reads its universal conversion)."""
    load_kwargs = methods.state_kwargs(accelerator, frozen, saving=False)
    if layouts is not None and accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate loads DeepSpeed's states from their own tag only; the universal conversion lies beside it.
        # Each process's random streams (dropout, drop path) belong to the old process count and are not taken.
        model.load_checkpoint(str(resume_dir), tag=UNIVERSAL_TAG, **load_kwargs)
        if ema is not None:
            ema.load(resume_dir)  # accelerate's load hooks, which read it otherwise, do not run on this path
    else:
        accelerator.load_state(str(resume_dir), **load_kwargs)
    if layouts is not None:
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


@contextlib.contextmanager
def interruption_report(output_dir: Path, state: TrainerState):
    """Ctrl-C during training ends with one line saying where the run stands and how to resume it."""
    try:
        yield
    except KeyboardInterrupt:
        last = [p.name for p in list_checkpoints(output_dir)]
        where = (
            f"the last complete checkpoint is {last[-1]}: resume with --resume_from_checkpoint latest"
            if last
            else "no checkpoint was written yet (see --checkpointing_steps)"
        )
        raise Interrupted(f"interrupted at step {state.completed_steps}; {where}.") from None


class Interrupted(Exception):
    """Training stopped by Ctrl-C; the message says where it stands."""


def finished_results(output_dir: Path, state: TrainerState, settings: dict | None) -> dict | None:
    """The results of a run that already reached its planned length (`settings`: when this resume asks for no more
    steps; None: whatever it asks)."""
    results_file = output_dir / "all_results.json"
    same_length = settings is None or all((state.settings or {}).get(k) == settings[k] for k in LENGTH_SETTINGS)
    if state.total_steps is None or state.completed_steps < state.total_steps or not same_length:
        return None
    if not results_file.is_file():
        return None  # stopped between its last checkpoint and its final save: resuming completes that save
    try:
        results = json.loads(results_file.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("train_steps") == state.completed_steps else None


class AccumulationWindows:
    """How many examples each accumulation window of an epoch holds on this process.

    The loss of a micro-batch is its examples' sum divided by its window's examples, so that every optimizer step
    averages over the examples it really saw: the last window of an epoch may hold fewer micro-batches than
    --gradient_accumulation_steps, and its last batch fewer examples. Only an epoch's last batch can be short: with
    several processes accelerate completes it (`even_batches`), with one it holds what is left.
    """

    def __init__(self, num_batches: int, batch_size: int, num_examples: int, steps: int, num_processes: int):
        self.num_batches, self.batch_size, self.steps = num_batches, batch_size, steps
        last = num_examples - (num_batches - 1) * batch_size
        self.last_size = batch_size if num_processes > 1 or last <= 0 else min(last, batch_size)

    def batch_size_of(self, index: int) -> int:
        return self.last_size if index == self.num_batches - 1 else self.batch_size

    def examples(self, index: int, batch_size: int) -> int:
        """Examples in the window holding batch `index` (0-based within the epoch), whose size is `batch_size`."""
        if batch_size != self.batch_size_of(index):  # a loader that does not batch as assumed: a bug, not bad input
            raise RuntimeError(
                f"Batch {index} holds {batch_size} examples, not the {self.batch_size_of(index)} expected."
            )
        start = (index // self.steps) * self.steps
        end = min(start + self.steps, self.num_batches)
        return sum(self.batch_size_of(i) for i in range(start, end))


class LossMeter:
    """The mean training loss and throughput since the last read, over all processes.

    The sums stay on the device between reads: a `.item()` per step would make every step wait for the accelerator.
    """

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.totals = torch.zeros(2, device=accelerator.device)  # loss sum, examples
        self.start = time.perf_counter()

    def add(self, losses: torch.Tensor) -> None:
        self.totals[0] += losses.detach().sum()
        self.totals[1] += losses.numel()

    def read(self) -> tuple[float, float]:
        loss_sum, examples = self.accelerator.reduce(self.totals, "sum").tolist()
        elapsed = time.perf_counter() - self.start
        self.totals.zero_()
        self.start = time.perf_counter()
        return loss_sum / max(examples, 1), round(examples / elapsed, 2)


class Reporter:
    """Where a run's numbers go: log.jsonl, the trackers, and one progress bar with messages printed above it.

    Step records (loss, lr, ...) go to the log file, the trackers and the bar; on a terminal they do not also print
    as lines, which would cut through the bar. Without a terminal (a log file) there is no bar, and they print.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, total_steps: int, initial_step: int):
        self.accelerator = accelerator
        self.output_dir, self.initial_step, self.claimed = output_dir, initial_step, False
        self.log = JsonlLog(output_dir, enabled=accelerator.is_main_process)
        show_bar = accelerator.is_local_main_process and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=not show_bar, unit="step", dynamic_ncols=True)

    def claim(self) -> None:
        """Before the run's first write: make the directory hold this run alone, as it stands (no half-written
        checkpoints, no checkpoints or log lines from past the step it starts at: an overwritten run, or the abandoned
        future of an older checkpoint resumed). Done this late so that a run failing before its first step deletes
        nothing."""
        if self.claimed:
            return
        self.claimed = True
        if self.accelerator.is_main_process:
            removed = remove_stale_checkpoints(self.output_dir, self.initial_step)
            if removed:
                self.info(f"Removed {', '.join(removed)}: they come after the step this run started from.")
            self.log.truncate_after(self.initial_step)

    def training(self, record: dict) -> None:
        self.claim()
        self.log.write(record)
        self.accelerator.log(record, step=record["step"])
        check_finite_loss(record, self.output_dir)
        if self.bar.disable:
            self.info(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
        else:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def evaluation(self, record: dict) -> None:
        self.claim()
        self.log.write(record)
        self.accelerator.log(record, step=record["step"])
        self.info(f"step {record['step']}: " + " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "step"))

    def info(self, message: str) -> None:
        logger.info(message, main_process_only=True)


def checkpoint(
    accelerator: Accelerator, model, state: TrainerState, datasets: tuple, args, frozen: bool, reporter: Reporter
) -> None:
    """Save `checkpoint-{step}` (with the unreadable rows found so far), rotate old ones, push it if asked."""
    output_dir = Path(args.output_dir)
    reporter.claim()
    if state.best_step == state.completed_steps:
        state.best_checkpoint = f"checkpoint-{state.completed_steps}"
    state.bad_rows = {
        split: gather_bad_rows(accelerator, dataset, state.bad_rows.get(split, []))
        for split, dataset in zip(("train", "validation"), datasets)
    }
    saved = save_checkpoint(
        accelerator,
        output_dir,
        state,
        methods.base_config(accelerator.unwrap_model(model)),
        methods.state_kwargs(accelerator, frozen, saving=True),
    )
    if accelerator.is_main_process:
        rotate_checkpoints(output_dir, args.save_total_limit, keep=state.best_checkpoint)
        if args.push_to_hub and args.hub_strategy == "checkpoint":
            push_to_hub(saved, args.hub_model_id, args.hub_private_repo, "last-checkpoint", args.hub_token)


def gather_bad_rows(accelerator: Accelerator, dataset: ImageClassificationDataset, known: list[int]) -> list[int]:
    """Unreadable rows found by any process so far, with those recorded before a resume."""
    return sorted(set(known) | set(gather_object(dataset.bad_rows)))


def main(argv: list[str] | None = None) -> dict:
    """Train as the arguments say; returns the final results (also written to all_results.json)."""
    try:
        return train(argv)
    finally:
        release_output_dir_locks()


def train(argv: list[str] | None) -> dict:
    model_args, data_args, args = parse_args(argv)
    methods.check_run(model_args, args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    output_dir = Path(args.output_dir)

    # Everything that can fail on the user's input, before the dataset is read and the model built.
    accelerator = build_accelerator(args)
    check_process_group(accelerator)
    check_precision_and_accumulation(accelerator, args.gradient_accumulation_steps)
    methods.check_accelerator(accelerator, args)
    check_model_source(model_args.model_name_or_path, model_args.from_scratch, model_args.attn_implementation)
    check_metric_cache()
    if args.hub_token:
        logger.warning("--hub_token is deprecated: set HF_TOKEN or run `hf auth login`.", main_process_only=True)
    settings = resume_settings((model_args, data_args, args), accelerator.num_processes)
    settings.update({k: getattr(args, k) for k in LENGTH_SETTINGS})
    settings["checkpoint_format"] = checkpoint_format(accelerator.distributed_type)
    resume_dir, resumed, layouts = plan_resume(accelerator, args, settings, output_dir)
    if layouts is not None:
        continue_on_new_world_size(accelerator, resumed, resume_dir, layouts)
    if resumed is not None and (done := finished_results(output_dir, resumed, settings)) is not None:
        logger.warning(
            f"The run in {output_dir} already finished at step {resumed.completed_steps} of "
            f"{resumed.total_steps}: nothing to do (ask for more with --max_train_steps).",
            main_process_only=True,
        )
        return done
    if args.push_to_hub:
        on_main_process(accelerator, lambda: check_hub_repo(args.hub_model_id, args.hub_token))
    inputs = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--dataset_name": data_args.dataset_name,
        "--train_dir": data_args.train_dir,
        "--validation_dir": data_args.validation_dir,
    }

    def take_output_dir() -> None:
        # The main process alone: another's write probe would look like a foreign file to this one's check.
        check_output_dir(output_dir, resume_dir is not None, args.overwrite_output_dir, inputs)
        lock_output_dir(output_dir)

    on_main_process(accelerator, take_output_dir)
    set_seed(args.seed)

    # Only the main process downloads/prepares the dataset; the others then read the cache.
    data = main_process_first(accelerator, lambda: load_image_dataset(data_args, seed=args.seed))
    # The same path may hold other data than the checkpoint was trained on: its rows and labels are compared too.
    settings["dataset_identity"] = dataset_identity(data)
    recorded = (resumed.settings or {}).get("dataset_identity") if resumed is not None else None
    if recorded is not None and (changes := identity_changes(recorded, settings["dataset_identity"])):
        if not args.accept_changed_settings:
            raise UserError(
                f"Resuming {resume_dir}: the dataset is not the one the checkpoint was trained on ({changes[0]}"
                f"{f'; {len(changes) - 1} more' if len(changes) > 1 else ''}). Restore it, or pass "
                "--accept_changed_settings to continue knowingly."
            )
        logger.warning(f"Resuming on changed data, as asked: {'; '.join(changes)}.", main_process_only=True)
    model, mean, std = build_model(model_args, data.labels)
    if resume_dir is not None:
        check_compatible(resume_dir, model.config)
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    image_size = model.config.image_size
    # What trains (LoRA adapters, unfrozen layers), the EMA copy, batch mixing; checkpoints then hold what changes.
    model = methods.setup_model(model, model_args, args)
    frozen = methods.has_frozen_parameters(model)
    ema = methods.build_ema(model, args, accelerator)
    mixer = methods.build_mixer(args, len(data.labels))
    methods.register_checkpointing(accelerator, frozen, ema)
    train_pipeline = build_pipeline(
        data_args.augmentation, image_size, mean, std, train=True, random_erasing=data_args.random_erasing
    )
    eval_pipeline = build_pipeline(data_args.augmentation, image_size, mean, std, train=False)
    train_set = ImageClassificationDataset(data.train, train_pipeline, seed=args.seed, bad_images=data_args.bad_images)
    eval_set = ImageClassificationDataset(
        data.validation, eval_pipeline, seed=args.seed, bad_images=data_args.bad_images
    )
    train_loader = make_dataloader(
        train_set, args.per_device_train_batch_size, True, args.seed, data_args.dataloader_num_workers
    )
    eval_loader = make_dataloader(
        eval_set, args.per_device_eval_batch_size, False, args.seed, data_args.dataloader_num_workers
    )

    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        # DeepSpeed clips inside its own step, with the value from its config: hand it ours.
        plugin.deepspeed_config["gradient_clipping"] = args.max_grad_norm
    optimizer = build_optimizer(model, args)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    # Counted after `prepare`, which shards the loader: these are this process's batches.
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(train_loader) / accumulation)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = accelerator.prepare(build_scheduler(optimizer, args, total_steps))
    eval_every = args.eval_steps or steps_per_epoch
    checkpoint_every = steps_per_epoch if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps or 0)
    windows = AccumulationWindows(
        len(train_loader), args.per_device_train_batch_size, len(train_set), accumulation, accelerator.num_processes
    )

    state = TrainerState(total_steps=total_steps, settings=settings)
    if resume_dir is not None:
        if resumed.completed_steps > total_steps:
            logger.warning(
                f"The run in {output_dir} is already at step {resumed.completed_steps}, past the {total_steps} asked "
                "for: nothing to do.",
                main_process_only=True,
            )
            return finished_results(output_dir, resumed, None) or {"train_steps": resumed.completed_steps}
        load_resumed_state(accelerator, model, scheduler, resume_dir, resumed, layouts, frozen, ema)
        state = resumed
        state.total_steps, state.settings, state.files = total_steps, settings, None
    reporter = Reporter(accelerator, output_dir, total_steps, state.completed_steps)
    if args.with_tracking:
        accelerator.init_trackers("vit_accel", config=tracker_config(model_args, data_args, args))
    if resume_dir is not None:
        reporter.info(f"Resumed from {resume_dir} at step {state.completed_steps}")
    reporter.info(
        f"{len(data.train)} training / {len(data.validation)} eval images, {len(data.labels)} classes; "
        f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}), global batch "
        f"{args.per_device_train_batch_size * accelerator.num_processes * accumulation}, {total_steps} optimizer steps"
    )
    reporter.info(methods.parameter_summary(accelerator.unwrap_model(model)))

    results: dict = dict(state.last_eval or {})
    meter = LossMeter(accelerator)
    compute_dtype = None
    model.train()
    with logging_redirect_tqdm(loggers=[logging.root]), interruption_report(output_dir, state):
        while state.completed_steps < total_steps and state.epoch < num_epochs:
            loader = train_loader
            if state.batches_in_epoch:
                # Resumed mid-epoch: the shuffle order is a function of (seed, epoch), so skipping the batches already
                # seen puts us exactly where the interrupted run was.
                loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
            # On the prepared loader, not the dataset: accelerate re-applies the loader's own epoch counter at each
            # iteration, which restarts at 0 in a resumed process.
            loader.set_epoch(state.epoch)
            for batch in loader:
                examples = windows.examples(state.batches_in_epoch, batch["labels"].shape[0])
                with accelerator.accumulate(model):
                    pixel_values = train_pipeline.on_device(batch["pixel_values"])
                    # Mixup/CutMix after the resize, seeded by the batch's place in the run (restored on resume).
                    pixel_values, targets = methods.mix_batch(
                        mixer, pixel_values, batch["labels"], args, state.epoch, state.batches_in_epoch,
                        accelerator.process_index,
                    )  # fmt: skip
                    logits = model(pixel_values=pixel_values).logits
                    compute_dtype = logits.dtype  # what mixed precision really gave: recorded in the results
                    losses = methods.training_losses(logits, batch["labels"], args, targets)
                    # accelerate (and DeepSpeed) divide by the accumulation steps: this makes the step's gradient the
                    # mean over the window's examples, however many micro-batches it really had.
                    accelerator.backward(losses.sum() * (accumulation / examples))
                    grad_norm = None
                    if accelerator.sync_gradients and args.max_grad_norm > 0:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                state.batches_in_epoch += 1
                meter.add(losses)
                if not accelerator.sync_gradients:
                    continue

                scheduler.step()
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
                state.completed_steps += 1
                reporter.bar.update(1)
                if len(train_loader) == state.batches_in_epoch:
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                last_step = state.completed_steps == total_steps

                if state.completed_steps % args.logging_steps == 0 or last_step:
                    loss, images_per_second = meter.read()
                    record = {
                        "step": state.completed_steps,
                        "epoch": round(state.epoch + state.batches_in_epoch / len(train_loader), 4),
                        "loss": loss,
                        "lr": scheduler.get_last_lr()[0],
                        "global_batch": examples * accelerator.num_processes,
                        "images_per_second": images_per_second,
                    }
                    reporter.training(record if grad_norm is None else {**record, "grad_norm": float(grad_norm)})

                if state.completed_steps % eval_every == 0 or last_step:
                    evaluation = evaluate_classifier(
                        accelerator, model, eval_loader, eval_pipeline.on_device, len(data.labels)
                    )
                    results = evaluation.metrics()
                    if ema is not None:
                        ema_evaluation = evaluate_classifier(
                            accelerator, ema.module, eval_loader, eval_pipeline.on_device, len(data.labels)
                        )
                        results |= ema_evaluation.metrics(prefix="ema_eval_")
                    state.last_eval = results
                    reporter.evaluation({"step": state.completed_steps, "epoch": state.epoch, **results})
                    if state.best_metric is None or results["eval_top1"] > state.best_metric:
                        state.best_metric, state.best_step = results["eval_top1"], state.completed_steps

                if checkpoint_every and state.completed_steps % checkpoint_every == 0:
                    checkpoint(accelerator, model, state, (train_set, eval_set), args, frozen, reporter)

                if state.completed_steps >= total_steps:
                    break
    reporter.bar.close()
    reporter.claim()  # a resumed run may have had no step left to train

    bad_train = gather_bad_rows(accelerator, train_set, state.bad_rows.get("train", []))
    bad_eval = gather_bad_rows(accelerator, eval_set, state.bad_rows.get("validation", []))
    # Data-parallel replicas must hold the same weights; differing checksums mean the processes were not in sync.
    checksum = parameter_checksum(model).to(accelerator.device)
    trainable, total = methods.count_parameters(accelerator.unwrap_model(model))
    final_model = methods.choose_final(args, results)
    final = {
        "train_steps": state.completed_steps,
        **results,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "replica_checksums": accelerator.gather(checksum).tolist(),
        **methods.ema_checksums(accelerator, ema),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "final_model": final_model,
        "compute_dtype": str(compute_dtype).removeprefix("torch.") if compute_dtype is not None else None,
        "train_unreadable_images": len(bad_train),
        "eval_unreadable_images": len(bad_eval),
    }
    if data_args.bad_images == "skip":
        reporter.log.write({"step": state.completed_steps, **{k: final[k] for k in final if "unreadable" in k}})
    if bad_train or bad_eval:
        reporter.info(
            f"Unreadable images replaced (--bad_images skip): {len(bad_train)} training rows {bad_train[:10]}, "
            f"{len(bad_eval)} evaluation rows {bad_eval[:10]}."
        )
    command = recorded_command([os.path.basename(sys.argv[0]), *sys.argv[1:]])
    record = {"command": command, **recorded_arguments(model_args, data_args, args)}
    saved_model = ema.module if final_model == "ema" else model
    if args.peft:
        methods.save_adapter_outputs(
            accelerator, saved_model, output_dir, args, methods.processor_writer(image_size, mean, std), final, record
        )
    else:
        save_final_model(accelerator, saved_model, output_dir, mean, std, final, record)
    if accelerator.is_main_process:
        plot_curves(reporter.log.records(), output_dir / CURVES_FILE)
        if not args.peft:  # the adapter directory has its own card, saying how to load it
            write_model_card(output_dir)
        if args.push_to_hub:
            # An adapter run pushes the adapter; its merged copy (--merge_adapter) stays local.
            url = push_to_hub(
                output_dir,
                args.hub_model_id,
                args.hub_private_repo,
                token=args.hub_token,
                exclude=[f"{methods.MERGED_DIR}/*"] if args.peft else (),
            )
            reporter.info(f"Pushed to {url}")
    accelerator.end_training()
    return final


def tracker_config(*arguments) -> dict:
    """Hyperparameters for the trackers: every argument that is set, the token left out."""
    flat = {k: v for values in recorded_arguments(*arguments).values() for k, v in values.items()}
    return {k: v for k, v in flat.items() if v is not None and k != "hub_token"}


def cli() -> None:
    try:
        results = main()
    except UserError as error:
        sys.exit(report("train.py", error))
    except Interrupted as interruption:
        print(f"train.py: {interruption}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("train.py: interrupted before training started; nothing was written.", file=sys.stderr)
        sys.exit(130)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results))


if __name__ == "__main__":
    cli()

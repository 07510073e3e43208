"""Fine-tune a ViT with Accelerate: the accelerate config file alone picks CPU, GPU, DDP or DeepSpeed ZeRO.

    accelerate launch --config_file accelerate_configs/<mode>.yaml train.py [recipe.yaml] [--flag value ...]

The loop has the shape of accelerate's own examples: `prepare` once, `accumulate`, `backward`, `clip_grad_norm_`,
`gather_for_metrics`. Everything that can fail on a user's input is checked before the dataset is read. Run
`python train.py --help` for every argument.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vit_accel.training.arguments import exit_if_help

if __name__ == "__main__":
    exit_if_help()  # answered before torch and accelerate load, which takes seconds

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.contrib.logging import logging_redirect_tqdm

from vit_accel.data import (
    ImageClassificationDataset,
    build_pipeline,
    dataset_identity,
    load_image_dataset,
    make_dataloader,
)
from vit_accel.eval_loop import evaluate_classifier
from vit_accel.training import best, methods, resume, session
from vit_accel.training.arguments import parse_args
from vit_accel.training.eval_only import evaluate_only
from vit_accel.training.finish import finish_run
from vit_accel.training.freezing import has_frozen_parameters
from vit_accel.training.loop import (
    AccumulationWindows,
    LossMeter,
    interruption_report,
    save_step_checkpoint,
)
from vit_accel.training.model import build_model
from vit_accel.training.optim import build_optimizer, build_scheduler
from vit_accel.training.preflight import (
    check_metric_cache,
    main_process_first,
    on_main_process,
    release_output_dir_locks,
)
from vit_accel.training.reporting import Reporter
from vit_accel.training.session import check_destinations, run_length, tracker_config

logger = get_logger(__name__, log_level="INFO")


def main(argv: list[str] | None = None) -> dict:
    """Train as the arguments say; returns the final results (also written to all_results.json)."""
    try:
        return train(argv)
    finally:
        release_output_dir_locks()


def train(argv: list[str] | None) -> dict:
    model_args, data_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    output_dir = Path(args.output_dir)
    # Everything that can fail on the user's input, before the dataset is read and the model built.
    accelerator = checked_accelerator(model_args, args)
    settings = resume.run_settings((model_args, data_args, args), accelerator)
    plan = resume.plan_resume(accelerator, args, settings, output_dir)
    if plan.finished is not None and not args.eval_only:
        return plan.finished
    # The main process alone: another's write probe would look like a foreign file to this one's check.
    on_main_process(accelerator, lambda: check_destinations(plan, model_args, data_args, args))
    set_seed(args.seed)

    # Only the main process downloads/prepares the dataset; the others then read the cache.
    data = main_process_first(accelerator, lambda: load_image_dataset(data_args, seed=args.seed))
    resume.check_resumed_data(plan, settings, dataset_identity(data), args.accept_changed_settings)
    model, mean, std = build_model(model_args, data.labels)
    resume.check_resumed_model(plan, model.config)
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    pipelines = build_pipelines(data_args, model.config.image_size, mean, std)
    train_pipeline, eval_pipeline = pipelines
    (train_set, train_loader), (eval_set, eval_loader) = data_loaders(data, pipelines, data_args, args)
    # What trains (LoRA adapters, unfrozen layers), the EMA copy, batch mixing; checkpoints then hold what changes.
    model = methods.setup_model(model, model_args, args)
    frozen = has_frozen_parameters(model)
    ema = methods.build_ema(model, args, accelerator)
    mixer = methods.build_mixer(args, len(data.labels))
    methods.register_checkpointing(accelerator, frozen, ema)
    optimizer = build_optimizer(model, args)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    # Counted after `prepare`, which shards the loader: these are this process's batches.
    accumulation = args.gradient_accumulation_steps
    total_steps, num_epochs, eval_every, checkpoint_every = run_length(len(train_loader), args)
    scheduler = accelerator.prepare(build_scheduler(optimizer, args, total_steps))
    windows = AccumulationWindows.of(train_loader, train_set, args, accelerator)
    if args.eval_only:  # the model as given, or the checkpoint's weights (a finished run's too): no training
        step = resume.restore(plan, accelerator, model, scheduler, frozen, ema, total_steps, settings).completed_steps
        step = step if plan.checkpoint is not None else None
        return evaluate_only(accelerator, model, ema, eval_loader, eval_pipeline.on_device, data, output_dir, step)
    if (done := plan.past_the_end(total_steps, output_dir)) is not None:
        return done
    state = resume.restore(plan, accelerator, model, scheduler, frozen, ema, total_steps, settings)
    reporter = Reporter(accelerator, output_dir, total_steps, state.completed_steps)
    announce(reporter, accelerator, plan, state, data, (model_args, data_args, args), model)

    results, meter, compute_dtype = dict(state.last_eval or {}), LossMeter(accelerator), None
    model.train()
    with logging_redirect_tqdm(loggers=[logging.root]), interruption_report(output_dir, state):
        while state.completed_steps < total_steps and state.epoch < num_epochs and state.early_stopped_at is None:
            loader = train_loader
            if state.batches_in_epoch:
                # Resumed mid-epoch: the shuffle order is a function of (seed, epoch), so skipping the batches already
                # seen puts us exactly where the interrupted run was.
                loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
            # On the prepared loader, not the dataset: accelerate re-applies the loader's own epoch counter at each
            # iteration, which restarts at 0 in a resumed process.
            loader.set_epoch(state.epoch)
            for batch in meter.batches(loader):
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
                    loss, images_per_second, data_wait = meter.read()
                    record = {
                        "step": state.completed_steps,
                        "epoch": round(state.epoch + state.batches_in_epoch / len(train_loader), 4),
                        "loss": loss,
                        "lr": scheduler.get_last_lr()[0],
                        "global_batch": examples * accelerator.num_processes,
                        "images_per_second": images_per_second,
                        "data_wait_seconds": data_wait,  # in next(loader) since the last record, this process
                    }
                    reporter.training(record if grad_norm is None else {**record, "grad_norm": float(grad_norm)})

                if state.completed_steps % eval_every == 0 or last_step:
                    results = evaluate(accelerator, model, ema, eval_loader, eval_pipeline, len(data.labels))
                    state.last_eval = results
                    best.record_evaluation(state, results, args.metric_for_best_model, args.early_stopping_patience)
                    reporter.evaluation({"step": state.completed_steps, "epoch": state.epoch, **results})

                if checkpoint_every and state.completed_steps % checkpoint_every == 0:
                    save_step_checkpoint(accelerator, model, state, (train_set, eval_set), args, frozen, reporter)

                if state.completed_steps >= total_steps or state.early_stopped_at is not None:
                    break
        reporter.bar.close()
        reporter.claim()  # a resumed run may have had no step left to train

    evaluated = {**best.results(state, args), "eval_split": data.eval_split, "eval_num_examples": len(data.validation)}
    return finish_run(
        accelerator, model, ema, state, results, compute_dtype, (train_set, eval_set), reporter,
        (model_args, data_args, args), (mean, std), evaluated,
    )  # fmt: skip


def checked_accelerator(model_args, args) -> Accelerator:
    """The run's `Accelerator`, after every check of the flags, the launch, the accelerate config and the model
    source (nothing is loaded yet)."""
    methods.check_run(model_args, args)
    accelerator = session.checked_accelerator(model_args, args, lambda built: methods.check_accelerator(built, args))
    check_metric_cache()
    if args.hub_token:
        logger.warning("--hub_token is deprecated: set HF_TOKEN or run `hf auth login`.", main_process_only=True)
    return accelerator


def build_pipelines(data_args, image_size, mean, std) -> tuple:
    """(training, evaluation) pipelines of the --augmentation preset at the model's size and normalisation."""
    augmentation = data_args.augmentation
    return (
        build_pipeline(augmentation, image_size, mean, std, train=True, random_erasing=data_args.random_erasing),
        build_pipeline(augmentation, image_size, mean, std, train=False),
    )


def data_loaders(data, pipelines: tuple, data_args, args) -> tuple:
    """((training set, its loader), (evaluation set, its loader)), each set read through its pipeline."""
    loaders = []
    for split, pipeline, batch_size, shuffle in (
        (data.train, pipelines[0], args.per_device_train_batch_size, True),
        (data.validation, pipelines[1], args.per_device_eval_batch_size, False),
    ):
        dataset = ImageClassificationDataset(split, pipeline, seed=args.seed, bad_images=data_args.bad_images)
        loaders.append(
            (dataset, make_dataloader(dataset, batch_size, shuffle, args.seed, data_args.dataloader_num_workers))
        )
    return tuple(loaders)


def evaluate(accelerator: Accelerator, model, ema, eval_loader, eval_pipeline, num_labels: int) -> dict:
    """Evaluation metrics of the model (`eval_*`) and of its EMA (`ema_eval_*`, with --ema_decay)."""
    results = evaluate_classifier(accelerator, model, eval_loader, eval_pipeline.on_device, num_labels).metrics()
    if ema is not None:
        evaluation = evaluate_classifier(accelerator, ema.module, eval_loader, eval_pipeline.on_device, num_labels)
        results |= evaluation.metrics(prefix="ema_eval_")
    return results


def announce(reporter: Reporter, accelerator: Accelerator, plan, state, data, arguments: tuple, model) -> None:
    """Start the trackers (--with_tracking) and say what the run is about to do: where it resumed, the data, the
    processes, the batch, the steps, the parameters."""
    args = arguments[-1]
    if args.with_tracking:
        accelerator.init_trackers("vit_accel", config=tracker_config(*arguments))
    if plan.checkpoint is not None:
        reporter.info(f"Resumed from {plan.checkpoint} at step {state.completed_steps}")
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    reporter.info(
        f"{len(data.train)} training / {len(data.validation)} eval images, {len(data.labels)} classes; "
        f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}), global batch "
        f"{global_batch}, {state.total_steps} optimizer steps"
    )
    reporter.info(methods.parameter_summary(accelerator.unwrap_model(model)))


def cli() -> None:
    session.run_cli("train.py", main)


if __name__ == "__main__":
    cli()

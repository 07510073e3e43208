"""Pre-train a ViT as a masked autoencoder (MAE) on images without labels, with Accelerate: the accelerate config
file alone picks CPU, GPU, DDP, DeepSpeed ZeRO or FSDP.

    accelerate launch --config_file accelerate_configs/<mode>.yaml pretrain.py [recipe.yaml] [--flag value ...]

train.py's sibling, as transformers' run_mae.py is run_image_classification.py's: the same arguments, checks,
checkpoints, exact resume and reporting (vit_accel/training/), another model, input and metric. The result is a
`ViTAccelForPreTraining` directory, which `train.py --model_name_or_path <it> ...` fine-tunes. Run
`python pretrain.py --help` for every argument.
"""

from __future__ import annotations

import logging
from pathlib import Path

from vit_accel.training.arguments import exit_if_help
from vit_accel.training.pretraining_arguments import PRETRAINING_ARGUMENT_CLASSES

if __name__ == "__main__":
    exit_if_help(classes=PRETRAINING_ARGUMENT_CLASSES, program="pretrain.py")  # before torch loads

from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.contrib.logging import logging_redirect_tqdm

from vit_accel.data import build_pipeline, dataset_identity, make_dataloader
from vit_accel.data.unlabelled import load_unlabelled_dataset
from vit_accel.training import best, resume, session
from vit_accel.training.arguments import parse_args
from vit_accel.training.finish import finish_run
from vit_accel.training.loop import (
    AccumulationWindows,
    LossMeter,
    count_optimizer_step,
    interruption_report,
    optimizer_step,
    record_evaluation,
    save_step_checkpoint,
    sigterm_as_interrupt,
    training_record,
)
from vit_accel.training.optim import build_optimizer, build_scheduler
from vit_accel.training.preflight import main_process_first, on_main_process, release_output_dir_locks
from vit_accel.training.pretraining import (
    MaskedImageDataset,
    build_pretraining_model,
    evaluate_reconstruction,
    num_patches,
    per_example_losses,
    write_reconstruction_figure,
)
from vit_accel.training.reporting import RECONSTRUCTION_FILE, Reporter


def main(argv: list[str] | None = None) -> dict:
    """Pre-train as the arguments say; returns the final results (also written to all_results.json)."""
    try:
        with sigterm_as_interrupt():
            return pretrain(argv)
    finally:
        release_output_dir_locks()


def pretrain(argv: list[str] | None) -> dict:
    model_args, data_args, args = parse_args(argv, PRETRAINING_ARGUMENT_CLASSES, "pretrain.py")
    arguments = (model_args, data_args, args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    output_dir = Path(args.output_dir)
    accelerator = session.checked_accelerator(model_args, args, check_accelerator=lambda built: None)
    args.scale_learning_rate(accelerator.num_processes)
    settings = resume.run_settings(arguments, accelerator)
    if args.scaled_learning_rate:
        # The rate follows from the base rate and the global batch, which a resume on another process count keeps.
        settings.pop("learning_rate")
    plan = resume.plan_resume(accelerator, args, settings, output_dir)
    args.scale_learning_rate(accelerator.num_processes)  # the same global batch, split anew on another count
    if plan.finished is not None:
        return plan.finished
    on_main_process(accelerator, lambda: session.check_destinations(plan, *arguments))
    set_seed(args.seed)

    data = main_process_first(accelerator, lambda: load_unlabelled_dataset(data_args, seed=args.seed))
    resume.check_resumed_data(plan, settings, dataset_identity(data), args.accept_changed_settings)
    model, mean, std, start = build_pretraining_model(model_args)
    resume.check_resumed_model(plan, model.config)
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    size, augmentation = model.config.image_size, data_args.augmentation
    train_pipeline = build_pipeline(augmentation, size, mean, std, train=True, random_erasing=data_args.random_erasing)
    eval_pipeline = build_pipeline(augmentation, size, mean, std, train=False)
    patches, bad_images = num_patches(model.config), data_args.bad_images
    decoder = data_args.image_decoder
    train_set = MaskedImageDataset(data.train, train_pipeline, args.seed, bad_images, patches, False, decoder)
    eval_set = MaskedImageDataset(data.validation, eval_pipeline, args.seed, bad_images, patches, True, decoder)
    workers = data_args.dataloader_num_workers
    train_loader = make_dataloader(train_set, args.per_device_train_batch_size, True, args.seed, workers)
    eval_loader = make_dataloader(eval_set, args.per_device_eval_batch_size, False, args.seed, workers)
    optimizer = build_optimizer(model, args)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    accumulation = args.gradient_accumulation_steps
    total_steps, num_epochs, eval_every, checkpoint_every = session.run_length(len(train_loader), args)
    scheduler = accelerator.prepare(build_scheduler(optimizer, args, total_steps))
    windows = AccumulationWindows.of(train_loader, train_set, args, accelerator)
    if (done := plan.past_the_end(total_steps, output_dir)) is not None:
        return done
    state = resume.restore(plan, accelerator, model, scheduler, False, None, total_steps, settings)
    reporter = Reporter(accelerator, output_dir, total_steps, state.completed_steps)
    announce(reporter, accelerator, plan, state, data, arguments, start)

    unwrapped = accelerator.unwrap_model(model)
    results, meter, compute_dtype = dict(state.last_eval or {}), LossMeter(accelerator), None
    model.train()
    with logging_redirect_tqdm(loggers=[logging.root]), interruption_report(output_dir, state):
        while state.completed_steps < total_steps and state.epoch < num_epochs and state.early_stopped_at is None:
            loader = train_loader
            if state.batches_in_epoch:  # resumed mid-epoch: the order is a function of (seed, epoch)
                loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
            loader.set_epoch(state.epoch)
            for batch in meter.batches(loader):
                examples = windows.examples(state.batches_in_epoch, batch["labels"].shape[0])
                with accelerator.accumulate(model):
                    pixel_values = train_pipeline.on_device(batch["pixel_values"])
                    # Each example's mask, drawn with it by the loader from (seed, epoch, its row).
                    outputs = model(pixel_values=pixel_values, noise=batch["noise"])
                    compute_dtype = outputs.logits.dtype
                    losses = per_example_losses(unwrapped, pixel_values, outputs)
                    # The step's gradient is the mean over the window's examples (see train.py).
                    accelerator.backward(losses.sum() * (accumulation / examples))
                    grad_norm = optimizer_step(accelerator, model, optimizer, args.max_grad_norm)
                state.batches_in_epoch += 1
                meter.add(losses)
                if not accelerator.sync_gradients:
                    continue

                last_step = count_optimizer_step(state, scheduler, reporter, len(train_loader), total_steps)
                if state.completed_steps % args.logging_steps == 0 or last_step:
                    # `loss`: the reconstruction loss of the training images (under their random masks).
                    reporter.training(training_record(state, meter, scheduler, examples, len(train_loader), grad_norm))
                if state.completed_steps % eval_every == 0 or last_step:
                    results = evaluate_reconstruction(accelerator, model, eval_loader, eval_pipeline.on_device)
                    record_evaluation(state, results, args, reporter)
                if checkpoint_every and state.completed_steps % checkpoint_every == 0:
                    save_step_checkpoint(accelerator, model, state, (train_set, eval_set), args, False, reporter)
                if state.completed_steps >= total_steps or state.early_stopped_at is not None:
                    break
        reporter.bar.close()
        reporter.claim()  # a resumed run may have had no step left to train

    figure = output_dir / RECONSTRUCTION_FILE
    write_reconstruction_figure(accelerator, model, eval_set, eval_pipeline.on_device, (mean, std), figure)
    evaluated = {
        **best.results(state, args),
        "eval_split": data.eval_split,
        "eval_num_examples": len(data.validation),
        "train_num_examples": len(data.train),
        "mask_ratio": unwrapped.config.mask_ratio,
        "learning_rate": args.learning_rate,
    }
    return finish_run(
        accelerator, model, None, state, results, compute_dtype, (train_set, eval_set), reporter, arguments,
        (mean, std), evaluated, model_card=False,
    )  # fmt: skip


def announce(reporter: Reporter, accelerator: Accelerator, plan, state, data, arguments: tuple, start: str) -> None:
    """Start the trackers (--with_tracking) and say what the run is about to do."""
    args = arguments[-1]
    if args.with_tracking:
        accelerator.init_trackers("vit_accel_mae", config=session.tracker_config(*arguments))
    if plan.checkpoint is not None:
        reporter.info(f"Resumed from {plan.checkpoint} at step {state.completed_steps}")
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    reporter.info(
        f"MAE pre-training from {start}: {len(data.train)} training / {len(data.validation)} held-out images "
        f"({data.eval_split}), no labels; {accelerator.num_processes} process(es) ({accelerator.distributed_type}), "
        f"global batch {global_batch}, learning rate {args.learning_rate:.3g}, {state.total_steps} optimizer steps"
    )


def cli() -> None:
    session.run_cli("pretrain.py", main)


if __name__ == "__main__":
    cli()

"""Fine-tune a ViT with Accelerate: the accelerate config file alone picks CPU, GPU, DDP or DeepSpeed ZeRO.

    accelerate launch --config_file accelerate_configs/<mode>.yaml train.py [recipe.yaml] [--flag value ...]

The loop has the shape of accelerate's own examples: `prepare` once, `accumulate`, `backward`, `clip_grad_norm_`,
`gather_for_metrics`. Run `python train.py --help` for every argument.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import evaluate
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, TorchDynamoPlugin, set_seed
from tqdm.auto import tqdm

import vit_accel
from vit_accel.data import ImageClassificationDataset, build_pipeline, load_image_dataset, make_dataloader
from vit_accel.errors import raised_by_our_checks
from vit_accel.hub import push_to_hub, write_model_card
from vit_accel.training.arguments import parse_args
from vit_accel.training.checkpointing import (
    TrainerState,
    check_compatible,
    list_checkpoints,
    remove_stale_checkpoints,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from vit_accel.training.model import build_model, save_final_model
from vit_accel.training.optim import build_optimizer, build_scheduler
from vit_accel.training.reporting import CURVES_FILE, JsonlLog, plot_curves

logger = get_logger(__name__, log_level="INFO")
METRIC_SCRIPT = str(Path(vit_accel.__file__).parent / "metrics" / "top_k_accuracy.py")


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Never overwrite a finished or ongoing run by accident."""
    if resuming or overwrite or not output_dir.exists():
        return
    if list_checkpoints(output_dir) or (output_dir / "all_results.json").exists():
        raise ValueError(
            f"--output_dir {output_dir} already holds a run. Resume it with --resume_from_checkpoint latest, "
            "choose another directory, or pass --overwrite_output_dir."
        )


def evaluate_model(accelerator, model, loader, pipeline, metric) -> dict:
    """Loss, top-1 and top-5 over the whole eval set (each example counted once across processes)."""
    model.eval()
    loss_sum = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    for batch in loader:
        with torch.no_grad():
            logits = model(pixel_values=pipeline.on_device(batch["pixel_values"])).logits.float()
        k = min(5, logits.shape[-1])
        ranked, labels = accelerator.gather_for_metrics((logits.topk(k, dim=-1).indices, batch["labels"]))
        losses = accelerator.gather_for_metrics(F.cross_entropy(logits, batch["labels"], reduction="none"))
        loss_sum += losses.sum()
        count += losses.numel()
        metric.add_batch(predictions=ranked.cpu().numpy(), references=labels.cpu().numpy())
    model.train()
    results = metric.compute()
    return {"eval_loss": (loss_sum / count).item(), "eval_top1": results["top1"], "eval_top5": results["top5"]}


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, args.resume_from_checkpoint is not None, args.overwrite_output_dir)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by `accelerate launch` for 2+ processes
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(output_dir),
        # We step the schedule ourselves once per optimizer step, so warm-up and totals are in optimizer steps.
        step_scheduler_with_optimizer=False,
        # Host-to-device copies of pinned batches overlap with compute instead of blocking every step.
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        dynamo_plugin=TorchDynamoPlugin(backend="inductor") if args.torch_compile else None,
        # Without CUDA, DeepSpeed's process group must be told to use gloo (it would otherwise try NCCL).
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")]
        if distributed and not torch.cuda.is_available()
        else [],
    )
    set_seed(args.seed)

    # Only the main process downloads/prepares the dataset; the others then read the cache.
    with accelerator.main_process_first():
        data = load_image_dataset(data_args, seed=args.seed)
    model, mean, std = build_model(model_args, data.labels)
    if model_args.gradient_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    image_size = model.config.image_size
    train_pipeline = build_pipeline(data_args.augmentation, image_size, mean, std, train=True)
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

    resume_dir = None
    if args.resume_from_checkpoint:
        resume_dir = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
        check_compatible(resume_dir, model.config)

    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        # DeepSpeed clips inside its own step, with the value from its config: hand it ours.
        plugin.deepspeed_config["gradient_clipping"] = args.max_grad_norm
    optimizer = build_optimizer(model, args)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    # Counted after `prepare`, which shards the loader: these are this process's batches, i.e. optimizer steps.
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = accelerator.prepare(build_scheduler(optimizer, args, total_steps))
    eval_every = args.eval_steps or steps_per_epoch
    checkpoint_every = steps_per_epoch if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps or 0)

    state = TrainerState()
    log = JsonlLog(output_dir, enabled=accelerator.is_main_process)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state = TrainerState.from_file(resume_dir / "trainer_state.json")
        logger.info(f"Resumed from {resume_dir} at step {state.completed_steps}", main_process_only=True)
    if accelerator.is_main_process:
        # The directory then holds this run alone, as it stands (a fresh run under --overwrite_output_dir starts
        # from an empty log and no checkpoints, which rotation and `latest` would otherwise mistake for its own).
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_checkpoints(output_dir, state.completed_steps)
        log.truncate_after(state.completed_steps)
    if args.with_tracking:
        hparams = {k: v for k, v in {**vars(model_args), **vars(data_args), **vars(args)}.items() if v is not None}
        accelerator.init_trackers("vit_accel", config=hparams)

    metric = evaluate.load(METRIC_SCRIPT, keep_in_memory=True)
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(
        f"{len(data.train)} training / {len(data.validation)} eval images, {len(data.labels)} classes; "
        f"{accelerator.num_processes} process(es) ({accelerator.distributed_type}), global batch {global_batch}, "
        f"{total_steps} optimizer steps",
        main_process_only=True,
    )
    progress = tqdm(
        total=total_steps, initial=state.completed_steps, disable=not accelerator.is_local_main_process, unit="step"
    )

    results: dict = {}
    running_loss = torch.zeros((), device=accelerator.device)
    running_batches, images_seen, window_start = 0, 0, time.perf_counter()
    model.train()
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
            with accelerator.accumulate(model):
                pixel_values = train_pipeline.on_device(batch["pixel_values"])
                logits = model(pixel_values=pixel_values).logits
                loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=args.label_smoothing)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            # Kept on the device: a .item() here would make every step wait for the accelerator.
            running_loss += loss.detach()
            running_batches += 1
            images_seen += batch["labels"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue

            scheduler.step()
            state.completed_steps += 1
            progress.update(1)
            if len(train_loader) == state.batches_in_epoch:
                state.epoch, state.batches_in_epoch = state.epoch + 1, 0

            if state.completed_steps % args.logging_steps == 0 or state.completed_steps == total_steps:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": state.completed_steps,
                    "epoch": round(state.epoch + state.batches_in_epoch / len(train_loader), 4),
                    "loss": accelerator.reduce(running_loss / running_batches, "mean").item(),
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_second": round(images_seen / elapsed, 2),
                }
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                log.write(record)
                accelerator.log(record, step=state.completed_steps)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                logger.info(" ".join(f"{k}={v:.4g}" for k, v in record.items()), main_process_only=True)
                running_loss.zero_()
                running_batches, images_seen, window_start = 0, 0, time.perf_counter()

            if state.completed_steps % eval_every == 0 or state.completed_steps == total_steps:
                results = evaluate_model(accelerator, model, eval_loader, eval_pipeline, metric)
                record = {"step": state.completed_steps, "epoch": state.epoch, **results}
                log.write(record)
                accelerator.log(record, step=state.completed_steps)
                logger.info(" ".join(f"{k}={v:.4f}" for k, v in results.items()), main_process_only=True)
                if state.best_metric is None or results["eval_top1"] > state.best_metric:
                    state.best_metric, state.best_step = results["eval_top1"], state.completed_steps

            if checkpoint_every and state.completed_steps % checkpoint_every == 0:
                if state.best_step == state.completed_steps:
                    state.best_checkpoint = f"checkpoint-{state.completed_steps}"
                saved = save_checkpoint(accelerator, output_dir, state, accelerator.unwrap_model(model).config)
                if accelerator.is_main_process:
                    rotate_checkpoints(output_dir, args.save_total_limit, keep=state.best_checkpoint)
                    if args.push_to_hub and args.hub_strategy == "checkpoint":
                        push_to_hub(saved, args.hub_model_id, args.hub_private_repo, path_in_repo="last-checkpoint")

            if state.completed_steps >= total_steps:
                break
    progress.close()

    # Data-parallel replicas must hold the same weights; differing checksums mean the processes were not in sync.
    checksum = torch.stack([p.detach().float().sum() for p in model.parameters()]).sum().reshape(1)
    final = {
        "train_steps": state.completed_steps,
        **results,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "replica_checksums": accelerator.gather(checksum).tolist(),
    }
    command = [os.path.basename(sys.argv[0]), *sys.argv[1:]]
    save_final_model(accelerator, model, output_dir, mean, std, final, command, (model_args, data_args, args))
    if accelerator.is_main_process:
        plot_curves(log.records(), output_dir / CURVES_FILE)
        write_model_card(output_dir)
        if args.push_to_hub:
            logger.info(f"Pushed to {push_to_hub(output_dir, args.hub_model_id, args.hub_private_repo)}")
    accelerator.end_training()
    return final


def cli() -> None:
    try:
        results = main()
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        if not raised_by_our_checks(error, __file__):
            raise
        # User errors (flags, recipe, paths, shapes) get one line, not a traceback wall.
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results))


if __name__ == "__main__":
    cli()

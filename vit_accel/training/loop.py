"""The training loop's bookkeeping: how many examples each accumulation window holds, the running loss, throughput
and data-wait meter, the checkpoint of a step, and what Ctrl-C says. The loop itself is train.py's."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object

from ..data import ImageClassificationDataset
from ..hub import push_to_hub
from . import best, methods
from .checkpointing import TrainerState, list_checkpoints, rotate_checkpoints, save_checkpoint
from .data_rate import data_wait_warning
from .model import base_config
from .reporting import Reporter

logger = get_logger(__name__)


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

    @classmethod
    def of(cls, loader, dataset, args, accelerator: Accelerator) -> AccumulationWindows:
        """The windows of this process's prepared training `loader` over `dataset`."""
        accumulation, num_processes = args.gradient_accumulation_steps, accelerator.num_processes
        return cls(len(loader), args.per_device_train_batch_size, len(dataset), accumulation, num_processes)

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
    """The mean training loss, the throughput and the time spent waiting for data since the last read, over all
    processes.

    The sums stay on the device between reads: a `.item()` per step would make every step wait for the accelerator.
    The data wait is this process's time inside `next()` of the training loader (`batches`): the workers' queue plus
    the host-to-device copy, as the loop sees it; a large share of the step time means the loader is the bottleneck.
    """

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.totals = torch.zeros(2, device=accelerator.device)  # loss sum, examples
        self.start = time.perf_counter()
        self.data_wait = 0.0
        # The first next() of each pass starts the workers: kept apart so a start-up does not read as a slow loader.
        self.start_up_wait = 0.0
        self.reads = 0
        self.last_interval = (0.0, 0.0)  # (seconds waited on data, seconds) of the last read, start-ups left out

    def batches(self, loader: Iterable) -> Iterator:
        """`loader`'s batches, timing each wait for the next one."""
        iterator, first = iter(loader), True
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            waited = time.perf_counter() - start
            self.data_wait += waited
            if first:
                self.start_up_wait, first = self.start_up_wait + waited, False
            yield batch

    def add(self, losses: torch.Tensor) -> None:
        self.totals[0] += losses.detach().sum()
        self.totals[1] += losses.numel()

    def read(self) -> tuple[float, float, float]:
        """(mean loss, images/s, seconds waited for data) since the last read."""
        loss_sum, examples = self.accelerator.reduce(self.totals, "sum").tolist()
        elapsed = time.perf_counter() - self.start
        data_wait = self.data_wait
        self.last_interval = (data_wait - self.start_up_wait, elapsed - self.start_up_wait)
        self.reads += 1
        self.totals.zero_()
        self.start, self.data_wait, self.start_up_wait = time.perf_counter(), 0.0, 0.0
        return loss_sum / max(examples, 1), round(examples / elapsed, 2), round(data_wait, 4)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption, `kill`), raised where the run stands so that it ends as Ctrl-C does."""


class Interrupted(Exception):
    """The run stopped by Ctrl-C or SIGTERM; the message says what it reached, what is saved and how to go on."""

    @property
    def terminated(self) -> bool:
        """Whether SIGTERM stopped it (the exception this one replaced says)."""
        return isinstance(self.__context__, Terminated)

    @property
    def exit_code(self) -> int:
        """The shell's code for the signal: 143 for SIGTERM, 130 for Ctrl-C."""
        return 128 + (signal.SIGTERM if self.terminated else signal.SIGINT)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` in this process while the block runs, so that a preempted or killed run says
    where it stands, as Ctrl-C does, instead of ending silently. Data-loader workers forked meanwhile inherit the
    handler; in them SIGTERM keeps its default effect."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    owner = os.getpid()

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_advice(output_dir: Path) -> str:
    """How to go on from what `output_dir` holds: the last complete checkpoint, or none yet."""
    last = [p.name for p in list_checkpoints(output_dir)]
    if last:
        return f"the last complete checkpoint is {last[-1]}: resume with --resume_from_checkpoint latest"
    return "no checkpoint was written yet (see --checkpointing_steps)"


@contextlib.contextmanager
def interruption_report(output_dir: Path, state: TrainerState) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) during training ends with one line saying where the run stands and how to resume it."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted at step {state.completed_steps}; {resume_advice(output_dir)}.") from None


def gather_bad_rows(accelerator: Accelerator, dataset: ImageClassificationDataset, known: list[int]) -> list[int]:
    """Unreadable rows found by any process so far, with those recorded before a resume."""
    return sorted(set(known) | set(gather_object(dataset.bad_rows)))


def save_step_checkpoint(
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
        base_config(accelerator.unwrap_model(model)),
        methods.state_kwargs(accelerator, frozen, saving=True),
    )
    if accelerator.is_main_process:
        rotate_checkpoints(output_dir, args.save_total_limit, keep=state.best_checkpoint)
        if args.push_to_hub and args.hub_strategy == "checkpoint":
            push_to_hub(saved, args.hub_model_id, args.hub_private_repo, "last-checkpoint", args.hub_token)


def optimizer_step(accelerator: Accelerator, model, optimizer, max_grad_norm: float) -> torch.Tensor | None:
    """Clip the gradients (at a window's last micro-batch, with `max_grad_norm` above 0), step and zero them; the
    global norm before clipping, or None when not clipped."""
    grad_norm = None
    if accelerator.sync_gradients and max_grad_norm > 0:
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return grad_norm


def count_optimizer_step(
    state: TrainerState, scheduler, reporter: Reporter, num_batches: int, total_steps: int
) -> bool:
    """After an optimizer step: the schedule stepped, the step counted, the epoch closed at its last of `num_batches`
    micro-batches; whether this was the run's last step."""
    scheduler.step()
    state.completed_steps += 1
    reporter.bar.update(1)
    if num_batches == state.batches_in_epoch:
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    return state.completed_steps == total_steps


def training_record(
    state: TrainerState, meter: LossMeter, scheduler, examples: int, num_batches: int, grad_norm
) -> dict:
    """The log's record of the steps since the last one: mean loss, rate, global batch, throughput, data wait (in
    next(loader) since the last record, this process) and the gradient norm when clipped. The first record also
    warns when waiting on data took more than `data_rate.DATA_WAIT_SHARE` of the time (this process)."""
    loss, images_per_second, data_wait = meter.read()
    if meter.reads == 1 and (warning := data_wait_warning(*meter.last_interval, images_per_second)) is not None:
        logger.warning(warning, main_process_only=True)
    record = {
        "step": state.completed_steps,
        "epoch": round(state.epoch + state.batches_in_epoch / num_batches, 4),
        "loss": loss,
        "lr": scheduler.get_last_lr()[0],
        "global_batch": examples * meter.accelerator.num_processes,
        "images_per_second": images_per_second,
        "data_wait_seconds": data_wait,
    }
    return record if grad_norm is None else {**record, "grad_norm": float(grad_norm)}


def record_evaluation(state: TrainerState, results: dict, args, reporter: Reporter) -> None:
    """Keep an evaluation's results in the state (the best one by --metric_for_best_model, early stopping) and
    report them."""
    state.last_eval = results
    best.record_evaluation(state, results, args.metric_for_best_model, args.early_stopping_patience)
    reporter.evaluation({"step": state.completed_steps, "epoch": state.epoch, **results})

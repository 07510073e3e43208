"""How fast the training data comes: a start-up probe of what the loader can give, and the warning when the loop
waits on data.

The probe prepares a few training examples through the dataset's own `__getitem__` and the loader's collate step in
the main process, one torch thread (as a DataLoader worker has), and scales by the workers. Each example draws from
a generator seeded by (seed, epoch, index), and the global random states are saved and restored around it, so that
a run trains the same weights with or without the probe.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator

from ..data import BadImageError, ImageClassificationDataset
from .reporting import Reporter

# Enough examples to average a few decodes, few enough to cost about a second on a CPU core.
PROBE_EXAMPLES = 32
PROBE_SECONDS = 2.0
# Share of the step time spent in next(loader) above which the loader, not the model, sets the pace.
DATA_WAIT_SHARE = 0.2


@dataclass(frozen=True)
class LoaderRate:
    """What `examples` prepared in `seconds` by one process say of a loader with `workers` worker processes."""

    examples: int
    seconds: float
    workers: int

    @property
    def per_worker(self) -> float:
        return self.examples / max(self.seconds, 1e-9)

    @property
    def images_per_second(self) -> float:
        # Zero workers: the main process prepares each batch itself, at one worker's rate.
        return self.per_worker * max(self.workers, 1)

    def describe(self) -> str:
        how = (
            f"{self.workers} workers × {self.per_worker:.0f} images/s each"
            if self.workers
            else f"no workers: the main process prepares each batch, {self.per_worker:.0f} images/s"
        )
        return (
            f"The loader can give ≈ {self.images_per_second:.0f} images/s per process ({how}; "
            f"{self.examples} training examples prepared in {self.seconds:.2f} s)"
        )


@contextlib.contextmanager
def untouched_random_state() -> Iterator[None]:
    """Python's, numpy's and torch's (CPU) global random states as they were before the block."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def measure_loader(
    dataset: ImageClassificationDataset,
    collate_fn: Callable[[list[dict]], dict],
    workers: int,
    examples: int = PROBE_EXAMPLES,
    budget_seconds: float = PROBE_SECONDS,
) -> LoaderRate | None:
    """Time `examples` of `dataset` (its first rows, stopping after `budget_seconds`) and their collate; None when no
    row could be prepared.

    A copy of the dataset does the work, so that the original's record of unreadable rows and its warning stay as
    training will find them; an unreadable row is left out here (training reports it by its own policy).
    """
    probe = copy.copy(dataset)  # its own record of bad rows (a fresh array: see `__getstate__`)
    probe.bad_images = "error"
    threads = torch.get_num_threads()
    prepared: list[dict] = []
    with untouched_random_state():
        torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            for index in range(min(examples, len(probe))):
                try:
                    prepared.append(probe[index])
                except BadImageError:
                    continue
                if time.perf_counter() - start > budget_seconds:
                    break
            if prepared:
                collate_fn(prepared)
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
    return LoaderRate(len(prepared), seconds, workers) if prepared else None


def announce_loader_rate(reporter: Reporter, accelerator: Accelerator, dataset, loader, data_args) -> None:
    """Say, on the main process, how many images/s the training loader can give on this machine."""
    if not accelerator.is_main_process:
        return
    if data_args.streaming:
        reporter.info("Loader rate not probed: a stream cannot be read ahead without moving its position.")
        return
    rate = measure_loader(dataset, loader.collate_fn, data_args.dataloader_num_workers)
    if rate is not None:
        reporter.info(rate.describe())


def data_wait_warning(
    waited: float, interval: float, images_per_second: float, share: float = DATA_WAIT_SHARE
) -> str | None:
    """The one-line warning when the loop, training at `images_per_second`, spent `waited` of `interval` seconds
    waiting on data, more than `share`; None when it did not."""
    if interval <= 0 or waited <= share * interval:
        return None
    return (
        f"The training loop waited on data for {waited / interval:.0%} of its time in the first logged steps "
        f"(more than {share:.0%}) at {images_per_second:.0f} images/s: the loader, not the model, sets the pace. "
        "Raise --dataloader_num_workers, use a faster --image_decoder (auto, turbojpeg) or a lighter "
        "--augmentation preset."
    )

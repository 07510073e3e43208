"""Streaming input (`--streaming`) in the training run: its loaders, their place in `prepare`, their state in every
checkpoint, and the dataset identity a resume checks.

The streaming loaders split the stream across processes themselves (a contiguous range each, the same batch count on
every process; see `vit_accel.data.streaming`), so they do not go through `accelerator.prepare`: accelerate would
wrap them a second time (an `IterableDataset` loader is dispatched from the main process, or each process would keep
one batch in n of its own share). `DeviceStream` does for them what a prepared loader does for the loop: batches
on the device, and the end of the epoch told to accelerate's gradient accumulation.

A checkpoint holds the training stream's state (`stream_state.json`: epoch, batches consumed, the plan it belongs
to); a resume places the stream there before any state is loaded, so a stream that cannot continue (another plan
mid-epoch, other shards) stops the run at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState
from accelerate.utils import send_to_device

from ..data.arguments import DataArguments
from ..data.sources import ImageClassificationData, dataset_identity
from ..data.streaming import (
    StreamingData,
    StreamingDataLoader,
    load_stream_state,
    open_streaming_dataset,
    save_stream_state,
    streaming_loaders,
)
from ..errors import UserError


@dataclass
class StreamShare:
    """What the loop and the final phase read of a training or evaluation set, for one process' share of a stream:
    its length in examples, and the unreadable rows skipped (none: `--bad_images skip` is refused with streams)."""

    num_examples: int
    bad_rows: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return self.num_examples


class DeviceStream(DataLoaderStateMixin):
    """A `StreamingDataLoader` as the loop uses a prepared loader: batches moved to the device, and accelerate told
    when the epoch's last batch comes (an accumulation window cut short by the epoch's end then still steps).

    The position is the wrapped loader's own (`state_dict`): this wrapper reads no batch ahead of the loop."""

    def __init__(self, loader: StreamingDataLoader, device, non_blocking: bool = True) -> None:
        self.loader = loader
        self.device = device
        self.non_blocking = non_blocking
        self.gradient_state = GradientState()
        self._drop_last = True  # every batch full: accelerate has no remainder to drop in `gather_for_metrics`

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self) -> Iterator[dict]:
        self.begin()
        try:
            for batch in self.loader:
                self.end_of_dataloader = self.loader.batches_done >= len(self.loader)
                yield send_to_device(batch, self.device, non_blocking=self.non_blocking)
        finally:
            self.end()


def is_streaming(loader) -> bool:
    return isinstance(loader, DeviceStream)


def load_stream(data_args: DataArguments, seed: int) -> StreamingData:
    """Count and check the shards of the training and evaluation streams (no image is read)."""
    return open_streaming_dataset(data_args, seed=seed)


def data_identity(data: StreamingData | ImageClassificationData) -> dict:
    """What identifies the run's data, for a resumed run to check that it continues on the same data. Streams: the
    label names and each split's shard fingerprint (shard names and lengths, after --max_*_samples); map-style data:
    `dataset_identity`."""
    if not isinstance(data, StreamingData):
        return dataset_identity(data)
    names = "\n".join(str(name) for name in data.labels).encode("utf-8")
    return {
        "num_labels": len(data.labels),
        "label_names_sha256": hashlib.sha256(names).hexdigest(),
        **{
            key: value
            for name, split in (("train", data.train), ("validation", data.validation))
            for key, value in ((f"{name}_rows", split.num_examples), (f"{name}_stream", split.fingerprint()))
        },
    }


def stream_loaders(accelerator: Accelerator, data: StreamingData, pipelines: tuple, data_args, args) -> tuple:
    """((training share, its loader), (evaluation share, its loader)) of this process, as `data_loaders` returns
    them for map-style data; the loaders are ready for the loop (see `prepare_streams`)."""
    train, evaluation = streaming_loaders(
        data,
        pipelines[0],
        pipelines[1],
        data_args,
        args.seed,
        args.per_device_train_batch_size,
        args.per_device_eval_batch_size,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    device = accelerator.device
    return (
        (StreamShare(len(train) * train.dataset.batch_size), DeviceStream(train, device)),
        (StreamShare(data.validation.num_examples), DeviceStream(evaluation, device)),
    )


def prepare(accelerator: Accelerator, args, model, optimizer, train_loader, eval_loader) -> tuple:
    """`accelerator.prepare` of the four; streaming loaders are left whole (they are split already), and the
    training stream's state goes into every checkpoint `accelerator.save_state` writes."""
    if not is_streaming(train_loader):
        return accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if (plugin := accelerator.state.deepspeed_plugin) is not None:
        # DeepSpeed reads its micro-batch from a prepared DataLoader, and there is none here: it is this one.
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:  # every process' stream is at the same (epoch, batch): one file says it
            save_stream_state(train_loader.loader, output_dir)

    accelerator.register_save_state_pre_hook(save_hook)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, train_loader, eval_loader


def restore_stream(checkpoint: Path | None, state, train_loader: DeviceStream) -> None:
    """Place the training stream where `checkpoint` stopped it (nothing for a fresh run); `state`, the checkpoint's
    trainer state, must agree with it."""
    if checkpoint is None:
        return
    load_stream_state(train_loader.loader, checkpoint)
    loader = train_loader.loader
    if (loader.epoch, loader.batches_done) != (state.epoch, state.batches_in_epoch):
        raise UserError(
            f"Checkpoint {checkpoint}: its stream state (epoch {loader.epoch}, batch {loader.batches_done}) and its "
            f"trainer state (epoch {state.epoch}, batch {state.batches_in_epoch}) disagree; the checkpoint is "
            "damaged. Resume from another one."
        )


def resume_position(accelerator: Accelerator, loader, batches_in_epoch: int):
    """The training loader from where this epoch stands: a stream is already there (its own state was restored);
    a map-style loader skips the batches already seen (its order is a function of seed and epoch)."""
    if is_streaming(loader) or not batches_in_epoch:
        return loader
    return accelerator.skip_first_batches(loader, batches_in_epoch)

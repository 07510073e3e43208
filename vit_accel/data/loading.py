"""A torch Dataset over a normalised 🤗 dataset, its collate function and a seeded, resumable DataLoader.

Every random choice is a pure function of (seed, epoch, index): the augmentation of an example through a generator
seeded from those three numbers, the order of an epoch through a permutation seeded from (seed, epoch). So batches do
not depend on `num_workers`, and a run resumed mid-epoch with `accelerator.skip_first_batches` sees exactly the
batches the uninterrupted run saw.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import warnings
from collections.abc import Iterator

import datasets
import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import UserError
from .arguments import BAD_IMAGE_POLICIES
from .decode import DECODE_ERRORS, FAST_DECODERS, UndecodableImageError, prepare, resolve_decoder
from .transforms import Pipeline, resize_batch


class BadImageError(UserError):
    """An image that cannot be decoded; the message names the row and, when known, the file."""


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixed from (seed, epoch, index) by numpy's SeedSequence (well mixed, so neighbours differ)."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Decodes, converts to RGB and augments one example per `__getitem__`; returns uint8 pixels and an int label.

    `bad_images="error"` raises `BadImageError` naming the row (and file); `"skip"` replaces an unreadable example by
    the next readable one (deterministically), records its row in `bad_rows` (shared with DataLoader workers) and
    warns once per process.
    """

    def __init__(
        self,
        data: datasets.Dataset,
        pipeline: Pipeline,
        seed: int,
        bad_images: str = "error",
        decoder: str | None = None,
    ) -> None:
        """`decoder`: `--image_decoder`'s values (None = `auto`): `turbojpeg`, `simplejpeg` or `pil_draft` (what `auto`
        picks for training pipelines that start with a random-resized crop, by what is installed) decode through
        `vit_accel.data.decode`'s fast path, same crops and flips; `pil` decodes in full and runs the pipeline as it
        is."""
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {bad_images!r}.")
        for column in ("image", "label"):
            if column not in data.column_names:
                raise ValueError(f"Expected columns 'image' and 'label'; got {data.column_names}.")
        # Read the encoded bytes/path rather than a decoded image, so that a corrupt file can be caught and named.
        image_feature = data.features["image"]
        if isinstance(image_feature, datasets.Image) and image_feature.decode:
            data = data.cast_column("image", datasets.Image(decode=False))
        self.data = data
        self.pipeline = pipeline
        self.seed = int(seed)
        self.bad_images = bad_images
        self.decoder = resolve_decoder(decoder, pipeline)
        self.epoch = 0
        # One shared byte per row, set when the row cannot be decoded, so that rows found bad in DataLoader workers are
        # visible from the main process. Writes are idempotent, so no lock is needed (a lock would tie the dataset to
        # one start method); a byte per row is 1.3 MB for ImageNet-1k.
        self._bad = multiprocessing.RawArray("b", len(data))
        self._warned = False

    def __len__(self) -> int:
        return len(self.data)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # The shared array can travel only to a starting worker process; a plain copy or pickle keeps its values.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_bad"] = bytes(self._bad)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["_bad"], bytes):
            flags = state["_bad"]
            state["_bad"] = multiprocessing.RawArray("b", len(flags))
            state["_bad"][:] = list(flags)
        self.__dict__.update(state)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: changes the augmentations and (through `make_dataloader`'s sampler) the order."""
        self.epoch = int(epoch)

    @property
    def bad_rows(self) -> list[int]:
        """The rows found unreadable so far, in this process and its DataLoader workers, each listed once."""
        return np.flatnonzero(np.frombuffer(self._bad, dtype=np.int8)).tolist()

    def _source(self, index: int) -> tuple[PIL.Image.Image | bytes | str, int, str | None]:
        """(the row's image: a PIL image, its encoded bytes or its path; its label; its path, if any)."""
        row = self.data[index]
        image, label = row["image"], row["label"]
        if isinstance(image, PIL.Image.Image):  # a dataset whose image column still decodes
            return image, int(label), None
        if image is None:
            raise BadImageError(f"Cannot decode the image at row {index}: ValueError: the image is missing (null)")
        path = image.get("path")
        if image.get("bytes") is not None:
            return image["bytes"], int(label), path
        if path:
            return path, int(label), path
        raise BadImageError(
            f"Cannot decode the image at row {index}: ValueError: the row has neither image bytes nor a path"
        )

    @staticmethod
    def _where(index: int, path: str | None) -> str:
        return f"row {index}" + (f" (file {path!r})" if path else "")

    def _decode(self, index: int) -> tuple[PIL.Image.Image, int]:
        source, label, path = self._source(index)
        try:
            if isinstance(source, PIL.Image.Image):
                decoded = source
            else:
                decoded = PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            decoded.load()  # force the full decode here, so truncated files fail inside the try
        except DECODE_ERRORS as error:
            where = self._where(index, path)
            raise BadImageError(f"Cannot decode the image at {where}: {type(error).__name__}: {error}") from error
        return decoded, label

    def _prepare(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """The fast path: decoded and augmented in one step (the crop chosen before decoding)."""
        source, label, path = self._source(index)
        try:
            return prepare(self.pipeline, source, generator, self.decoder), label
        except UndecodableImageError as error:
            where = self._where(index, path)
            raise BadImageError(f"Cannot decode the image at {where}: {error}") from error.__cause__

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, index))
        try:
            if self.decoder in FAST_DECODERS:
                pixels, label = self._prepare(index, generator)
                return {"pixel_values": pixels, "labels": label}
            image, label = self._decode(index)
        except BadImageError as error:
            if self.bad_images == "error":
                raise BadImageError(f"{error}. Fix or remove it, or pass --bad_images skip.") from error.__cause__
            # The replacement takes the full decode: a rare event, with the same random draws.
            image, label = self._substitute(index, error)
        return {"pixel_values": self.pipeline(image, generator), "labels": label}

    def _substitute(self, index: int, error: BadImageError) -> tuple[PIL.Image.Image, int]:
        self._bad[index] = 1
        if not self._warned:  # once per process; the rows are listed in `bad_rows`
            self._warned = True
            warnings.warn(
                f"{error}; skipping it and any further unreadable images (bad_images='skip'): each is replaced by "
                "the next readable example, and the unreadable rows are counted in the run's results.",
                stacklevel=3,
            )
        for step in range(1, len(self)):
            try:
                return self._decode((index + step) % len(self))
            except BadImageError:
                self._bad[(index + step) % len(self)] = 1
        raise BadImageError(f"No image in the dataset can be decoded (tried all {len(self)} rows).")


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, h, w) images -> (B, 3, h, w); images in channels-last memory (the fast decoders') stay so, in one copy."""
    if all(image.stride(0) == 1 for image in images):
        return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
    return torch.stack(images)


def collate(examples: list[dict], resize_to: int | None = None) -> dict:
    """Stack examples: {"pixel_values": uint8 (B, 3, h, w), "labels": int64 (B,)}, and any other tensor an example
    carries (a pre-training example's mask noise) stacked under its key.

    `resize_to` resizes the uint8 batch to (resize_to, resize_to) here, in the worker: for runs without an
    accelerator, where `Pipeline.on_device` would otherwise do it in the main process.
    """
    pixels = _stack_images([example["pixel_values"] for example in examples])
    if resize_to is not None:
        pixels = resize_batch(pixels, resize_to)
    batch = {
        "pixel_values": pixels,
        "labels": torch.tensor([example["labels"] for example in examples], dtype=torch.int64),
    }
    for key in examples[0].keys() - batch.keys():
        batch[key] = torch.stack([example[key] for example in examples])
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A random order that is a pure function of (seed, dataset epoch), so a fresh process can rebuild any epoch.

    The epoch is read from the dataset (set by `ImageClassificationDataset.set_epoch`); `set_epoch` here (called by
    accelerate's prepared loaders) forwards to the dataset, so either call moves both the order and the augmentation.
    """

    def __init__(self, dataset: ImageClassificationDataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.dataset.epoch, -1 & 0xFFFFFFFF))
        return iter(torch.randperm(len(self.dataset), generator=generator).tolist())


def make_dataloader(
    dataset: ImageClassificationDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    resize_to: int | None = None,
) -> DataLoader:
    """A DataLoader whose batches depend only on (seed, epoch): not on num_workers nor on earlier iterations.

    `resize_to`: resize each uint8 batch to the model's size in the workers (the collate step). Leave it None when an
    accelerator runs `Pipeline.on_device`; set it to the image size on CPU-only runs to take the resize out of the
    main process (`on_device` then only normalises).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    sampler = EpochShuffleSampler(dataset, seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate if resize_to is None else functools.partial(collate, resize_to=resize_to),
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        # Workers are re-created every epoch so that they see the dataset's current epoch.
        persistent_workers=False,
        generator=torch.Generator().manual_seed(int(seed)),
    )

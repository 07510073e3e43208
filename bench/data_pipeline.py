"""Data-pipeline benchmark: images/s per worker for the `cifar` preset at 224 px output.

Two orders of the same augmentation, on the same PNG-encoded 32x32 images, in one run, on one CPU thread (a DataLoader
worker runs with one thread):

- seed order (FlagAI's recipe, torchvision v1 on PIL, per image): RandomCrop(32, padding=4) -> Resize(224) ->
  AutoAugment(CIFAR10) -> ToTensor -> Normalize, then the batch is stacked;
- ours (vit_accel.data, per image): RandomCrop/flip/AutoAugment at 32 px -> uint8; then per batch: stack, resize to
  224 and normalise. The batch resize normally runs on the accelerator; here it runs on the CPU in the same thread and
  is counted in the per-worker cost: in the collate step (uint8, as `make_dataloader(resize_to=...)` does on
  CPU-only runs); a second line leaves it to the accelerator; a third also normalises to float32 in the same thread
  (what `Pipeline.on_device` adds in the main process of a CPU-only run), for outputs equal to FlagAI's order
  (augmentation at 224 px).

Every path includes decoding the PNG bytes and the RGB conversion. Usage:
    python bench/data_pipeline.py [--num_images 2048] [--batch_size 64] [--repeats 3] [--size 224]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable

import numpy as np
import PIL
import PIL.Image
import torch
import torchvision
from datasets import ClassLabel, Dataset, Features, Image
from torchvision import transforms as v1

from vit_accel.data import ImageClassificationDataset, build_pipeline, collate, example_seed

CIFAR_MEAN = (0.5071, 0.4865, 0.4409)  # CIFAR-100 statistics, as FlagAI's example normalises
CIFAR_STD = (0.2673, 0.2564, 0.2762)


def make_images(num: int, seed: int = 0) -> list[bytes]:
    """`num` 32x32 PNGs cut from scikit-learn's two sample photos (real image statistics, no download)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    encoded = []
    for i in range(num):
        photo = photos[i % len(photos)]
        side = int(rng.integers(32, 160))
        top, left = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
        crop = PIL.Image.fromarray(photo[top : top + side, left : left + side]).resize((32, 32), PIL.Image.BILINEAR)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def decode(data: bytes) -> PIL.Image.Image:
    image = PIL.Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def opener(source: str) -> Callable:
    """How an example becomes a PIL image: "array" = already decoded in memory, as FlagAI's torchvision CIFAR100
    dataset holds them (`Image.fromarray` per item); "png" = PNG bytes, as Hub parquet files store them."""
    return PIL.Image.fromarray if source == "array" else decode


def seed_order(size: int, source: str) -> Callable[[list], torch.Tensor]:
    transform = v1.Compose(
        [
            v1.RandomCrop(32, padding=4),
            v1.Resize(size),
            v1.AutoAugment(v1.AutoAugmentPolicy.CIFAR10),
            v1.ToTensor(),
            v1.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    open_ = opener(source)

    def run(batch: list) -> torch.Tensor:
        return torch.stack([transform(open_(item)) for item in batch])

    return run


def ours(size: int, source: str, stage: str) -> Callable[[list], torch.Tensor]:
    """stage: "device" stops at the 32 px uint8 batch (the accelerator resizes), "collate" resizes the uint8 batch
    to `size` in the collate step (CPU-only runs), "full" also normalises to float32 as `on_device` does."""
    pipeline = build_pipeline("cifar", size, CIFAR_MEAN, CIFAR_STD, train=True)
    resize_to = None if stage == "device" else size
    open_ = opener(source)

    def run(batch: list) -> torch.Tensor:
        examples = []
        for index, item in enumerate(batch):
            generator = torch.Generator().manual_seed(example_seed(0, 0, index))
            examples.append({"pixel_values": pipeline(open_(item), generator), "labels": 0})
        pixels = collate(examples, resize_to=resize_to)["pixel_values"]
        return pipeline.on_device(pixels) if stage == "full" else pixels

    return run


def ours_dataset(size: int, encoded: list[bytes]) -> Callable[[list], torch.Tensor]:
    """The real worker path: ImageClassificationDataset.__getitem__ on a 🤗 dataset of PNG bytes (row fetch, decode,
    RGB, augment), then the collate step with the uint8 resize. Ignores its argument's items, uses its indices."""
    features = Features({"image": Image(), "label": ClassLabel(names=["x"])})
    rows = {"image": [{"bytes": data, "path": None} for data in encoded], "label": [0] * len(encoded)}
    dataset = ImageClassificationDataset(
        Dataset.from_dict(rows, features=features), build_pipeline("cifar", size, CIFAR_MEAN, CIFAR_STD, True), 0
    )
    position = {"next": 0}

    def run(batch: list) -> torch.Tensor:
        first = position["next"] % len(dataset)
        position["next"] = first + len(batch)
        examples = [dataset[index % len(dataset)] for index in range(first, first + len(batch))]
        return collate(examples, resize_to=size)["pixel_values"]

    return run


def measure(runs: dict[str, tuple[Callable, list]], batch_size: int, repeats: int) -> dict[str, list[float]]:
    """images/s of every pipeline for each of `repeats` rounds. The pipelines take turns within a round, so that a
    busy neighbour on a shared machine slows all of them alike; one warm-up batch each first."""
    for run, items in runs.values():
        run(items[:batch_size])
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (run, items) in runs.items():
            start = time.perf_counter()
            for first in range(0, len(items), batch_size):
                run(items[first : first + batch_size])
            rates[name].append(len(items) / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", "--num-images", type=int, default=2048)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(1)  # one DataLoader worker = one thread
    encoded = make_images(args.num_images)
    arrays = [np.asarray(decode(data)) for data in encoded]
    measured = {
        "[in-memory arrays] seed order: crop, resize 224, AutoAugment, normalise": (
            seed_order(args.size, "array"),
            arrays,
        ),
        "[in-memory arrays] ours: augment at 32, uint8 resize in collate": (
            ours(args.size, "array", "collate"),
            arrays,
        ),
        "[in-memory arrays] ours: augment at 32, resize on the accelerator": (
            ours(args.size, "array", "device"),
            arrays,
        ),
        "[in-memory arrays] ours, + float32 normalise in the same thread": (ours(args.size, "array", "full"), arrays),
        "[PNG bytes] seed order: crop, resize 224, AutoAugment, normalise": (seed_order(args.size, "png"), encoded),
        "[PNG bytes] ours: augment at 32, uint8 resize in collate": (ours(args.size, "png", "collate"), encoded),
        "[PNG bytes] ours: augment at 32, resize on the accelerator": (ours(args.size, "png", "device"), encoded),
        "[PNG bytes] ours, + float32 normalise in the same thread": (ours(args.size, "png", "full"), encoded),
        "[PNG bytes] ours via ImageClassificationDataset + collate": (ours_dataset(args.size, encoded), encoded),
    }
    rates = measure(measured, args.batch_size, args.repeats)
    print(
        f"cifar preset, {args.size} px output, {args.num_images} images of 32x32, batch {args.batch_size}, 1 thread, "
        f"{args.repeats} interleaved rounds"
    )
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
        f"Python {platform.python_version()}, {platform.processor() or platform.machine()}"
    )
    print(f"| {'pipeline':<72} | {'best images/s per worker':>24} | {'vs seed (median of rounds)':>26} |")
    print(f"|{'-' * 74}|{'-' * 25}:|{'-' * 27}:|")
    for name, values in rates.items():
        # Each line against FlagAI's order on the same source.
        baseline = next(rate for key, rate in rates.items() if key.split("]")[0] == name.split("]")[0])
        ratio = float(np.median([value / base for value, base in zip(values, baseline)]))
        print(f"| {name:<72} | {max(values):>24,.0f} | {ratio:>25.1f}x |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "images_per_s": rates}, handle, indent=2)


if __name__ == "__main__":
    main()

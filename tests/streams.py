"""Tiny parquet and webdataset shards whose images carry their example id, so that tests can count what was read."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
from datasets import ClassLabel, Dataset, Features, Image

from vit_accel.data import DataArguments, build_pipeline

SIZE = 8
NUM_CLASSES = 3
HALF = (0.5, 0.5, 0.5)


def id_png(example_id: int) -> bytes:
    """An 8x8 PNG whose top-left pixel holds the id (red = id // 256, green = id % 256): lossless, so readable back."""
    pixels = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)
    pixels[0, 0] = (example_id // 256, example_id % 256, 7)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def ids_of(batch: dict) -> list[int]:
    """The example ids of a batch of `none`-preset pixels (uint8, unchanged at 8 px)."""
    corner = batch["pixel_values"][:, :, 0, 0].long()
    return (corner[:, 0] * 256 + corner[:, 1]).tolist()


def write_parquet_shards(root: Path, sizes: list[int], split: str = "train", first_id: int = 0) -> list[int]:
    """One parquet file per size, ids consecutive from `first_id`, label = id % 3 (a ClassLabel); returns the ids."""
    root.mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(NUM_CLASSES)])})
    next_id = first_id
    for index, size in enumerate(sizes):
        ids = list(range(next_id, next_id + size))
        rows = {"image": [{"bytes": id_png(i), "path": None} for i in ids], "label": [i % NUM_CLASSES for i in ids]}
        Dataset.from_dict(rows, features=features).to_parquet(
            str(root / f"{split}-{index:05d}-of-{len(sizes):05d}.parquet")
        )
        next_id += size
    return list(range(first_id, next_id))


def write_tar_shards(
    root: Path, sizes: list[int], split: str = "train", first_id: int = 0, fields: tuple[str, ...] = ("png", "cls")
) -> list[int]:
    """One webdataset tar per size: `<key>.png` and `<key>.cls` (label id % 3) per example; returns the ids."""
    root.mkdir(parents=True, exist_ok=True)
    next_id = first_id
    for index, size in enumerate(sizes):
        with tarfile.open(root / f"{split}-{index:05d}.tar", "w") as archive:
            for example_id in range(next_id, next_id + size):
                members = {"png": id_png(example_id), "cls": str(example_id % NUM_CLASSES).encode(), "txt": b"x"}
                for ext in fields:
                    info = tarfile.TarInfo(f"e{example_id:06d}.{ext}")
                    info.size = len(members[ext])
                    archive.addfile(info, io.BytesIO(members[ext]))
        next_id += size
    return list(range(first_id, next_id))


def write_shards(kind: str, root: Path, sizes: list[int], split: str = "train", first_id: int = 0) -> list[int]:
    writer = write_parquet_shards if kind == "parquet" else write_tar_shards
    return writer(root, sizes, split=split, first_id=first_id)


def none_pipeline(train: bool = True):
    return build_pipeline("none", SIZE, HALF, HALF, train=train)


def stream_args(root: Path, **overrides) -> DataArguments:
    return DataArguments(dataset_name=str(root), streaming=True, augmentation="none", **overrides)

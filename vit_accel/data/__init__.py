"""The data layer: any image-classification dataset through 🤗 datasets, augmented cheaply and reproducibly.

Names load from their module on first use, so that `train.py --help` (which needs only `DataArguments`) does not
import torch and datasets.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "AUGMENTATIONS": "arguments",
    "BAD_IMAGE_POLICIES": "arguments",
    "DataArguments": "arguments",
    "EVALUATION_FIELDS": "arguments",
    "add_data_arguments": "arguments",
    "BadImageError": "loading",
    "EpochShuffleSampler": "loading",
    "ImageClassificationDataset": "loading",
    "collate": "loading",
    "example_seed": "loading",
    "make_dataloader": "loading",
    "ImageClassificationData": "sources",
    "check_seed": "sources",
    "dataset_identity": "sources",
    "load_image_dataset": "sources",
    "stratified_split": "sources",
    "Pipeline": "transforms",
    "build_pipeline": "transforms",
    "resize_batch": "transforms",
    "prepare_image": "transforms",
    "to_rgb": "transforms",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

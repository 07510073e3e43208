"""The data layer: any image-classification dataset through 🤗 datasets, augmented cheaply and reproducibly."""

from .arguments import AUGMENTATIONS, BAD_IMAGE_POLICIES, DataArguments
from .loading import (
    BadImageError,
    EpochShuffleSampler,
    ImageClassificationDataset,
    collate,
    example_seed,
    make_dataloader,
)
from .sources import (
    ImageClassificationData,
    check_seed,
    dataset_identity,
    identity_changes,
    load_image_dataset,
    stratified_split,
)
from .transforms import Pipeline, build_pipeline, prepare_image, resize_batch, to_rgb

__all__ = [
    "AUGMENTATIONS",
    "BAD_IMAGE_POLICIES",
    "BadImageError",
    "DataArguments",
    "EpochShuffleSampler",
    "ImageClassificationData",
    "ImageClassificationDataset",
    "Pipeline",
    "build_pipeline",
    "check_seed",
    "collate",
    "dataset_identity",
    "example_seed",
    "identity_changes",
    "load_image_dataset",
    "make_dataloader",
    "prepare_image",
    "resize_batch",
    "stratified_split",
    "to_rgb",
]

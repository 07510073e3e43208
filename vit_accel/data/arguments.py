"""Command-line arguments of the data layer, named as in transformers' `run_image_classification_no_trainer.py`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

AUGMENTATIONS: tuple[str, ...] = ("cifar", "inception", "randaugment", "mae", "none")
BAD_IMAGE_POLICIES: tuple[str, ...] = ("error", "skip")
# How training JPEGs are decoded: `pil_draft` draws the random-resized crop first, then decodes at the DCT scale it
# needs and resizes on uint8.
IMAGE_DECODERS: tuple[str, ...] = ("auto", "pil", "pil_draft", "simplejpeg", "turbojpeg")


def simplejpeg_available() -> bool:
    """Whether the optional `simplejpeg` package (`pip install 'vit_accel[jpeg]'`) can be imported."""
    return importlib.util.find_spec("simplejpeg") is not None


def turbojpeg_available() -> bool:
    """Whether the TurboJPEG 3 library of the optional `turbojpeg` wheel (`pip install 'vit_accel[jpeg]'`, Linux
    x86_64 and macOS) loads."""
    from .libturbojpeg import available

    return available()


def decoder_installed(decoder: str) -> bool:
    """Whether `--image_decoder <decoder>` can run here (simplejpeg and turbojpeg need their optional packages)."""
    if decoder == "simplejpeg":
        return simplejpeg_available()
    return decoder != "turbojpeg" or turbojpeg_available()


def check_decoder_installed(decoder: str | None) -> None:
    """`--image_decoder simplejpeg` or `turbojpeg` needs its package: one line saying how to install it."""
    if decoder is None or decoder_installed(decoder):
        return
    if decoder == "simplejpeg":
        raise UserError("--image_decoder simplejpeg needs the simplejpeg package: pip install 'vit_accel[jpeg]'.")
    if decoder == "turbojpeg":
        raise UserError(
            "--image_decoder turbojpeg needs the turbojpeg wheel's library: pip install 'vit_accel[jpeg]' "
            "(wheels for Linux x86_64 and macOS, Python <= 3.13)."
        )


# Examples per shuffle window of a stream (🤗 datasets' default shuffle buffer size too).
DEFAULT_SHUFFLE_BUFFER = 1000


@dataclass
class DataArguments:
    """Where the images come from and how they are augmented; parsed by `transformers.HfArgumentParser`."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hugging Face Hub (e.g. `uoft-cs/cifar100`), or a local path: a folder of "
            "parquet/arrow files (split names from the file names, as on the Hub) or a `save_to_disk` directory."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration name of the dataset (`datasets.load_dataset`'s `name`)."}
    )
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of training images in ImageFolder layout: `root/<class>/*.png|jpg`."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "A folder of validation images in ImageFolder layout (as --train_dir)."}
    )
    image_column_name: str | None = field(
        default=None,
        metadata={"help": "The column holding the images. Default: `image`, `img`, or the only `Image` column."},
    )
    label_column_name: str | None = field(
        default=None,
        metadata={
            "help": "The column holding the labels. Default: `label`, `labels`, `fine_label`, or the first "
            "`ClassLabel` column."
        },
    )
    train_val_split: float = field(
        default=0.15,
        metadata={
            "help": "Fraction of the training split held out (seeded, stratified by label) for validation when the "
            "dataset has no validation or test split."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "For debugging or quicker training: keep this many training examples (a seeded sample)."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "For debugging or quicker evaluation: keep this many validation examples (a seeded sample)."},
    )
    augmentation: str = field(
        default="cifar",
        metadata={
            "help": "Training augmentation preset: `cifar` (crop 32 pad 4, flip, AutoAugment CIFAR10 at 32 px, then "
            "resized on the accelerator), `inception` (random resized crop + flip, pixels in [-1, 1]), `randaugment` "
            "(random resized crop + flip + RandAugment), `mae` (MAE pre-training: bicubic random resized crop of "
            "20 to 100 percent of the area + flip), `none` (resize only).",
            "choices": list(AUGMENTATIONS),
        },
    )
    random_erasing: float = field(
        default=0.0,
        metadata={
            "help": "Probability of erasing a random rectangle of each training image (torchvision RandomErasing, "
            "filled with the mean colour); 0.25 in the DeiT/MAE recipes. Applied per example in the workers."
        },
    )
    bad_images: str = field(
        default="error",
        metadata={
            "help": "What to do with an image that cannot be decoded: `error` stops with its row and path, `skip` "
            "replaces it by the next readable example and counts it.",
            "choices": list(BAD_IMAGE_POLICIES),
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream --dataset_name (a folder or URL of parquet or webdataset .tar shards, or a Hub id) "
            "instead of loading it: shards split across processes and workers, seeded shuffle (shards, then a "
            "--shuffle_buffer_size window), exact mid-epoch resume."
        },
    )
    shuffle_buffer_size: int | None = field(
        default=None,
        metadata={
            "help": "With --streaming: examples per shuffle window (each window of a stream is permuted); default "
            f"{DEFAULT_SHUFFLE_BUFFER}."
        },
    )
    image_decoder: str | None = field(
        default=None,
        metadata={
            "help": "How training images are decoded: `pil` (full decode, then the preset's transforms), "
            "`pil_draft` (the crop box drawn from the header first, JPEGs decoded at the reduced DCT scale it needs, "
            "resized on uint8: the same crops and flips, pixels within a few levels), `simplejpeg` (the same path "
            "decoding with libjpeg-turbo directly, about a third faster), `turbojpeg` (the same pixels again, "
            "libjpeg-turbo reconstructing only the crop's region: pip install 'vit_accel[jpeg]' for both), `auto` "
            "(the default: turbojpeg, else simplejpeg, whichever is installed, else pil_draft, for training presets "
            "that start with a random-resized crop; pil otherwise).",
            "choices": list(IMAGE_DECODERS),
        },
    )
    dataloader_num_workers: int = field(
        default=2, metadata={"help": "Worker processes per data loader (0 decodes in the main process)."}
    )

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_dir is None:
            raise UserError("Give a dataset: --dataset_name (a Hub id or a local path) or --train_dir (ImageFolder).")
        if self.dataset_name is not None and (self.train_dir is not None or self.validation_dir is not None):
            raise UserError("Give either --dataset_name or --train_dir/--validation_dir, not both.")
        if self.validation_dir is not None and self.train_dir is None:
            raise UserError("--validation_dir needs --train_dir.")
        if self.dataset_config_name is not None and self.train_dir is not None:
            raise UserError(
                f"--dataset_config_name {self.dataset_config_name!r} applies to --dataset_name only: an ImageFolder "
                "(--train_dir) has no configurations."
            )
        if not 0.0 < self.train_val_split < 1.0:
            raise UserError(f"--train_val_split must be in (0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be a positive integer, got {value}.")
        if self.augmentation not in AUGMENTATIONS:
            raise UserError(f"--augmentation must be one of {', '.join(AUGMENTATIONS)}; got {self.augmentation!r}.")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise UserError(f"--random_erasing must be a probability in [0, 1], got {self.random_erasing}.")
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise UserError(f"--bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {self.bad_images!r}.")
        if self.streaming and self.dataset_name is None:
            raise UserError("--streaming reads --dataset_name (shards or a Hub id), not --train_dir.")
        if self.shuffle_buffer_size is not None and not self.streaming:
            raise UserError("--shuffle_buffer_size applies to --streaming input only; drop it or add --streaming.")
        if self.shuffle_buffer_size is not None and self.shuffle_buffer_size < 1:
            raise UserError(f"--shuffle_buffer_size must be >= 1, got {self.shuffle_buffer_size}.")
        if self.image_decoder is not None and self.image_decoder not in IMAGE_DECODERS:
            raise UserError(f"--image_decoder must be one of {', '.join(IMAGE_DECODERS)}; got {self.image_decoder!r}.")
        check_decoder_installed(self.image_decoder)
        if self.dataloader_num_workers < 0:
            raise UserError(f"--dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}.")


# The data flags of `vit-accel evaluate`: those that choose and read an evaluation split.
EVALUATION_FIELDS: tuple[str, ...] = (
    "dataset_name",
    "dataset_config_name",
    "validation_dir",
    "image_column_name",
    "label_column_name",
    "train_val_split",
    "max_eval_samples",
    "bad_images",
    "dataloader_num_workers",
)


def add_data_arguments(
    parser: argparse.ArgumentParser, names: tuple[str, ...], overrides: dict[str, dict[str, Any]] | None = None
) -> None:
    """Declare `DataArguments`' fields `names` on an argparse `parser` under the same flags, types, choices,
    defaults and help as train.py's (transformers' HfArgumentParser); `overrides`: per field, argparse settings that
    replace them (another default or help). The values are then checked by `DataArguments` itself."""
    fields = {f.name: f for f in dataclasses.fields(DataArguments)}
    # The annotations resolved (HfArgumentParser resolves them in place too): `str | None` converts with `str`.
    hints = typing.get_type_hints(DataArguments)
    for name in names:
        spec = fields[name]
        kinds = [kind for kind in typing.get_args(hints[name]) if kind is not type(None)] or [hints[name]]
        settings: dict[str, Any] = {
            "type": kinds[0],
            "default": spec.default,
            "help": spec.metadata.get("help"),
        }
        if "choices" in spec.metadata:
            settings["choices"] = spec.metadata["choices"]
        settings.update((overrides or {}).get(name, {}))
        parser.add_argument(f"--{name}", **settings)

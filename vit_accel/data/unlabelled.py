"""Images without labels, for self-supervised pre-training (MAE): a flat folder of images (or class folders, their
names ignored), a 🤗 dataset without a label column, or any labelled dataset with its labels ignored.

The result has the shape of a labelled dataset (`ImageClassificationData`, columns `image` and `label`) so that the
seeded, resumable loader reads it unchanged; its `label` column holds each row's index in its split instead of a
class, which seeds the row's mask (the same mask for an example whatever the number of processes).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from datasets import DatasetDict

from ..errors import UserError
from ..paths import looks_local
from . import folders
from .arguments import DataArguments
from .sources import (
    EVAL_SPLITS,
    ImageClassificationData,
    _check_distinct_folders,
    _load,
    _load_local,
    _normalise,
    _pick_image_column,
    check_seed,
)


def _load_folders(args: DataArguments) -> DatasetDict:
    """--train_dir (and --validation_dir) as ImageFolder without labels: every image below the folder, at any depth."""
    data_files = {}
    for split, folder in (("train", args.train_dir), ("validation", args.validation_dir)):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise UserError(f"--{split}_dir {folder!r}: no such directory.")
        layout = folders.scan(Path(folder))
        if layout.num_images == 0:
            raise UserError(f"--{split}_dir {folder}: no images in it (nor in its folders).")
        data_files[split] = folders.data_files(layout)
    return datasets.load_dataset("imagefolder", data_files=data_files, drop_labels=True)


def _image_folder(path: Path) -> DatasetDict | None:
    """A local folder of images (no metadata file, no data files) as ImageFolder without labels: one split per
    top-level folder named after a split (train/, validation/, test/, ...) when every image lies in one, else one
    "train" split of every image below it; None for any other folder."""
    layout = folders.scan(path)
    if layout.metadata or not layout.num_images or set(layout.other_files) & set(folders.DATA_FILE_EXTENSIONS):
        return None
    top = {parts[0]: folders._split_of(parts[0]) for parts in layout.folders if len(parts) == 1}
    splits = {name: split for name, split in top.items() if split is not None}
    if splits and all(folder and folder[0] in splits for folder in layout.image_counts):
        data_files = {split: folders.data_files(folders.scan(path / name)) for name, split in splits.items()}
    else:
        data_files = {"train": folders.data_files(layout)}
    return datasets.load_dataset("imagefolder", data_files=data_files, drop_labels=True)


def _load_named(args: DataArguments) -> DatasetDict:
    name = args.dataset_name
    if looks_local(name) or Path(name).exists():
        path = Path(name).expanduser()
        saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        plain = path.is_dir() and not saved and args.dataset_config_name is None
        if plain and (images := _image_folder(path)) is not None:
            return images
        return _load_local(path, args.dataset_config_name)
    return datasets.load_dataset(name, args.dataset_config_name)


def _load_raw(args: DataArguments) -> DatasetDict:
    return _load_folders(args) if args.train_dir is not None else _load_named(args)


def held_out_split(num_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) row indices, each sorted: about `fraction` of the rows held out, at least one, and at
    least one left to train on."""
    held = min(max(int(round(num_rows * fraction)), 1), num_rows - 1)
    order = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(order[held:]), np.sort(order[:held])


def load_unlabelled_dataset(args: DataArguments, seed: int) -> ImageClassificationData:
    """The training and held-out images, any labels ignored: the dataset's validation split (or --validation_dir),
    else a seeded --train_val_split fraction of the training images; subsampled as --max_*_samples ask."""
    check_seed(seed)
    if args.train_dir is not None and args.validation_dir is not None:
        _check_distinct_folders(args.train_dir, args.validation_dir)
    raw = _load(args, _load_raw)
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})
    names = list(raw)
    if "train" in raw:
        train_split = "train"
    elif len(names) == 1:
        train_split = names[0]
    else:
        raise UserError(f"No 'train' split; the dataset has splits: {', '.join(names)}.")
    eval_split = next((name for name in EVAL_SPLITS if name in raw and name != train_split), None)
    image_column = _pick_image_column(raw[train_split], args.image_column_name)
    splits = {}
    for name in (train_split, eval_split):
        if name is None:
            continue
        split = _normalise(raw[name], image_column, None, name)
        if len(split) == 0:
            raise UserError(f"Split {name!r} of the dataset has no images.")
        # The row's index in its split stands where a label would: it seeds the example's mask.
        splits[name] = split.add_column("label", np.arange(len(split), dtype=np.int64))
    train = splits[train_split]
    if eval_split is not None:
        validation, described = splits[eval_split], eval_split
    else:
        if len(train) < 2:
            raise UserError(f"The training split {train_split!r} holds {len(train)} image: nothing to hold out.")
        train_index, held_index = held_out_split(len(train), args.train_val_split, seed)
        train, validation = train.select(train_index), train.select(held_index)
        described = f"{train_split} (hold-out of {args.train_val_split})"
    if args.max_train_samples is not None and args.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(args.max_train_samples))
    if args.max_eval_samples is not None and args.max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(args.max_eval_samples))
    return ImageClassificationData(train, validation, [], described)

"""Load an image-classification dataset from the Hub, a local folder or a `save_to_disk` directory, all through
🤗 datasets, and normalise it to two columns: `image` (an `Image` feature) and `label` (a `ClassLabel`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value

from ..errors import UserError
from .arguments import DataArguments

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img")
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label")
# Split names used for evaluation when present, in order of preference.
EVAL_SPLITS: tuple[str, ...] = ("validation", "valid", "val", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageClassificationData:
    """The two splits, normalised to columns `image` (Image feature) and `label` (int), and the label names."""

    train: Dataset
    validation: Dataset
    labels: list[str]

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.labels)}


def _looks_local(name: str) -> bool:
    # A Hub id is `name` or `owner/name`; anything absolute, relative-dotted, home-based or deeper is a path.
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def _load_local(path: Path, config_name: str | None) -> DatasetDict:
    if not path.exists():
        raise UserError(f"--dataset_name {str(path)!r}: no such file or directory.")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if path.is_file():
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
        if builder is None:
            raise UserError(f"--dataset_name {str(path)!r}: a single file must be .parquet or .arrow.")
        return datasets.load_dataset(builder, data_files={"train": str(path)})
    # A folder of parquet/arrow/image files: `load_dataset` on the folder resolves data files and split names exactly
    # as it does for a Hub repository (`data/train-00000-of-00001.parquet` -> split "train"), so a local copy of a
    # Hub dataset loads like the Hub id.
    return datasets.load_dataset(str(path), name=config_name)


def _load_raw(args: DataArguments) -> DatasetDict:
    if args.train_dir is not None:
        data_files: dict[str, str] = {}
        for split, folder in (("train", args.train_dir), ("validation", args.validation_dir)):
            if folder is None:
                continue
            if not Path(folder).is_dir():
                raise UserError(f"--{split}_dir {folder!r}: no such directory.")
            data_files[split] = os.path.join(folder, "**")
        # As transformers' run_image_classification: ImageFolder, class names from the sub-folder names.
        return datasets.load_dataset("imagefolder", data_files=data_files)
    name = args.dataset_name
    assert name is not None  # DataArguments.__post_init__ guarantees one source
    if _looks_local(name) or Path(name).exists():
        return _load_local(Path(name).expanduser(), args.dataset_config_name)
    return datasets.load_dataset(name, args.dataset_config_name)


def _describe_columns(dataset: Dataset) -> str:
    def kind(feature) -> str:
        if isinstance(feature, Value):
            return f"Value {feature.dtype}"
        return "struct" if isinstance(feature, dict) else type(feature).__name__

    return ", ".join(f"{column} ({kind(feature)})" for column, feature in dataset.features.items())


def _is_encoded_struct(feature) -> bool:
    # {"bytes": binary, "path": string}: an Image column written without 🤗 metadata (pandas, pyarrow, polars).
    return isinstance(feature, dict) and "bytes" in feature and set(feature) <= {"bytes", "path"}


def _pick_image_column(dataset: Dataset, requested: str | None) -> str:
    features = dataset.features
    if requested is not None:
        if requested not in features:
            raise UserError(
                f"--image_column_name {requested!r} is not a column; available columns: {_describe_columns(dataset)}."
            )
        return requested
    for name in IMAGE_COLUMN_CANDIDATES:
        if name in features and (isinstance(features[name], Image) or _is_encoded_struct(features[name])):
            return name
    image_columns = [name for name, feature in features.items() if isinstance(feature, Image)]
    if len(image_columns) == 1:
        return image_columns[0]
    raise UserError(
        "Could not find the image column (looked for an Image feature named "
        f"{' or '.join(IMAGE_COLUMN_CANDIDATES)}, or a single Image column); pass --image_column_name. "
        f"Available columns: {_describe_columns(dataset)}."
    )


def _pick_label_column(dataset: Dataset, requested: str | None) -> str:
    features = dataset.features
    if requested is not None:
        if requested not in features:
            raise UserError(
                f"--label_column_name {requested!r} is not a column; available columns: {_describe_columns(dataset)}."
            )
        return requested
    for name in LABEL_COLUMN_CANDIDATES:
        if name in features:
            return name
    class_columns = [name for name, feature in features.items() if isinstance(feature, ClassLabel)]
    if class_columns:
        return class_columns[0]
    raise UserError(
        f"Could not find the label column (looked for {', '.join(LABEL_COLUMN_CANDIDATES)} or a ClassLabel column); "
        f"pass --label_column_name. Available columns: {_describe_columns(dataset)}."
    )


def _label_names(splits: dict[str, Dataset], train_split: str) -> list[str]:
    """Names from the ClassLabel feature when there is one; otherwise from the values seen in the training split."""
    feature = splits[train_split].features["label"]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    if isinstance(feature, Value) and feature.dtype == "string":
        # From the training split alone: a label seen only in the evaluation split is refused later, not made into a
        # class the model never trains on.
        return sorted(value for value in splits[train_split].unique("label") if value is not None)
    if isinstance(feature, Value) and (feature.dtype.startswith("int") or feature.dtype.startswith("uint")):
        values = [value for value in splits[train_split].unique("label") if value is not None]
        if not values:
            raise UserError(f"The training split {train_split!r} has no labels.")
        return [str(index) for index in range(int(max(values)) + 1)]
    raise UserError(f"The label column has type {feature!r}; expected a ClassLabel, an integer or a string column.")


def label_array(dataset: Dataset) -> np.ndarray:
    """The `label` column as a numpy array, honouring any indices mapping (rows as the dataset shows them)."""
    column = dataset.with_format("arrow")["label"]
    return np.asarray(column.to_numpy(zero_copy_only=False) if hasattr(column, "to_numpy") else column)


def _check_labels(dataset: Dataset, split: str, num_labels: int, column: str) -> None:
    """Fail on the first label outside [0, num_labels), naming the split and row (e.g. -1 for 'no label')."""
    labels = label_array(dataset)
    bad = np.flatnonzero((labels < 0) | (labels >= num_labels)) if labels.dtype != object else None
    if bad is None:  # None values (missing labels) come through as objects
        bad = np.array([i for i, value in enumerate(labels) if value is None or not 0 <= value < num_labels])
    if len(bad):
        row = int(bad[0])
        value = labels[row].item() if isinstance(labels[row], np.generic) else labels[row]
        raise UserError(
            f"Split {split!r}, row {row}: label {value!r} (column {column!r}) is outside the label set "
            f"of {num_labels} classes (0..{num_labels - 1}); {len(bad)} such row(s) in this split."
        )


def _check_classes(splits: dict[str, Dataset], train_split: str, labels: list[str], column: str) -> None:
    """Refuse data a classifier cannot learn from: an empty split, a single class, or an evaluation label that no
    training example has (the model would hold an output it never trained)."""
    for name, split in splits.items():
        if len(split) == 0:
            raise UserError(f"Split {name!r} of the dataset has no rows.")
    trained = set(np.unique(label_array(splits[train_split])).tolist())
    if len(trained) < 2:
        only = labels[next(iter(trained))] if trained else None
        raise UserError(
            f"The training split {train_split!r} holds a single class ({only!r}, column {column!r}): "
            "a classifier needs examples of at least two."
        )
    for name, split in splits.items():
        unseen = sorted(set(np.unique(label_array(split)).tolist()) - trained)
        if name != train_split and unseen:
            raise UserError(
                f"Split {name!r} has label {labels[unseen[0]]!r} (column {column!r}), which no example of the "
                f"training split {train_split!r} has: the model could never learn it"
                + (f" ({len(unseen)} such labels)." if len(unseen) > 1 else ".")
            )


def _normalise(dataset: Dataset, image_column: str, label_column: str, split: str) -> Dataset:
    for column in (image_column, label_column):
        if column not in dataset.features:
            raise UserError(f"Split {split!r} has no column {column!r}; available: {_describe_columns(dataset)}.")
    dataset = dataset.select_columns([image_column, label_column])
    feature = dataset.features[image_column]
    if _is_encoded_struct(feature) or (
        isinstance(feature, Value) and feature.dtype in ("string", "large_string", "binary", "large_binary")
    ):
        dataset = dataset.cast_column(image_column, Image())  # encoded bytes (+ path), or file paths
    elif not isinstance(feature, Image):
        raise UserError(
            f"Column {image_column!r} of split {split!r} holds {feature!r}, not images (an Image feature, file paths "
            "or encoded bytes); pass --image_column_name."
        )
    renames = {old: new for old, new in ((image_column, "image"), (label_column, "label")) if old != new}
    return dataset.rename_columns(renames) if renames else dataset


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices: about `fraction` of every class goes to validation.

    Done by hand rather than with `train_test_split(stratify_by_column=...)` because that refuses classes with a single
    example; here such a class stays in training. Returns sorted (train, validation) indices.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    total = int(round(len(labels) * fraction))
    # Largest-remainder allocation of `total` over the classes, never taking a class's last example.
    exact = counts * fraction
    take = np.minimum(np.floor(exact).astype(int), np.maximum(counts - 1, 0))
    order = np.argsort(-(exact - take), kind="stable")
    for position in order:
        if take.sum() >= total:
            break
        if take[position] < counts[position] - 1:
            take[position] += 1
    validation: list[np.ndarray] = []
    for cls, n_val in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        validation.append(rng.permutation(members)[:n_val])
    val_index = np.sort(np.concatenate(validation)) if validation else np.array([], dtype=int)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_index] = False
    return np.flatnonzero(train_mask), val_index


def _load(args: DataArguments) -> DatasetDict:
    """`_load_raw`, with what 🤗 datasets refuses (empty splits, unreadable files, an unreachable Hub) as one line."""
    source = f"--dataset_name {args.dataset_name}" if args.dataset_name else f"--train_dir {args.train_dir}"
    try:
        return _load_raw(args)
    except UserError:
        raise
    except (ValueError, OSError, IndexError, ConnectionError, datasets.exceptions.DatasetGenerationError) as error:
        local = args.train_dir is not None or (args.dataset_name and Path(args.dataset_name).expanduser().exists())
        where = "" if local else " (not a local path, so it was looked up on the Hub)"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{source}{where}: 🤗 datasets could not load it: {reason}") from error


def load_image_dataset(args: DataArguments, seed: int, for_training: bool = True) -> ImageClassificationData:
    """Load, pick the columns, pick or make the validation split, subsample, and check the labels.

    `for_training` also refuses what a classifier cannot be trained on: a single class, or an evaluation label that
    no training example has.
    """
    raw = _load(args)
    if not isinstance(raw, DatasetDict):
        raw = DatasetDict({"train": raw})
    split_names = list(raw.keys())
    if "train" in raw:
        train_split = "train"
    elif len(split_names) == 1:
        train_split = split_names[0]
    else:
        raise UserError(f"No 'train' split; the dataset has splits: {', '.join(split_names)}.")
    eval_split = next((name for name in EVAL_SPLITS if name in raw and name != train_split), None)

    image_column = _pick_image_column(raw[train_split], args.image_column_name)
    label_column = _pick_label_column(raw[train_split], args.label_column_name)
    if image_column == label_column:
        raise UserError(f"The image and label columns are both {image_column!r}.")
    logger.info("Images from column %r, labels from column %r.", image_column, label_column)

    splits = {train_split: _normalise(raw[train_split], image_column, label_column, train_split)}
    if eval_split is not None:
        splits[eval_split] = _normalise(raw[eval_split], image_column, label_column, eval_split)
    labels = _label_names(splits, train_split)
    if not labels:
        raise UserError("The label set is empty.")
    class_label = ClassLabel(names=labels)
    mapping = {label: index for index, label in enumerate(labels)}
    for name, split in list(splits.items()):
        feature = split.features["label"]
        if isinstance(feature, Value) and feature.dtype == "string":
            unseen = sorted({value for value in split.unique("label") if value is not None} - set(mapping))
            if unseen:
                raise UserError(
                    f"Split {name!r} has label {unseen[0]!r} (column {label_column!r}), which no example of the "
                    f"training split {train_split!r} has: the model could never learn it"
                    + (f" ({len(unseen)} such labels)." if len(unseen) > 1 else ".")
                )
            split = split.map(
                lambda batch: {"label": [mapping.get(value, -1) for value in batch["label"]]},
                batched=True,
                features=datasets.Features({"image": split.features["image"], "label": Value("int64")}),
            )
        elif isinstance(feature, ClassLabel) and list(feature.names) != labels:
            raise UserError(
                f"Split {name!r} has label names {feature.names[:5]}... that differ from the training split's "
                f"{labels[:5]}...; the integer labels would mean different classes."
            )
        _check_labels(split, name, len(labels), label_column)
        if not isinstance(feature, ClassLabel):
            split = split.cast_column("label", class_label)
        splits[name] = split

    if for_training:
        _check_classes(splits, train_split, labels, label_column)
    elif any(len(split) == 0 for split in splits.values()):
        raise UserError(f"The dataset's split {next(n for n, d in splits.items() if len(d) == 0)!r} has no rows.")
    train = splits[train_split]
    if eval_split is not None:
        validation = splits[eval_split]
    else:
        train_index, val_index = stratified_split(label_array(train), args.train_val_split, seed)
        if len(val_index) == 0:
            raise UserError(
                f"--train_val_split {args.train_val_split} leaves no validation examples out of {len(train)}."
            )
        train, validation = train.select(train_index), train.select(val_index)

    if args.max_train_samples is not None and args.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(args.max_train_samples))
    if args.max_eval_samples is not None and args.max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(args.max_eval_samples))
    return ImageClassificationData(train=train, validation=validation, labels=labels)

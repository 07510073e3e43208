"""Load an image-classification dataset from the Hub, a local folder or a `save_to_disk` directory, all through
🤗 datasets, and normalise it to two columns: `image` (an `Image` feature) and `label` (a `ClassLabel`)."""

from __future__ import annotations

import glob
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value

from ..errors import UserError
from ..paths import looks_local
from . import folders
from .arguments import DataArguments
from .folders import GLOB_CHARACTERS, URL_PATTERN

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES: tuple[str, ...] = ("image", "img")
# `cls`: the class field of webdataset shards (`<key>.cls`).
LABEL_COLUMN_CANDIDATES: tuple[str, ...] = ("label", "labels", "fine_label", "cls")
# Split names used for evaluation when present, in order of preference.
EVAL_SPLITS: tuple[str, ...] = ("validation", "valid", "val", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Column types `_normalise` turns into images: file paths, or encoded bytes.
PATH_OR_BYTES_DTYPES: tuple[str, ...] = ("string", "large_string", "binary", "large_binary")
STRING_DTYPES: tuple[str, ...] = ("string", "large_string")
# numpy's legacy seeding (behind `accelerate.utils.set_seed`) takes 32-bit seeds only; one range for every seed use.
MAX_SEED: int = 2**32 - 1


@dataclass
class ImageClassificationData:
    """The two splits, normalised to columns `image` (Image feature) and `label` (int), and the label names."""

    train: Dataset
    validation: Dataset
    labels: list[str]
    # The dataset's split that `validation` is, or a description of the hold-out drawn from the training split.
    eval_split: str = "validation"

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.labels)}


def _load_local(path: Path, config_name: str | None) -> DatasetDict:
    if not path.exists():
        raise UserError(f"--dataset_name {str(path)!r}: no such file or directory.")
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        if config_name is not None:
            raise UserError(
                f"--dataset_config_name {config_name!r}: --dataset_name {str(path)!r} is a save_to_disk directory, "
                "which has no configurations; drop the flag."
            )
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if path.is_file():
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
        if builder is None:
            raise UserError(f"--dataset_name {str(path)!r}: a single file must be .parquet or .arrow.")
        if config_name is not None:
            raise UserError(
                f"--dataset_config_name {config_name!r}: --dataset_name {str(path)!r} is a single file, which has "
                "no configurations; drop the flag."
            )
        return datasets.load_dataset(builder, data_files={"train": glob.escape(str(path))})
    # A folder of parquet/arrow/image files: `load_dataset` on the folder resolves data files and split names exactly
    # as it does for a Hub repository (`data/train-00000-of-00001.parquet` -> split "train"), so a local copy of a
    # Hub dataset loads like the Hub id. It globs below the folder's own path, which it does not escape, so a folder
    # whose path holds a glob character would load as "no data".
    special = sorted({character for character in str(path.resolve()) if character in GLOB_CHARACTERS})
    if special:
        raise UserError(
            f"--dataset_name {str(path)!r}: its path holds the glob character(s) "
            f"{', '.join(repr(c) for c in special)}, which 🤗 datasets reads as a pattern when it lists a folder's "
            "files; rename the folder (or point a link without them at it)."
        )
    if config_name is None and (splits := folders.image_folder_splits(path, f"--dataset_name {path}")) is not None:
        # A folder of images in class folders: checked, and loaded as datasets would (linked folders entered).
        return datasets.load_dataset(
            "imagefolder",
            data_files={split: folders.data_files(layout) for split, layout in splits.items()},
            **folders.label_options(splits.values()),
        )
    return datasets.load_dataset(str(path), name=config_name)


def _load_raw(args: DataArguments) -> DatasetDict:
    if args.train_dir is not None:
        data_files: dict[str, str | list[str]] = {}
        layouts = {}
        for split, folder in (("train", args.train_dir), ("validation", args.validation_dir)):
            if folder is None:
                continue
            if not Path(folder).is_dir():
                raise UserError(f"--{split}_dir {folder!r}: no such directory.")
            # The same folder as both: `vit-accel evaluate --validation_dir` (training refuses it before this).
            evaluating = args.train_dir == args.validation_dir
            flag = "--validation_dir" if evaluating else f"--{split}_dir"
            layouts[split] = folders.scan(Path(folder))
            folders.check_layout(layouts[split], f"{flag} {folder}", training=split == "train" and not evaluating)
            data_files[split] = folders.data_files(layouts[split])
        if len(layouts) == 2 and args.train_dir != args.validation_dir:
            folders.compare_classes(layouts["train"], layouts["validation"])
        # As transformers' run_image_classification: ImageFolder, class names from the sub-folder names.
        return datasets.load_dataset("imagefolder", data_files=data_files, **folders.label_options(layouts.values()))
    name = args.dataset_name
    assert name is not None  # DataArguments.__post_init__ guarantees one source
    if looks_local(name) or Path(name).exists():
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
    # Then a column named as images that holds what `_normalise` decodes: encoded bytes or file paths.
    for name in IMAGE_COLUMN_CANDIDATES:
        feature = features.get(name)
        if isinstance(feature, Value) and feature.dtype in PATH_OR_BYTES_DTYPES:
            return name
    raise UserError(
        f"Could not find the image column (looked for a column named {' or '.join(IMAGE_COLUMN_CANDIDATES)} of "
        "images, encoded bytes or file paths, or a single Image column); pass --image_column_name. "
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


def _arrow_labels(dataset: Dataset) -> pa.ChunkedArray:
    """The `label` column as arrow, honouring any indices mapping; no other column is read."""
    column = dataset.with_format("arrow")["label"]
    return column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])


def label_array(dataset: Dataset) -> np.ndarray:
    """The `label` column as a numpy array, honouring any indices mapping (rows as the dataset shows them)."""
    column = dataset.with_format("arrow")["label"]
    return np.asarray(column.to_numpy(zero_copy_only=False) if hasattr(column, "to_numpy") else column)


def _is_integer(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _label_values(split: Dataset, name: str, column: str) -> list:
    """The classes of a label column without a ClassLabel: its distinct values, sorted.

    Integer labels are treated as string labels are, as category values: `{0, 7}` are two classes, named "0" and
    "7", never a range up to the largest value (which would add classes without any example, and could ask for
    billions of names). Negative integers are not classes (-1 marks unlabelled rows); they are refused by row.
    """
    feature = split.features["label"]
    if not (isinstance(feature, Value) and (feature.dtype in STRING_DTYPES or _is_integer(feature))):
        raise UserError(
            f"The label column {column!r} has type {feature!r}; expected a ClassLabel, an integer or a string column."
        )
    values = [value for value in pc.unique(_arrow_labels(split)).to_pylist() if value is not None]
    if _is_integer(feature):
        values = [value for value in values if value >= 0]
    if not values and len(split) == 0:
        raise UserError(f"Split {name!r} of the dataset has no rows.")
    return sorted(values)


def _encode_labels(
    split: Dataset, name: str, column: str, labels: list[str], values: list | None, train_split: str
) -> Dataset:
    """The split with its labels as ids into `labels` in a ClassLabel column, after refusing the first row that has
    none: a missing label, a negative integer, an id outside the label set, or a value the training split lacks.

    `values` are the training split's label values when its column has no ClassLabel (see `_label_values`).
    """
    feature = split.features["label"]
    arrow = _arrow_labels(split)
    if isinstance(feature, ClassLabel):
        if list(feature.names) != labels:
            raise UserError(
                f"Split {name!r} has label names {feature.names[:5]}... that differ from the training split's "
                f"{labels[:5]}...; the integer labels would mean different classes."
            )
        ids = arrow
    elif values is None and _is_integer(feature):
        ids = arrow  # integer ids into the training split's ClassLabel
    else:
        try:
            # Vectorised: the position of each row's value among the classes, null when it is not one of them.
            ids = pc.index_in(arrow, value_set=pa.array(labels if values is None else values))
        except (pa.ArrowTypeError, pa.ArrowNotImplementedError, pa.ArrowInvalid) as error:
            raise UserError(
                f"Split {name!r}: the label column {column!r} holds {feature!r}, unlike the training split "
                f"{train_split!r}; its labels cannot be matched to the classes ({error})."
            ) from error
    missing = pc.is_null(arrow).to_numpy(zero_copy_only=False)
    ids_np = np.asarray(pc.fill_null(ids, -1).to_numpy(zero_copy_only=False)).astype(np.int64, copy=False)
    bad = np.flatnonzero(missing | (ids_np < 0) | (ids_np >= len(labels)))
    if len(bad):
        row = int(bad[0])
        value = arrow[row].as_py()
        where, count = f"Split {name!r}, row {row}", f"{len(bad)} such row(s) in this split"
        if value is None:
            raise UserError(f"{where}: the label (column {column!r}) is missing (null); {count}.")
        if values is not None and isinstance(value, int) and value < 0:
            raise UserError(
                f"{where}: label {value!r} (column {column!r}) is negative: integer labels are class values >= 0 "
                f"(-1 usually marks an unlabelled row); {count}."
            )
        if ids is arrow:
            raise UserError(
                f"{where}: label {value!r} (column {column!r}) is outside the label set of {len(labels)} classes "
                f"(0..{len(labels) - 1}); {count}."
            )
        raise UserError(
            f"{where}: label {value!r} (column {column!r}) has no example in the training split {train_split!r}: "
            f"the model could never learn it; {count}."
        )
    if isinstance(feature, ClassLabel):
        return split
    if ids is not arrow:
        # A new column beside the images: `map` would rewrite every image to change the labels.
        split = split.remove_columns("label").add_column("label", ids_np, feature=Value("int64"))
    return split.cast_column("label", ClassLabel(names=labels))


def _warn_near_duplicates(labels: list[str], column: str) -> None:
    """Point out label names that differ only in case or spacing (`cat`, `cat `, `Cat`): separate classes here, most
    likely one class in the mind of whoever labelled the data."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(" ".join(str(label).split()).casefold(), []).append(label)
    clashes = [names for names in groups.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(", ".join(repr(n) for n in names[:-1]) + f" and {names[-1]!r}" for names in clashes[:5]) + (
            "; ..." if len(clashes) > 5 else ""
        )
        logger.warning(
            f"Labels that differ only in case or spacing (column {column!r}) are trained as separate classes: "
            f"{shown} ({len(clashes)} such group{'s' if len(clashes) > 1 else ''}); if each group names one class, "
            "fix the labels."
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


def _check_subsample(
    train: Dataset, validation: Dataset, classes: set[int], labels: list[str], max_train_samples: int, column: str
) -> None:
    """What `--max_train_samples` really trains on: refused when it is a single class; when it misses classes of the
    full training split, one warning with how many (the evaluation still scores them).

    Only a warning for missed classes: the flag is for debugging and quick runs, and a sample of 64 of CIFAR-100's
    100 classes cannot hold them all, so refusing would forbid the smoke test it exists for.
    """
    kept = set(np.unique(label_array(train)).tolist())
    if len(kept) < 2:
        raise UserError(
            f"--max_train_samples {max_train_samples} keeps a single class ({labels[next(iter(kept))]!r}) of the "
            f"{len(classes)} in the training split (column {column!r}): a classifier needs examples of at least two; "
            "keep more samples."
        )
    missed = classes - kept
    if missed:
        evaluated = len(missed & set(np.unique(label_array(validation)).tolist()))
        logger.warning(
            f"--max_train_samples {max_train_samples} leaves {len(missed)} of the {len(classes)} classes without a "
            f"training example ({evaluated} of them in the evaluation set): the model cannot learn them, so its "
            "accuracy measures the sample, not the dataset."
        )


def _refuse_urls(dataset: Dataset, column: str, split: str) -> None:
    """Refuse images given as URLs (file paths, or Image entries with a path and no bytes), naming the first row.

    They are not fetched: every epoch would download every image again, in every data loader worker, and a run could
    neither work offline nor be repeated on the same images. Vectorised over the column; no image is read.
    """
    feature = dataset.features[column]
    table = dataset.with_format("arrow")[column]
    if isinstance(feature, Value) and feature.dtype in STRING_DTYPES:
        paths = table
    elif isinstance(feature, Image) or _is_encoded_struct(feature):
        paths = pc.if_else(pc.is_null(pc.struct_field(table, "bytes")), pc.struct_field(table, "path"), None)
    else:
        return
    remote = pc.match_substring_regex(paths, URL_PATTERN)
    rows = np.flatnonzero(pc.fill_null(remote, False).to_numpy(zero_copy_only=False))
    if len(rows):
        row = int(rows[0])
        raise UserError(
            f"Split {split!r}, row {row}: column {column!r} holds the URL {paths[row].as_py()!r} "
            f"({len(rows)} such row(s)); images are not fetched from the network: download them and give their "
            "local paths or bytes."
        )


def _normalise(dataset: Dataset, image_column: str, label_column: str | None, split: str) -> Dataset:
    """The split's image column as `image` (an Image feature) and its label column as `label`; the image column
    alone when `label_column` is None (images without labels)."""
    columns = [image_column] if label_column is None else [image_column, label_column]
    for column in columns:
        if column not in dataset.features:
            raise UserError(f"Split {split!r} has no column {column!r}; available: {_describe_columns(dataset)}.")
    dataset = dataset.select_columns(columns)
    _refuse_urls(dataset, image_column, split)
    feature = dataset.features[image_column]
    if _is_encoded_struct(feature) or (isinstance(feature, Value) and feature.dtype in PATH_OR_BYTES_DTYPES):
        dataset = dataset.cast_column(image_column, Image())  # encoded bytes (+ path), or file paths
    elif not isinstance(feature, Image):
        raise UserError(
            f"Column {image_column!r} of split {split!r} holds {feature!r}, not images (an Image feature, file paths "
            "or encoded bytes); pass --image_column_name."
        )
    renames = {old: new for old, new in zip(columns, ("image", "label")) if old != new}
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


def _load(args: DataArguments, load_raw=None) -> DatasetDict:
    """`load_raw(args)` (default `_load_raw`), with what 🤗 datasets refuses (empty splits, unreadable files, an
    unreachable Hub) as one line."""
    source = f"--dataset_name {args.dataset_name}" if args.dataset_name else f"--train_dir {args.train_dir}"
    try:
        return (load_raw or _load_raw)(args)
    except UserError:
        raise
    except (ValueError, OSError, IndexError, ConnectionError, datasets.exceptions.DatasetGenerationError) as error:
        local = args.train_dir is not None or (args.dataset_name and Path(args.dataset_name).expanduser().exists())
        where = "" if local else " (not a local path, so it was looked up on the Hub)"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{source}{where}: 🤗 datasets could not load it: {reason}") from error


def check_seed(seed: int) -> None:
    """Refuse, naming it, a seed that numpy cannot take: every seed use of a run must accept it, and numpy's legacy
    seeding (behind `accelerate.utils.set_seed`) takes integers 0..2**32 - 1 only."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed!r}: a seed must be an integer from 0 to {MAX_SEED}.")


def _check_distinct_folders(train_dir: str, validation_dir: str) -> None:
    """Refuse evaluating on training images: --train_dir and --validation_dir the same folder, or one inside the
    other (ImageFolder reads every image below the folder it is given)."""
    train, validation = (Path(folder).expanduser().resolve() for folder in (train_dir, validation_dir))
    flags = f"--train_dir {train_dir} and --validation_dir {validation_dir}"
    if train == validation:
        raise UserError(f"{flags} are the same folder: the evaluation would score the training images.")
    if train in validation.parents:
        raise UserError(
            f"--validation_dir {validation_dir} lies inside --train_dir {train_dir}: its images would be trained on "
            "(and a class named after its folder made)."
        )
    if validation in train.parents:
        raise UserError(
            f"--train_dir {train_dir} lies inside --validation_dir {validation_dir}: the evaluation would score the "
            "training images."
        )


def load_image_dataset(args: DataArguments, seed: int, for_training: bool = True) -> ImageClassificationData:
    """Load, pick the columns, pick or make the validation split, subsample, and check the labels.

    `for_training` also refuses what a classifier cannot be trained on: a single class (in the training split, and in
    what `max_train_samples` keeps of it), an evaluation label that no training example has, or a validation folder
    that is (or overlaps) the training folder.
    """
    check_seed(seed)
    if args.streaming:
        # A caller that has not been taught to stream must not load the shards whole instead.
        raise UserError(
            "--streaming: this command loads datasets whole and cannot stream; drop --streaming (a folder of parquet "
            "shards also loads whole), or stream from Python with vit_accel.data.streaming."
        )
    if for_training and args.train_dir is not None and args.validation_dir is not None:
        _check_distinct_folders(args.train_dir, args.validation_dir)
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
    feature = splits[train_split].features["label"]
    values = None if isinstance(feature, ClassLabel) else _label_values(splits[train_split], train_split, label_column)
    labels = list(feature.names) if values is None else [str(value) for value in values]
    if not labels:
        raise UserError(
            f"The training split {train_split!r} has no labels (column {label_column!r}): every row's label is "
            "missing (null) or negative."
        )
    # The training split first: its own missing labels are named before any evaluation label is matched to them.
    for name, split in list(splits.items()):
        splits[name] = _encode_labels(split, name, label_column, labels, values, train_split)
    _warn_near_duplicates(labels, label_column)

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
        classes = set(np.unique(label_array(train)).tolist())
        train = train.shuffle(seed=seed).select(range(args.max_train_samples))
    else:
        classes = None
    if args.max_eval_samples is not None and args.max_eval_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(args.max_eval_samples))
    if for_training and classes is not None:
        _check_subsample(train, validation, classes, labels, args.max_train_samples, label_column)
    held_out = f"{train_split} (hold-out of {args.train_val_split})"
    return ImageClassificationData(train, validation, labels, eval_split if eval_split is not None else held_out)


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))  # lengths first: ("ab", "c") and ("a", "bc") differ
        hasher.update(part)
    return hasher.hexdigest()


def dataset_identity(data: ImageClassificationData) -> dict:
    """What identifies the loaded splits, for a resumed run to check that it continues on the same data.

    Row counts, the label names, and the label of every row of each split in row order (after the validation split,
    `max_train_samples` and `max_eval_samples`), as sha256 digests. Deterministic across processes and paths (a
    trailing slash, a relative path), cheap (the label columns only: no image is read or decoded), and JSON-ready.
    A change of rows, their order or their labels shows; an image replaced by another under the same label does not.
    """
    identity: dict = {
        "num_labels": len(data.labels),
        "label_names_sha256": _digest(*(str(name).encode("utf-8") for name in data.labels)),
    }
    for name, split in (("train", data.train), ("validation", data.validation)):
        labels = np.ascontiguousarray(label_array(split), dtype="<i8")
        identity[f"{name}_rows"] = len(split)
        identity[f"{name}_labels_sha256"] = _digest(labels.tobytes())
    return identity

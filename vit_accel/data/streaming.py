"""Streaming image-classification input: parquet or webdataset `.tar` shards read through 🤗 datasets' iterable
datasets, split across processes and DataLoader workers, shuffled by a seed, and resumable exactly mid-epoch.

The plan of an epoch is a pure function of (seed, epoch, shard lengths, world size, workers, batch size), so the loader
state a checkpoint needs is two numbers, the epoch and the batches the training loop has consumed in it; the shard
positions, the shuffle buffer and the random numbers are rebuilt from them. Nothing of the workers' read-ahead leaks
into the state, which is where streaming loaders replay or drop batches on resume.

The epoch plan:

1. Shards are counted once before training (parquet footers; tar headers), and their schemas compared.
2. Each epoch permutes the shards by (seed, epoch) and lays them end to end: N examples, a global order.
3. Training keeps K = N // (world_size * batch_size) full batches per process, the same K on every process (so
   no process waits for another at the end of an epoch); process r reads the contiguous range
   [r*K*B, (r+1)*K*B) of the global order; the last N - world_size*K*B examples (fewer than world_size*B, a
   different set each epoch) are not used that epoch, as a map-style loader with drop_last leaves them out.
   Whatever the number of shards, each example is read by one process and one worker only (a range may start or
   end inside a shard: the reader skips to its start within that shard), never by every process.
4. Within a process, DataLoader worker w produces batches w, w+W, w+2W, ... (the order in which a DataLoader
   collects batches from its workers); it reads the contiguous part of the process' range that holds them.
5. The shuffle buffer: each worker's range is cut into windows of `shuffle_buffer_size` consecutive examples, and
   each window is permuted by a generator seeded from (seed, epoch, window start). A window's content and order are
   thus a pure function of the plan, and a resumed worker refills the window it stopped in from the shard.
6. Augmentation draws from a generator seeded by (seed, epoch, shard, row), as the map-style path does by row.

Evaluation streams are read in file order, split into equal contiguous ranges per process; every process yields the
same number of batches, the last ones padded by repeating an example, with a `valid` mask that says which rows are
real, so that gathering and dropping the padding counts each example exactly once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import fsspec
import fsspec.asyn
import numpy as np
import pyarrow.parquet as pq
import torch
from datasets import ClassLabel, Features
from datasets import Image as ImageFeature
from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns
from datasets.packaged_modules.webdataset.webdataset import DECODERS as WEBDATASET_DECODERS
from datasets.packaged_modules.webdataset.webdataset import base_plus_ext
from torch.utils.data import DataLoader, IterableDataset

from ..errors import UserError
from .arguments import DEFAULT_SHUFFLE_BUFFER, DataArguments
from .decode import UndecodableImageError, prepare, resolve_decoder
from .folders import is_url
from .loading import BadImageError, collate, example_seed
from .sources import EVAL_SPLITS, _pick_image_column, _pick_label_column
from .transforms import Pipeline

SHARD_FORMATS: dict[str, str] = {".parquet": "parquet", ".tar": "webdataset"}
STATE_VERSION = 1
# The loader state inside a checkpoint directory: JSON, never a pickle.
STATE_FILE = "stream_state.json"
# Rows per read from a shard (datasets converts arrow to Python a batch at a time).
READ_BATCH = 64


@dataclass(frozen=True)
class Shard:
    """One file of a stream: where it is and how many examples it holds."""

    url: str
    num_examples: int


@dataclass
class StreamSplit:
    """The shards of one split, in file order, and the columns that hold the images and the labels."""

    name: str
    shards: list[Shard]
    builder: str
    image_column: str
    label_column: str

    @property
    def num_examples(self) -> int:
        return sum(shard.num_examples for shard in self.shards)

    def __len__(self) -> int:
        return self.num_examples

    def fingerprint(self) -> str:
        """A digest of the shard list (paths and lengths): a checkpoint's stream must be this one to resume it."""
        text = json.dumps([[Path(s.url).name, s.num_examples] for s in self.shards])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StreamingData:
    """The training and evaluation streams and the label names; `label_ids` maps a raw label value to its id."""

    train: StreamSplit
    validation: StreamSplit
    labels: list[str]
    label_ids: dict = field(default_factory=dict)

    @property
    def eval_split(self) -> str:
        """The split evaluated: the shards' own evaluation split, or `validation` for shards held out of training."""
        return self.validation.name

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.labels)}


# --------------------------------------------------------------------------------------------------------------------
# Finding and indexing the shards


def _data_files(args: DataArguments) -> dict[str, list[str]]:
    """Split name -> shard files, resolved by 🤗 datasets as for a map-style load (split names from file names)."""
    name = args.dataset_name
    if name is None:
        raise UserError("--streaming reads --dataset_name (a folder or URL of parquet/.tar shards, or a Hub id).")
    local_or_url = is_url(name) or Path(name).expanduser().exists()
    if local_or_url and args.dataset_config_name is not None:
        raise UserError(
            f"--dataset_config_name {args.dataset_config_name!r}: --dataset_name {name!r} is a folder, file or URL "
            "of shards, which has no configurations; drop the flag."
        )
    if is_url(name):
        suffix = Path(name.split("?")[0]).suffix
        if suffix not in SHARD_FORMATS:
            raise UserError(f"--dataset_name {name!r}: a shard URL must end in .parquet or .tar.")
        builder = datasets.load_dataset_builder(SHARD_FORMATS[suffix], data_files={"train": name})
    else:
        local = Path(name).expanduser()
        if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
            raise UserError(f"--dataset_name {name!r}: no such file or directory.")
        if local.is_file():
            if local.suffix not in SHARD_FORMATS:
                raise UserError(f"--dataset_name {name!r}: a single shard must be a .parquet or .tar file.")
            return {"train": [str(local.resolve())]}
        if local.is_dir():
            # datasets' own rules for split names from file names (`train-00000-of-00004.parquet` -> train), applied
            # to the folder's files directly: a builder for the folder also reads the folder's own name.
            try:
                patterns = get_data_patterns(str(local))
            except EmptyDatasetError as error:
                raise UserError(f"--dataset_name {name!r}: no shards found in the folder ({error}).") from error
            found = DataFilesDict.from_patterns(patterns, base_path=str(local))
            # Only shard files: a folder may also hold a README, a cache or lock files.
            files = {
                str(split): [str(f) for f in paths if Path(f).suffix in SHARD_FORMATS] for split, paths in found.items()
            }
            files = {split: paths for split, paths in files.items() if paths}
            return _check_formats(name, files)
        try:
            builder = datasets.load_dataset_builder(name, args.dataset_config_name)
        except FileNotFoundError as error:
            raise UserError(f"--dataset_name {name!r}: {error}") from error
    files = {str(split): [str(f) for f in found] for split, found in (builder.config.data_files or {}).items()}
    return _check_formats(name, files)


def _check_formats(name: str, files: dict[str, list[str]]) -> dict[str, list[str]]:
    if not files:
        raise UserError(f"--dataset_name {name!r}: no data files found to stream.")
    for split, found in files.items():
        kinds = {Path(f.split("?")[0]).suffix for f in found}
        if not kinds <= set(SHARD_FORMATS) or len(kinds) != 1:
            raise UserError(
                f"--dataset_name {name!r}: --streaming reads parquet or webdataset .tar shards, one format per split; "
                f"split {split!r} has {', '.join(sorted(kinds))} files."
            )
    return files


def _open(url: str):
    return fsspec.open(url, "rb").open()


def _parquet_index(url: str) -> tuple[int, str, Features | None]:
    """(rows, schema description, 🤗 features) of a parquet shard, from its footer alone."""
    try:
        with _open(url) as handle:
            file = pq.ParquetFile(handle)
            schema = file.schema_arrow
            rows = file.metadata.num_rows
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...: all mean this shard cannot be read
        raise UserError(f"Shard {url!r} cannot be read as parquet: {type(error).__name__}: {error}") from error
    features = None
    metadata = schema.metadata or {}
    if b"huggingface" in metadata:
        info = json.loads(metadata[b"huggingface"])
        features = Features.from_dict(info["info"]["features"]) if "info" in info else None
    if features is None or list(features) != schema.names:
        # No 🤗 features, or features of other columns than the file's (metadata copied over by another writer): the
        # file's own columns are what a reader will meet.
        features = Features.from_arrow_schema(schema)
    return rows, _describe_features(features), features


def _tar_index(url: str, label_field: str | None) -> tuple[int, str, list]:
    """(examples, schema description, label values) of a webdataset tar, from its member headers (and the small label
    members when `label_field` is given)."""
    keys: list[str] = []
    fields: dict[str, set[str]] = {}
    labels: list = []
    try:
        with _open(url) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None:
                    continue
                if not keys or keys[-1] != key:
                    keys.append(key)
                fields.setdefault(key, set()).add(ext)
                if label_field is not None and ext == label_field:
                    raw = archive.extractfile(member).read()
                    decoder = WEBDATASET_DECODERS.get(ext.split(".")[-1].lower())
                    labels.append(decoder(raw) if decoder else raw.decode())
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"Shard {url!r} cannot be read as a tar archive: {type(error).__name__}: {error}") from error
    if not keys:
        raise UserError(f"Shard {url!r} holds no examples (no files named <key>.<field> in the archive).")
    first = sorted(fields[keys[0]])
    for key in keys:
        if sorted(fields[key]) != first:
            raise UserError(
                f"Shard {url!r}: example {key!r} has fields {sorted(fields[key])}, unlike the first example's "
                f"{first}; every example of a webdataset shard needs the same fields."
            )
    return len(keys), ", ".join(first), labels


def _describe_features(features: Features) -> str:
    return ", ".join(f"{name}: {feature!r}" for name, feature in features.items())


def _split_features(builder: str, url: str) -> Features:
    stream = datasets.load_dataset(builder, data_files={"train": [url]}, split="train", streaming=True)
    if stream.features is None:
        stream = stream._resolve_features()
    return stream.features


class _FeatureView:
    """What the map-style column pickers read from a dataset: its features."""

    def __init__(self, features: Features) -> None:
        self.features = features


def _index_split(
    name: str, urls: list[str], args: DataArguments, reference_schema: str | None
) -> tuple[StreamSplit, Features, list]:
    builder = SHARD_FORMATS[Path(urls[0].split("?")[0]).suffix]
    features = _split_features(builder, urls[0])
    view = _FeatureView(features)
    try:
        image_column = _pick_image_column(view, args.image_column_name)
        label_column = _pick_label_column(view, args.label_column_name)
    except UserError as error:
        raise UserError(f"The {name!r} shards ({urls[0]!r}, ...): {error}") from error
    shards: list[Shard] = []
    values: list[list] = []  # per kept shard: its raw label values (ClassLabel columns: none needed)
    schema = reference_schema
    needs_values = not isinstance(features[label_column], ClassLabel)
    for url in urls:
        shard_values: list = []
        if builder == "parquet":
            rows, described, _ = _parquet_index(url)
            if needs_values:
                with _open(url) as handle:
                    shard_values = pq.read_table(handle, columns=[label_column]).column(0).to_pylist()
        else:
            rows, described, shard_values = _tar_index(url, label_column if needs_values else None)
        if schema is None:
            schema = described
        elif described != schema:
            raise UserError(
                f"Shard {url!r} has columns ({described}), unlike the first shard's ({schema}); the shards of a "
                "stream must share one schema."
            )
        if rows:
            shards.append(Shard(url, rows))
            values.append(shard_values)
    return StreamSplit(name, shards, builder, image_column, label_column), features, values


def _truncate(split: StreamSplit, limit: int | None) -> StreamSplit:
    """The first `limit` examples of the stream in file order (the last kept shard cut short)."""
    if limit is None or limit >= split.num_examples:
        return split
    kept, left = [], limit
    for shard in split.shards:
        if left <= 0:
            break
        kept.append(Shard(shard.url, min(shard.num_examples, left)))
        left -= kept[-1].num_examples
    return StreamSplit(split.name, kept, split.builder, split.image_column, split.label_column)


def open_streaming_dataset(args: DataArguments, seed: int) -> StreamingData:
    """Find, count and check the shards of the training and evaluation splits, and the label names.

    Evaluation reads a `validation`/`valid`/`val`/`test` split when the files name one; otherwise a seeded
    `train_val_split` fraction of the training shards (at least one) is held out whole.
    """
    if args.bad_images != "error":
        raise UserError(
            "--bad_images skip is not available with --streaming: a stream cannot look ahead for a replacement "
            "without changing what every later batch holds; fix or remove the unreadable images."
        )
    files = _data_files(args)
    train_name = "train" if "train" in files else None
    if train_name is None:
        raise UserError(
            f"--dataset_name {args.dataset_name!r}: no training split among the shards' splits {sorted(files)}; "
            "name the training shards train-*.parquet / train-*.tar."
        )
    train, features, values = _index_split(train_name, sorted(files[train_name]), args, None)
    eval_name = next((name for name in EVAL_SPLITS if name in files), None)
    eval_features = features
    if eval_name is not None:
        validation, eval_features, eval_values = _index_split(eval_name, sorted(files[eval_name]), args, None)
    else:
        if len(train.shards) < 2:
            raise UserError(
                f"--dataset_name {args.dataset_name!r}: the stream has no validation/test split and only "
                f"{len(train.shards)} training shard; give a validation split (validation-*.parquet/.tar) or more "
                "shards to hold out."
            )
        order = np.random.default_rng(seed).permutation(len(train.shards))
        held = max(1, round(args.train_val_split * len(train.shards)))
        held = min(held, len(train.shards) - 1)
        held_out = set(order[:held].tolist())
        validation = StreamSplit(
            "validation",
            [s for i, s in enumerate(train.shards) if i in held_out],
            train.builder,
            train.image_column,
            train.label_column,
        )
        train = StreamSplit(
            train.name,
            [s for i, s in enumerate(train.shards) if i not in held_out],
            train.builder,
            train.image_column,
            train.label_column,
        )
        # The classes are those of the shards that train: a label found only in held-out shards is not one of them.
        eval_values = [v for i, v in enumerate(values) if i in held_out]
        values = [v for i, v in enumerate(values) if i not in held_out]
    values = [v for shard_values in values for v in shard_values]
    eval_values = [v for shard_values in eval_values for v in shard_values]
    label_feature = features[train.label_column]
    if isinstance(label_feature, ClassLabel):
        labels = list(label_feature.names)
        label_ids = {i: i for i in range(len(labels))}
        eval_feature = eval_features[validation.label_column]
        if isinstance(eval_feature, ClassLabel) and list(eval_feature.names) != labels:
            unknown = [name for name in eval_feature.names if name not in labels]
            raise UserError(
                f"The {validation.name!r} shards' label column {validation.label_column!r} names the classes "
                f"{list(eval_feature.names)[:8]}, unlike the training shards' {labels[:8]}"
                + (f": {unknown[:5]} are not training classes." if unknown else " (another order of ids).")
            )
    else:
        if any(v is None for v in values):
            raise UserError(
                f"The label column {train.label_column!r} has a missing (null) label in the training shards."
            )
        distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
        if any(isinstance(v, int) and v < 0 for v in distinct):
            raise UserError(
                f"The label column {train.label_column!r} holds a negative integer label ({min(distinct)}): integer "
                "labels are class values >= 0."
            )
        labels = [str(v) for v in distinct]
        label_ids = {v: i for i, v in enumerate(distinct)}
        missing = sorted({str(v) for v in eval_values} - set(labels))
        if missing:
            raise UserError(
                f"The {validation.name!r} shards hold label(s) {missing[:5]} (column {train.label_column!r}) with no "
                "example in the training shards."
            )
    if len(labels) < 2:
        raise UserError(f"The label column {train.label_column!r} has {len(labels)} class; classification needs >= 2.")
    train = _truncate(train, args.max_train_samples)
    validation = _truncate(validation, args.max_eval_samples)
    return StreamingData(train, validation, labels, label_ids)


# --------------------------------------------------------------------------------------------------------------------
# The epoch plan (pure functions)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The shards' order in an epoch: a permutation seeded by (seed, epoch), or file order."""
    if not shuffle:
        return list(range(num_shards))
    generator = torch.Generator().manual_seed(example_seed(seed, epoch, 2**40))
    return torch.randperm(num_shards, generator=generator).tolist()


def batches_per_process(num_examples: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Training (drop_last): full batches only, the same count on every process; evaluation: enough batches for
    ceil(N / world_size) rows per process."""
    if drop_last:
        return num_examples // (world_size * batch_size)
    return math.ceil(math.ceil(num_examples / world_size) / batch_size)


def worker_batches(num_batches: int, worker: int, num_workers: int) -> range:
    """The batch indices (within the process' epoch) that worker `worker` of `num_workers` produces."""
    return range(worker, num_batches, max(1, num_workers))


@dataclass(frozen=True)
class WorkerRange:
    """The slots of the global order one worker reads: [start, start + length), `real` of them real examples (the
    rest, evaluation padding only, repeat an example)."""

    start: int
    length: int
    real: int


def worker_range(
    num_examples: int, rank: int, world_size: int, worker: int, num_workers: int, batch_size: int, drop_last: bool
) -> WorkerRange:
    batches = batches_per_process(num_examples, world_size, batch_size, drop_last)
    per_process = batches * batch_size if drop_last else math.ceil(num_examples / world_size)
    before = sum(len(worker_batches(batches, v, num_workers)) for v in range(worker))
    mine = len(worker_batches(batches, worker, num_workers))
    start = rank * per_process + before * batch_size
    end_of_process = (rank + 1) * per_process
    length = max(0, min(mine * batch_size, end_of_process - start))
    real = max(0, min(length, num_examples - start))
    return WorkerRange(start, length, real)


def window_permutation(seed: int, epoch: int, window_start: int, size: int) -> list[int]:
    """The order of one shuffle window: seeded by (seed, epoch, the window's first slot in the global order)."""
    generator = torch.Generator().manual_seed(example_seed(seed, epoch, window_start))
    return torch.randperm(size, generator=generator).tolist()


# --------------------------------------------------------------------------------------------------------------------
# Reading


class _ShardReader:
    """Raw examples (encoded image, raw label, shard, row) from a position of the epoch's global order onward."""

    def __init__(self, split: StreamSplit, order: Sequence[int], source: datasets.IterableDataset) -> None:
        self.split = split
        self.order = list(order)
        self._all = source
        self.starts = np.cumsum([0] + [split.shards[i].num_examples for i in self.order]).tolist()

    def _shard_stream(self, shard_index: int) -> datasets.IterableDataset:
        """The iterable dataset of one shard: a shard of the split's dataset (opened once per loader: opening costs
        tens of milliseconds, selecting a shard nothing), or of that file alone where datasets splits files
        otherwise."""
        urls = [shard.url for shard in self.split.shards]
        if self._all.num_shards == len(urls):
            return self._all.shard(num_shards=len(urls), index=shard_index, contiguous=True)
        return datasets.load_dataset(
            self.split.builder, data_files={"train": [urls[shard_index]]}, split="train", streaming=True
        )

    def _rows(self, shard_index: int, skip: int) -> Iterator[tuple]:
        shard = self.split.shards[shard_index]
        column, label = self.split.image_column, self.split.label_column
        try:
            stream = self._shard_stream(shard_index)
            stream = stream.select_columns([column, label])
            if isinstance(stream.features[column], ImageFeature):
                stream = stream.cast_column(column, ImageFeature(decode=False))
            if skip:
                stream = stream.skip(skip)
            row = skip
            # `iter` (not `__iter__`): inside a DataLoader worker, `__iter__` would split the shard again among the
            # workers, whereas this reader already is one worker's share.
            for rows in stream.iter(batch_size=READ_BATCH):
                for image, value in zip(rows[column], rows[label]):
                    if row >= shard.num_examples:
                        return
                    yield image, value, shard_index, row
                    row += 1
        except UserError:
            raise
        except Exception as error:  # a shard that fails part-way: name it and the row, not a library traceback
            raise UserError(
                f"Shard {shard.url!r} could not be read past row {skip}: {type(error).__name__}: {error}"
            ) from error
        if row < shard.num_examples:
            raise UserError(
                f"Shard {shard.url!r} ended at row {row}, but it had {shard.num_examples} rows when the stream was "
                "counted; was it changed during the run?"
            )

    def read(self, start: int, count: int) -> Iterator[tuple]:
        """`count` raw examples from global slot `start`, crossing shard boundaries."""
        if count <= 0:
            return
        position = int(np.searchsorted(self.starts, start, side="right")) - 1
        offset = start - self.starts[position]
        left = count
        while left > 0 and position < len(self.order):
            for example in self._rows(self.order[position], offset):
                yield example
                left -= 1
                if left == 0:
                    return
            position, offset = position + 1, 0


class StreamingImageDataset(IterableDataset):
    """One process' share of a stream as batches of {"pixel_values": uint8, "labels": int64[, "valid": bool]}.

    Used through `make_streaming_dataloader`, which sets the epoch and the resume position before each iteration.
    """

    def __init__(
        self,
        split: StreamSplit,
        pipeline: Pipeline,
        label_ids: dict,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        train: bool = True,
        shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
        decoder: str = "auto",
        resize_to: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size}).")
        if shuffle_buffer_size < 1:
            raise UserError(f"--shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}.")
        self.split = split
        self.pipeline = pipeline
        self.label_ids = label_ids
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_workers = int(num_workers)
        self.train = train
        self.shuffle_buffer_size = int(shuffle_buffer_size) if train else 1
        self.decoder = resolve_decoder(decoder, pipeline)
        self.resize_to = resize_to
        self.num_batches = batches_per_process(split.num_examples, world_size, batch_size, drop_last=train)
        if self.num_batches == 0:
            flag = "--per_device_train_batch_size" if train else "--per_device_eval_batch_size"
            raise UserError(
                f"The {split.name!r} stream ({split.num_examples} examples in {len(split.shards)} shard(s)) is too "
                f"short for one batch of {batch_size} per process on {world_size} process(es); lower {flag} or give "
                "more data."
            )
        self.epoch = 0
        self.start_batch = 0
        # One 🤗 iterable dataset over the split's files; it travels to the DataLoader workers with this object.
        self.source = datasets.load_dataset(
            split.builder, data_files={"train": [s.url for s in split.shards]}, split="train", streaming=True
        )

    def __len__(self) -> int:
        return self.num_batches

    def worker_range(self, worker: int) -> WorkerRange:
        return worker_range(
            self.split.num_examples,
            self.rank,
            self.world_size,
            worker,
            self.num_workers,
            self.batch_size,
            drop_last=self.train,
        )

    def _examples(self, worker: int, skip_batches: int) -> Iterator[tuple[int, tuple]]:
        """(slot, raw example) in this worker's output order, from its `skip_batches`-th batch on."""
        span = self.worker_range(worker)
        order = shard_order(len(self.split.shards), self.seed, self.epoch, shuffle=self.train)
        reader = _ShardReader(self.split, order, self.source)
        begin = skip_batches * self.batch_size
        window = self.shuffle_buffer_size
        first_window = begin // window
        raw = reader.read(span.start + first_window * window, span.real - first_window * window)
        padding: tuple | None = None
        for w in range(first_window, math.ceil(span.length / window)):
            low, high = w * window, min(span.length, (w + 1) * window)
            real_high = min(high, span.real)
            content = [next(raw) for _ in range(max(0, real_high - low))]
            if real_high < high and padding is None:  # evaluation padding: repeat the stream's first example
                padding = next(_ShardReader(self.split, order, self.source).read(0, 1))
            content += [padding] * (high - real_high)
            permutation = (
                window_permutation(self.seed, self.epoch, span.start + low, len(content))
                if self.train
                else range(len(content))
            )
            for position, index in enumerate(permutation):
                if low + position < begin:
                    continue
                yield low + index, content[index]

    def _prepare(self, raw: tuple) -> tuple[torch.Tensor, int]:
        image, label, shard_index, row = raw
        url = self.split.shards[shard_index].url
        if label is None or label not in self.label_ids:
            raise UserError(
                f"Shard {url!r}, row {row}: label {label!r} (column {self.split.label_column!r}) is "
                + ("missing." if label is None else f"not one of the {len(self.label_ids)} training classes.")
            )
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, (shard_index << 32) + row))
        encoded = (image.get("bytes") or image.get("path")) if isinstance(image, dict) else image
        try:
            pixels = prepare(self.pipeline, encoded, generator, self.decoder)
        except UndecodableImageError as error:
            raise BadImageError(f"Cannot decode the image at shard {url!r}, row {row}: {error}.") from error.__cause__
        return pixels, self.label_ids[label]

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        physical, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if info is not None:
            # A forked worker inherits fsspec's event-loop lock; remote reads would wait on it forever (🤗 datasets
            # resets it the same way in its own worker path, which `.iter` bypasses).
            fsspec.asyn.reset_lock()
        # A DataLoader asks its workers for batches in turn from worker 0; a loader resumed at batch s must start
        # with the worker that produces batch s, so worker ids are rotated by s.
        worker = (physical + self.start_batch) % workers
        if workers != max(1, self.num_workers):
            raise RuntimeError(
                f"The dataset was planned for {self.num_workers} workers but runs in {workers}; build the loader "
                "with make_streaming_dataloader."
            )
        done = len(range(worker, self.start_batch, max(1, self.num_workers)))
        span = self.worker_range(worker)
        emitted = done * self.batch_size
        batch: list[dict] = []
        valid: list[bool] = []
        for slot, raw in self._examples(worker, done):
            pixels, label = self._prepare(raw)
            batch.append({"pixel_values": pixels, "labels": label})
            valid.append(slot < span.real)
            emitted += 1
            if len(batch) == self.batch_size or emitted == span.length:
                out = collate(batch, self.resize_to)
                if not self.train:
                    out["valid"] = torch.tensor(valid, dtype=torch.bool)
                yield out
                batch, valid = [], []


class StreamingDataLoader:
    """A DataLoader over a `StreamingImageDataset` that counts the batches handed to the training loop, so that its
    `state_dict` (epoch, batches consumed) resumes exactly, whatever the workers had read ahead."""

    def __init__(self, dataset: StreamingImageDataset, pin_memory: bool | None = None) -> None:
        self.dataset = dataset
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.epoch = 0
        self.batches_done = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch (unless `load_state_dict` placed the loader inside it)."""
        if int(epoch) != self.epoch:
            self.epoch, self.batches_done = int(epoch), 0

    def __iter__(self) -> Iterator[dict]:
        if self.batches_done >= len(self):  # the epoch was finished: a new iteration starts the next one
            self.epoch, self.batches_done = self.epoch + 1, 0
        self.dataset.epoch = self.epoch
        self.dataset.start_batch = self.batches_done
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.dataset.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        for batch in loader:
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        """What a checkpoint needs to resume this loader exactly, plus what it must match."""
        data = self.dataset
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "num_batches": len(self),
            "seed": data.seed,
            "world_size": data.world_size,
            "num_workers": data.num_workers,
            "batch_size": data.batch_size,
            "shuffle_buffer_size": data.shuffle_buffer_size,
            "stream": data.split.fingerprint(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` stopped. Mid-epoch this needs the same plan (processes, workers, batch size, buffer,
        seed, shards); at an epoch boundary only the same shards and seed (the next epoch is planned afresh)."""
        data = self.dataset
        if state.get("version") != STATE_VERSION:
            raise UserError(
                f"The checkpoint's stream state has version {state.get('version')!r}; expected {STATE_VERSION}."
            )
        if state["stream"] != data.split.fingerprint():
            raise UserError(
                "The checkpoint was written for another stream (its shards or their lengths differ); resume with the "
                "same --dataset_name and --max_train_samples."
            )
        if state["seed"] != data.seed:
            raise UserError(f"The checkpoint's stream was shuffled with --seed {state['seed']}, not {data.seed}.")
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if done >= int(state["num_batches"]):  # the epoch was finished: the next one is planned afresh
            epoch, done = epoch + 1, 0
        if done > 0:
            current = self.state_dict()
            changed = [
                f"{key} {state[key]} -> {current[key]}"
                for key in ("world_size", "num_workers", "batch_size", "shuffle_buffer_size")
                if state[key] != current[key]
            ]
            if changed:
                raise UserError(
                    f"The checkpoint stopped a stream mid-epoch ({done} batches into epoch {epoch}); resuming it "
                    f"exactly needs the same plan, but {', '.join(changed)}. Resume with the same settings, or from "
                    "a checkpoint written at the end of an epoch."
                )
        self.epoch, self.batches_done = epoch, done


def make_streaming_dataloader(
    split: StreamSplit,
    pipeline: Pipeline,
    label_ids: dict,
    seed: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    train: bool = True,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
    decoder: str = "auto",
    resize_to: int | None = None,
) -> StreamingDataLoader:
    """The loader of one process (`rank` of `world_size`); see the module docstring for the plan."""
    dataset = StreamingImageDataset(
        split,
        pipeline,
        label_ids,
        seed,
        batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        train=train,
        shuffle_buffer_size=shuffle_buffer_size,
        decoder=decoder,
        resize_to=resize_to,
    )
    return StreamingDataLoader(dataset)


def save_stream_state(loader: StreamingDataLoader, directory: str | os.PathLike) -> Path:
    """Write the loader's state into a checkpoint directory (`stream_state.json`); the same on every process, so the
    main process alone writes it."""
    path = Path(directory) / STATE_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(loader.state_dict(), indent=1, sort_keys=True))
    os.replace(temporary, path)  # a checkpoint never holds half a state file
    return path


def load_stream_state(loader: StreamingDataLoader, directory: str | os.PathLike) -> None:
    """Place the loader where the checkpoint in `directory` stopped (see `StreamingDataLoader.load_state_dict`)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UserError(
            f"Checkpoint {str(directory)!r} has no {STATE_FILE}: it was not written by a streaming run, so it cannot "
            "resume a stream; resume it without --streaming, or start afresh."
        )
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        loader.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"{str(path)!r} is not a stream state this version can read: {error!r}.") from error


def streaming_loaders(
    data: StreamingData,
    train_pipeline: Pipeline,
    eval_pipeline: Pipeline,
    args: DataArguments,
    seed: int,
    train_batch_size: int,
    eval_batch_size: int,
    rank: int,
    world_size: int,
    resize_to: int | None = None,
) -> tuple[StreamingDataLoader, StreamingDataLoader]:
    """The training and evaluation loaders of process `rank` of `world_size`, from the data flags.

    They are already split across processes: give them to the training loop as they are, not through
    `accelerator.prepare` (which would split or dispatch them a second time).
    """
    common = {"rank": rank, "world_size": world_size, "num_workers": args.dataloader_num_workers}
    train = make_streaming_dataloader(
        data.train,
        train_pipeline,
        data.label_ids,
        seed,
        train_batch_size,
        train=True,
        shuffle_buffer_size=args.shuffle_buffer_size or DEFAULT_SHUFFLE_BUFFER,
        decoder=args.image_decoder or "auto",
        resize_to=resize_to,
        **common,
    )
    evaluation = make_streaming_dataloader(
        data.validation,
        eval_pipeline,
        data.label_ids,
        seed,
        eval_batch_size,
        train=False,
        resize_to=resize_to,
        **common,
    )
    return train, evaluation

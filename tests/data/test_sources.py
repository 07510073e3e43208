"""load_image_dataset on every source kind, in the real formats, built locally."""

import numpy as np
import PIL.Image
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from factories import (
    beans_dataset,
    cifar10_dataset,
    cifar100_dataset,
    png_bytes,
    random_rgb,
    write_hub_parquet,
    write_image_folder,
)
from transformers import HfArgumentParser

from vit_accel.data import DataArguments, load_image_dataset, stratified_split
from vit_accel.data.sources import label_array
from vit_accel.errors import UserError


def load(seed=0, **kwargs):
    return load_image_dataset(DataArguments(**kwargs), seed=seed)


def assert_normalised(dataset):
    assert dataset.column_names == ["image", "label"]
    assert isinstance(dataset.features["image"], Image)
    assert isinstance(dataset.features["label"], ClassLabel)
    assert isinstance(dataset[0]["image"], PIL.Image.Image)


def test_cifar100_hub_parquet_layout(tmp_path):
    write_hub_parquet(tmp_path, {"train": cifar100_dataset(40), "test": cifar100_dataset(20, seed=1)})
    data = load(dataset_name=str(tmp_path))
    assert_normalised(data.train)
    assert_normalised(data.validation)
    assert len(data.train) == 40 and len(data.validation) == 20  # the test split is the validation split
    assert data.labels == [f"fine_{i}" for i in range(100)]  # fine_label, not coarse_label, from its ClassLabel
    assert data.id2label[7] == "fine_7" and data.label2id["fine_7"] == 7
    assert label_array(data.train).tolist() == [i % 100 for i in range(40)]
    image = data.train[3]["image"]
    assert image.size == (32, 32)
    np.testing.assert_array_equal(np.asarray(image), random_rgb(3))  # pixels survive the round trip


def test_cifar10_schema_and_label_column_override(tmp_path):
    write_hub_parquet(tmp_path, {"train": cifar10_dataset(30), "test": cifar10_dataset(10, seed=2)})
    data = load(dataset_name=str(tmp_path))
    assert data.labels[:2] == ["airplane", "automobile"] and len(data.labels) == 10
    # The coarse labels of CIFAR-100 on request.
    root = tmp_path / "c100"
    write_hub_parquet(root, {"train": cifar100_dataset(40), "test": cifar100_dataset(20, seed=1)})
    coarse = load(dataset_name=str(root), label_column_name="coarse_label")
    assert coarse.labels == [f"coarse_{i}" for i in range(20)]
    assert label_array(coarse.train).tolist() == [(i % 100) % 20 for i in range(40)]


def test_beans_schema_picks_image_and_labels(tmp_path):
    write_hub_parquet(tmp_path, {"train": beans_dataset(12), "validation": beans_dataset(6, seed=1)})
    data = load(dataset_name=str(tmp_path))
    assert data.labels == ["angular_leaf_spot", "bean_rust", "healthy"]
    assert data.train[0]["image"].size == (48, 40)
    assert len(data.validation) == 6


def test_plain_parquet_without_hf_metadata(tmp_path):
    """Parquet written by pyarrow (as pandas or polars would): no ClassLabel, image as a {bytes, path} struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [{"bytes": png_bytes(random_rgb(i)), "path": f"{i}.png"} for i in range(12)]
    table = pa.table({"img": images, "label": [i % 3 for i in range(12)]})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    data = load(dataset_name=str(tmp_path), train_val_split=0.25)
    assert_normalised(data.train)
    assert data.labels == ["0", "1", "2"]  # integer labels without names: their values as names
    assert len(data.validation) == 3 and sorted(label_array(data.validation).tolist()) == [0, 1, 2]


def test_image_folder_train_and_validation(tmp_path):
    write_image_folder(tmp_path / "train", {"cat": 4, "dog": 3})
    write_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1, ext="jpg")
    data = load(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    assert_normalised(data.train)
    assert data.labels == ["cat", "dog"]
    assert sorted(label_array(data.train).tolist()) == [0, 0, 0, 0, 1, 1, 1]
    assert sorted(label_array(data.validation).tolist()) == [0, 0, 1, 1]


def test_image_folder_without_validation_is_split_stratified(tmp_path):
    write_image_folder(tmp_path / "train", {"a": 20, "b": 10, "c": 10})
    data = load(train_dir=str(tmp_path / "train"), train_val_split=0.25)
    val = label_array(data.validation)
    assert len(data.validation) == 10 and len(data.train) == 30
    assert np.bincount(val, minlength=3).tolist() == [5, 3, 2] or np.bincount(val, minlength=3).tolist() == [5, 2, 3]


def test_save_to_disk_dict_and_single_dataset(tmp_path):
    DatasetDict({"train": cifar10_dataset(20), "validation": cifar10_dataset(8, seed=3)}).save_to_disk(
        str(tmp_path / "dict")
    )
    data = load(dataset_name=str(tmp_path / "dict"))
    assert_normalised(data.train)
    assert (len(data.train), len(data.validation)) == (20, 8)
    cifar10_dataset(20).to_parquet(str(tmp_path / "one.parquet"))
    assert len(load(dataset_name=str(tmp_path / "one.parquet"), train_val_split=0.2).validation) == 4
    cifar10_dataset(20).save_to_disk(str(tmp_path / "single"))
    single = load(dataset_name=str(tmp_path / "single"), train_val_split=0.5)
    assert len(single.train) + len(single.validation) == 20 and len(single.validation) == 10


def test_explicit_columns_and_string_labels(tmp_path):
    features = Features({"pic": Image(), "target": Value("string"), "id": Value("int64")})
    rows = {
        "pic": [{"bytes": png_bytes(random_rgb(i)), "path": None} for i in range(12)],
        "target": ["zebra", "ant", "moth"] * 4,
        "id": list(range(12)),
    }
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(
        ValueError, match=r"label column.*Available columns: pic \(Image\), target \(Value string\), id \(Value int64\)"
    ):
        load(dataset_name=str(tmp_path / "ds"))
    data = load(dataset_name=str(tmp_path / "ds"), label_column_name="target", train_val_split=0.25)
    assert data.labels == ["ant", "moth", "zebra"]  # string labels become a sorted ClassLabel
    assert data.train.column_names == ["image", "label"]
    assert sorted(label_array(data.validation).tolist()) == [0, 1, 2]


def test_no_image_column_lists_columns(tmp_path):
    features = Features({"a": Image(), "b": Image(), "label": ClassLabel(names=["x", "y"])})
    image = {"bytes": png_bytes(random_rgb(0)), "path": None}
    Dataset.from_dict({"a": [image] * 4, "b": [image] * 4, "label": [0, 1] * 2}, features=features).save_to_disk(
        str(tmp_path / "ds")
    )
    with pytest.raises(ValueError, match=r"image column.*--image_column_name.*a \(Image\), b \(Image\), label"):
        load(dataset_name=str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"--image_column_name 'photo' is not a column; available columns: a \("):
        load(dataset_name=str(tmp_path / "ds"), image_column_name="photo")
    assert load(dataset_name=str(tmp_path / "ds"), image_column_name="b", train_val_split=0.5).labels == ["x", "y"]


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        load(dataset_name=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="--train_dir .*nope"):
        load(train_dir=str(tmp_path / "nope"))


def test_label_outside_label_set_names_the_row(tmp_path):
    test = cifar10_dataset(6, seed=1)
    test = test.map(lambda row, i: {"label": -1 if i == 4 else row["label"]}, with_indices=True)  # "no label"
    write_hub_parquet(tmp_path, {"train": cifar10_dataset(10), "test": test})
    with pytest.raises(ValueError, match=r"Split 'test', row 4: label -1 .*outside the label set of 10 classes"):
        load(dataset_name=str(tmp_path))
    # Plain integer labels: the training split defines the set; a larger one in validation is an error.
    features = Features({"image": Image(), "label": Value("int64")})
    image = {"bytes": png_bytes(random_rgb(0)), "path": None}
    DatasetDict(
        {
            "train": Dataset.from_dict({"image": [image] * 4, "label": [0, 1, 2, 1]}, features=features),
            "validation": Dataset.from_dict({"image": [image] * 3, "label": [0, 3, 1]}, features=features),
        }
    ).save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(ValueError, match=r"Split 'validation', row 1: label 3"):
        load(dataset_name=str(tmp_path / "ints"))


def test_stratified_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(4), [40, 20, 10, 1])  # the singleton class must stay in training
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert len(val) == round(len(labels) * 0.2)
    assert np.bincount(labels[val], minlength=4).tolist() == [8, 4, 2, 0]
    for cls, count in zip(range(3), [40, 20, 10]):
        assert abs(np.sum(labels[val] == cls) - 0.2 * count) <= 1
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=1)[1], val)


def test_max_samples_are_seeded_subsets(tmp_path):
    write_hub_parquet(tmp_path, {"train": cifar10_dataset(30), "test": cifar10_dataset(20, seed=1)})
    first = load(dataset_name=str(tmp_path), max_train_samples=7, max_eval_samples=5, seed=3)
    second = load(dataset_name=str(tmp_path), max_train_samples=7, max_eval_samples=5, seed=3)
    assert (len(first.train), len(first.validation)) == (7, 5)
    assert label_array(first.train).tolist() == label_array(second.train).tolist()
    assert np.array_equal(np.asarray(first.train[0]["image"]), np.asarray(second.train[0]["image"]))


def test_arguments_parse_and_validate():
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--dataset_name", "uoft-cs/cifar100", "--augmentation", "inception", "--bad_images", "skip"]
    )
    assert (args.dataset_name, args.augmentation, args.bad_images) == ("uoft-cs/cifar100", "inception", "skip")
    with pytest.raises(ValueError, match="--dataset_name .* or --train_dir"):
        DataArguments()
    with pytest.raises(ValueError, match="cifar, inception, randaugment, mae, none"):
        DataArguments(dataset_name="x", augmentation="mixup")
    with pytest.raises(ValueError, match="train_val_split"):
        DataArguments(dataset_name="x", train_val_split=1.5)
    with pytest.raises(ValueError, match="not both"):
        DataArguments(dataset_name="x", train_dir="y")


# --- labels, subsamples, paths and seeds that used to be taken silently or blamed on the wrong thing ---------------


def write_splits(root, splits: dict, features: Features) -> str:
    """{split: {column: values}} with `features`, written in the Hub's parquet layout; returns the folder."""
    write_hub_parquet(root, {name: Dataset.from_dict(rows, features=features) for name, rows in splits.items()})
    return str(root)


def images(count: int, offset: int = 0) -> list:
    return [{"bytes": png_bytes(random_rgb(offset + i, (8, 8))), "path": None} for i in range(count)]


def test_max_train_samples_is_checked_on_the_subsample_it_keeps(tmp_path, caplog):
    write_hub_parquet(tmp_path, {"train": cifar10_dataset(40), "test": cifar10_dataset(20, seed=1)})
    with pytest.raises(UserError, match=r"--max_train_samples 1 keeps a single class \('\w+'\).*at least two"):
        load(dataset_name=str(tmp_path), max_train_samples=1)
    with caplog.at_level("WARNING", logger="vit_accel.data.sources"):
        data = load(dataset_name=str(tmp_path), max_train_samples=5)
    kept = len(set(label_array(data.train).tolist()))
    assert len(data.train) == 5 and kept < 10
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert f"--max_train_samples 5 leaves {10 - kept} of the 10 classes without a training example" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="vit_accel.data.sources"):
        load(dataset_name=str(tmp_path), max_train_samples=39)  # misses no class: no word
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_plain_integer_labels_are_categories_never_a_range_up_to_the_largest(tmp_path):
    features = Features({"image": Image(), "label": Value("int64")})
    sparse = write_splits(
        tmp_path / "sparse",
        {"train": {"image": images(6), "label": [0, 7, 0, 7, 7, 0]}, "test": {"image": images(2, 9), "label": [7, 0]}},
        features,
    )
    data = load(dataset_name=sparse)
    assert data.labels == ["0", "7"]  # two classes, not eight of which six never have an example
    assert label_array(data.train).tolist() == [0, 1, 0, 1, 1, 0] and label_array(data.validation).tolist() == [1, 0]
    huge = write_splits(
        tmp_path / "huge",
        {
            "train": {"image": images(4), "label": [0, 2**31 - 1, 0, 2**31 - 1]},
            "test": {"image": images(2), "label": [0, 0]},
        },
        features,
    )
    assert load(dataset_name=huge).labels == ["0", "2147483647"]  # no list of 2**31 names
    negative = write_splits(
        tmp_path / "negative",
        {"train": {"image": images(4), "label": [0, 1, -1, 1]}, "test": {"image": images(2), "label": [0, 1]}},
        features,
    )
    with pytest.raises(UserError, match=r"Split 'train', row 2: label -1 \(column 'label'\) is negative"):
        load(dataset_name=negative)


@pytest.mark.parametrize("kind", ["string", "int64"])
def test_a_missing_label_is_named_as_missing(kind, tmp_path):
    values = ["cat", "dog", None, "dog"] if kind == "string" else [0, 1, None, 1]
    folder = write_splits(
        tmp_path,
        {"train": {"image": images(4), "label": values}, "test": {"image": images(2), "label": values[:2]}},
        Features({"image": Image(), "label": Value(kind)}),
    )
    with pytest.raises(UserError, match=r"Split 'train', row 2: the label \(column 'label'\) is missing \(null\)"):
        load(dataset_name=folder)


def test_near_duplicate_label_names_are_pointed_out(tmp_path, caplog):
    folder = write_splits(
        tmp_path,
        {
            "train": {"image": images(8), "label": ["cat", "dog", "cat ", "Dog", "cat", "dog", "bird", "bird"]},
            "test": {"image": images(2), "label": ["cat", "dog"]},
        },
        Features({"image": Image(), "label": Value("string")}),
    )
    with caplog.at_level("WARNING", logger="vit_accel.data.sources"):
        data = load(dataset_name=folder)
    assert data.labels == ["Dog", "bird", "cat", "cat ", "dog"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "'cat' and 'cat '" in warnings[0] and "2 such groups" in warnings[0], warnings


def test_the_same_folder_for_training_and_validation_is_refused(tmp_path):
    write_image_folder(tmp_path / "imgs", {"cat": 3, "dog": 3})
    with pytest.raises(UserError, match=r"--train_dir .*imgs and --validation_dir .*imgs/ are the same folder"):
        load(train_dir=str(tmp_path / "imgs"), validation_dir=str(tmp_path / "imgs") + "/")
    with pytest.raises(UserError, match=r"--validation_dir .*cat lies inside --train_dir"):
        load(train_dir=str(tmp_path / "imgs"), validation_dir=str(tmp_path / "imgs" / "cat"))
    # Evaluating a folder on its own (`vit-accel evaluate --validation_dir`) passes it as both.
    only = load_image_dataset(
        DataArguments(train_dir=str(tmp_path / "imgs"), validation_dir=str(tmp_path / "imgs")), 0, for_training=False
    )
    assert len(only.validation) == 6


def test_dataset_config_name_is_refused_where_it_cannot_apply(tmp_path):
    cifar10_dataset(10).save_to_disk(str(tmp_path / "saved"))
    cifar10_dataset(10).to_parquet(str(tmp_path / "one.parquet"))
    write_image_folder(tmp_path / "imgs", {"cat": 2, "dog": 2})
    with pytest.raises(UserError, match=r"--dataset_config_name 'cifar10'.*saved.*save_to_disk directory"):
        load(dataset_name=str(tmp_path / "saved"), dataset_config_name="cifar10")
    with pytest.raises(UserError, match=r"--dataset_config_name 'cifar10'.*one.parquet.*a single file"):
        load(dataset_name=str(tmp_path / "one.parquet"), dataset_config_name="cifar10")
    with pytest.raises(UserError, match=r"--dataset_config_name 'cifar10'.*--train_dir"):
        DataArguments(train_dir=str(tmp_path / "imgs"), dataset_config_name="cifar10")


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_a_seed_numpy_cannot_take_is_named(seed, tmp_path):
    write_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 4})
    with pytest.raises(UserError, match=rf"seed {seed!r}: .*0 to 4294967295"):
        load(seed=seed, train_dir=str(tmp_path / "imgs"))


def test_glob_characters_in_paths(tmp_path):
    write_image_folder(tmp_path / "data[1]", {"cat": 3, "dog": 3})
    write_image_folder(tmp_path / "val*", {"cat": 2, "dog": 2}, seed=1)
    write_image_folder(tmp_path / "valX", {"cat": 5, "dog": 5}, seed=2)  # what `val*` would also match
    data = load(train_dir=str(tmp_path / "data[1]"), validation_dir=str(tmp_path / "val*"))
    assert (len(data.train), len(data.validation)) == (6, 4)
    (tmp_path / "d[2]").mkdir()
    cifar10_dataset(20).to_parquet(str(tmp_path / "d[2]" / "one.parquet"))
    assert len(load(dataset_name=str(tmp_path / "d[2]" / "one.parquet"), train_val_split=0.2).validation) == 4
    write_hub_parquet(tmp_path / "hub[3]", {"train": cifar10_dataset(20), "test": cifar10_dataset(10, seed=1)})
    with pytest.raises(UserError, match=r"--dataset_name .*hub\[3\].*glob character.*'\['"):
        load(dataset_name=str(tmp_path / "hub[3]"))


@pytest.mark.parametrize("kind", ["binary", "paths"])
def test_an_image_column_of_bytes_or_paths_is_found(kind, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "binary":
        column = [png_bytes(random_rgb(i)) for i in range(8)]
    else:
        column = []
        for i in range(8):
            PIL.Image.fromarray(random_rgb(i)).save(tmp_path / f"{i}.png")
            column.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "ds" / "data").mkdir(parents=True)
    table = pa.table({"id": list(range(8)), "image": column, "label": ["a", "b"] * 4})
    pq.write_table(table, tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    data = load(dataset_name=str(tmp_path / "ds"), train_val_split=0.25)
    assert_normalised(data.train)
    np.testing.assert_array_equal(np.asarray(data.train[0]["image"]), random_rgb(0))


def test_dataset_identity_follows_the_rows_not_the_path(tmp_path, monkeypatch):
    import json

    from vit_accel.data import dataset_identity
    from vit_accel.training.resume import identity_changes

    path = str(tmp_path / "ds")
    write_hub_parquet(path, {"train": cifar10_dataset(30), "test": cifar10_dataset(10, seed=1)})
    first = dataset_identity(load(dataset_name=path, max_train_samples=20))
    whole = dataset_identity(load(dataset_name=path))
    # Computed from the label columns alone: no image is decoded.
    with monkeypatch.context() as patch:
        patch.setattr(Image, "decode_example", lambda *a, **k: pytest.fail("an image was decoded"))
        again = dataset_identity(load(dataset_name=path + "/", max_train_samples=20))
    assert first == again and json.loads(json.dumps(first)) == first and identity_changes(first, again) == []
    assert (first["train_rows"], first["validation_rows"], first["num_labels"]) == (20, 10, 10)
    # The same path, other rows: fewer, or the same rows in another order.
    write_hub_parquet(path, {"train": cifar10_dataset(24), "test": cifar10_dataset(10, seed=1)})
    fewer = dataset_identity(load(dataset_name=path + "/", max_train_samples=20))
    assert fewer["train_rows"] == 20 and fewer != first
    assert [change.split(":")[0] for change in identity_changes(first, fewer)] == ["train_labels_sha256"]
    write_hub_parquet(path, {"train": cifar10_dataset(30).select(range(29, -1, -1)), "test": cifar10_dataset(10, 1)})
    reordered = dataset_identity(load(dataset_name=path))
    assert reordered["train_rows"] == whole["train_rows"] == 30
    assert reordered["train_labels_sha256"] != whole["train_labels_sha256"]
    assert reordered["validation_labels_sha256"] == whole["validation_labels_sha256"]

"""Images without labels for pre-training: flat folders, class folders read as plain images, datasets without a
label column, labelled datasets with their labels ignored; the held-out images chosen as documented."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from factories import png_bytes, random_rgb, write_hub_parquet, write_image_folder

from vit_accel.data import DataArguments, dataset_identity
from vit_accel.data.unlabelled import held_out_split, load_unlabelled_dataset
from vit_accel.errors import UserError


def flat_folder(root, count: int, seed: int = 0):
    root.mkdir(parents=True)
    for i in range(count):
        PIL.Image.fromarray(random_rgb(seed * 1000 + i)).save(root / f"{i:03d}.png")
    return root


def test_a_flat_folder_of_images_trains_with_a_seeded_held_out_fraction(tmp_path):
    folder = flat_folder(tmp_path / "images", 20)
    data = load_unlabelled_dataset(DataArguments(train_dir=str(folder), train_val_split=0.25), seed=5)
    assert (len(data.train), len(data.validation), data.labels) == (15, 5, [])
    assert data.eval_split == "train (hold-out of 0.25)"
    # The rows stand where labels would: every image once, in one of the two sets.
    rows = sorted(list(data.train["label"]) + list(data.validation["label"]))
    assert rows == list(range(20))
    again = load_unlabelled_dataset(DataArguments(train_dir=str(folder), train_val_split=0.25), seed=5)
    assert list(again.validation["label"]) == list(data.validation["label"])
    other = load_unlabelled_dataset(DataArguments(train_dir=str(folder), train_val_split=0.25), seed=6)
    assert list(other.validation["label"]) != list(data.validation["label"])
    assert dataset_identity(again) == dataset_identity(data) != dataset_identity(other)


def test_class_folders_and_a_validation_folder_are_read_as_plain_images(tmp_path):
    write_image_folder(tmp_path / "train", {"cat": 3, "dog": 4})
    flat_folder(tmp_path / "val", 2, seed=1)
    data = load_unlabelled_dataset(
        DataArguments(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val")), seed=0
    )
    assert (len(data.train), len(data.validation), data.eval_split) == (7, 2, "validation")
    assert set(data.train.column_names) == {"image", "label"} and list(data.train["label"]) == list(range(7))


def test_a_folder_given_as_dataset_name_keeps_its_split_folders(tmp_path):
    write_image_folder(tmp_path / "data" / "train", {"a": 2, "b": 2})
    flat_folder(tmp_path / "data" / "validation", 3, seed=2)
    data = load_unlabelled_dataset(DataArguments(dataset_name=str(tmp_path / "data")), seed=0)
    assert (len(data.train), len(data.validation), data.eval_split) == (4, 3, "validation")


def test_a_dataset_without_labels_and_a_labelled_one_with_its_labels_ignored(tmp_path, digits):
    from datasets import Dataset

    images = Dataset.from_dict({"picture": [png_bytes(random_rgb(i)) for i in range(10)], "note": ["x"] * 10})
    write_hub_parquet(tmp_path / "hub", {"train": images})
    data = load_unlabelled_dataset(DataArguments(dataset_name=str(tmp_path / "hub"), image_column_name="picture"), 0)
    assert len(data.train) + len(data.validation) == 10 and data.train.column_names == ["image", "label"]
    assert isinstance(data.train[0]["image"], PIL.Image.Image)

    labelled = load_unlabelled_dataset(DataArguments(dataset_name=str(digits), max_eval_samples=50), seed=0)
    # The digits' test split is the held-out set; their labels are not read.
    assert (len(labelled.train), len(labelled.validation), labelled.eval_split) == (1437, 50, "test")
    assert list(labelled.train["label"])[:5] == [0, 1, 2, 3, 4]


def test_what_cannot_be_pre_trained_on_is_refused_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="--train_dir .*empty: no images"):
        load_unlabelled_dataset(DataArguments(train_dir=str(tmp_path / "empty")), seed=0)
    one = flat_folder(tmp_path / "one", 1)
    with pytest.raises(UserError, match="holds 1 image: nothing to hold out"):
        load_unlabelled_dataset(DataArguments(train_dir=str(one)), seed=0)
    with pytest.raises(UserError, match="--train_dir .* lies inside|same folder"):
        load_unlabelled_dataset(DataArguments(train_dir=str(one), validation_dir=str(one)), seed=0)


@pytest.mark.parametrize("rows, fraction", [(2, 0.15), (10, 0.5), (100, 0.15), (7, 0.99)])
def test_the_held_out_split_keeps_at_least_one_image_on_each_side(rows, fraction):
    train, held = held_out_split(rows, fraction, seed=0)
    assert len(held) >= 1 and len(train) >= 1
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(rows))

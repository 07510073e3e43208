"""Image folders laid out otherwise than `root/<class>/<image>`: each is loaded with the classes it means, or refused
in one line saying what was found there and what is expected, before anything is written."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from factories import write_image_folder
from test_bad_inputs import assert_one_line, snapshot, tiny

from vit_accel.data import DataArguments, load_image_dataset
from vit_accel.errors import UserError


def flat(root: Path) -> None:
    write_image_folder(root.parent / "staging", {"a": 6})
    shutil.move(str(root.parent / "staging" / "a"), str(root))


def images_beside_class_folders(root: Path) -> None:
    write_image_folder(root, {"cat": 3, "dog": 3})
    shutil.copy(root / "cat" / "0.png", root / "stray.png")


def different_depths(root: Path) -> None:
    write_image_folder(root, {"cat": 3, "dog": 3})
    write_image_folder(root / "cat", {"indoor": 2})


def empty_class_folder(root: Path) -> None:
    write_image_folder(root, {"cat": 3, "dog": 3})
    (root / "fox").mkdir()


def no_images(root: Path) -> None:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("not an image")


def single_class(root: Path) -> None:
    write_image_folder(root, {"cat": 4})


REFUSED = {
    "a flat folder": (flat, ["holds its 6 images directly, without class folders", "0.png", "<folder>/<class>/"]),
    "images beside class folders": (images_beside_class_folders, ["both directly in it and in class folders", "stray"]),
    "images at different depths": (different_depths, ["at different depths", "cat/indoor/"]),
    "an empty class folder": (empty_class_folder, ["the class folder 'fox' holds no images"]),
    "no image files": (no_images, ["holds no image files (found 2 .txt"]),
    "an empty folder": (lambda root: root.mkdir(), ["holds no images (no files at all below it)"]),
    "a single class folder": (single_class, ["a single class folder ('cat')"]),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_folder_of_another_layout_says_what_it_found(name, tmp_path, run_train):
    build, expected = REFUSED[name]
    root = tmp_path / "train"
    build(root)
    argv = tiny(tmp_path / "unused", tmp_path / "out", "--train_dir", str(root))
    index = argv.index("--dataset_name")
    del argv[index : index + 2]
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", f"--train_dir {root}", *expected)
    assert not snapshot(tmp_path / "out")


def load(train: Path, validation: Path | None = None):
    args = DataArguments(train_dir=str(train), validation_dir=validation and str(validation), dataloader_num_workers=0)
    return load_image_dataset(args, seed=0)


def test_linked_class_folders_are_followed(tmp_path):
    write_image_folder(tmp_path / "store", {"n01": 4, "n02": 4})
    root = tmp_path / "train"
    root.mkdir()
    os.symlink(tmp_path / "store" / "n01", root / "cat")  # the class is the link's name, not its target's
    os.symlink(tmp_path / "store" / "n02", root / "dog")
    os.symlink(root, root / "cat" / "loop")  # a link back up the tree is walked once
    data = load(root)
    assert data.labels == ["cat", "dog"]
    assert len(data.train) + len(data.validation) == 8


def test_nested_class_folders_say_where_the_classes_come_from(tmp_path, caplog):
    write_image_folder(tmp_path / "train" / "set1", {"cat": 3, "dog": 3})
    write_image_folder(tmp_path / "train" / "set2", {"cat": 3, "fox": 3}, seed=1)
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path / "train")
    assert data.labels == ["cat", "dog", "fox"]
    assert "the images lie 2 folders deep" in caplog.text
    assert "from set1, set2; folders of the same name are one class (cat)" in caplog.text


def test_hidden_files_and_a_metadata_file_are_as_datasets_reads_them(tmp_path, caplog):
    root = tmp_path / "train"
    write_image_folder(root, {"cat": 3, "dog": 3})
    write_image_folder(root / ".ipynb_checkpoints", {"cat": 1})  # hidden: not a class, not a depth
    (root / ".DS_Store").write_bytes(b"\0")
    assert load(root).labels == ["cat", "dog"]
    flat(tmp_path / "flat")
    (tmp_path / "flat" / "metadata.csv").write_text(
        "file_name,label\n" + "".join(f"{i}.png,{'xy'[i % 2]}\n" for i in range(6))
    )
    assert load(tmp_path / "flat").labels == ["x", "y"]


def test_a_validation_folder_without_some_classes_is_named(tmp_path, caplog):
    write_image_folder(tmp_path / "train", {"cat": 3, "dog": 3, "fox": 3})
    write_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, seed=1)
    with caplog.at_level(logging.WARNING):
        data = load(tmp_path / "train", tmp_path / "val")
    assert data.labels == ["cat", "dog", "fox"] and len(data.validation) == 4
    assert "has no images of 1 class(es) of --train_dir (fox): they are trained but never evaluated" in caplog.text


def test_a_dataset_name_folder_of_images_is_checked_and_linked_folders_followed(tmp_path, run_train):
    flat(tmp_path / "flat")
    code, stderr = run_train(tiny(tmp_path / "flat", tmp_path / "out"))
    assert code == 2
    assert_one_line(stderr, "train.py", f"--dataset_name {tmp_path / 'flat'} holds its 6 images directly")
    root = tmp_path / "splits"
    write_image_folder(tmp_path / "store", {"n01": 4, "n02": 4})
    (root / "train").mkdir(parents=True)
    os.symlink(tmp_path / "store" / "n01", root / "train" / "cat")
    os.symlink(tmp_path / "store" / "n02", root / "train" / "dog")
    write_image_folder(root / "test", {"cat": 2, "dog": 2}, seed=1)
    data = load_image_dataset(DataArguments(dataset_name=str(root), dataloader_num_workers=0), seed=0)
    assert data.labels == ["cat", "dog"] and (len(data.train), len(data.validation)) == (8, 4)
    (root / "test" / "fox").mkdir()
    with pytest.raises(UserError, match=r"splits \(its test/ folder\): the class folder 'fox' holds no images"):
        load_image_dataset(DataArguments(dataset_name=str(root), dataloader_num_workers=0), seed=0)


def test_a_single_class_folder_keeps_its_label_for_evaluation(tmp_path):
    # ImageFolder drops the labels of a lone class folder; an evaluation set may well be one class.
    single_class(tmp_path / "cats")
    folder = str(tmp_path / "cats")
    args = DataArguments(train_dir=folder, validation_dir=folder, dataloader_num_workers=0)
    data = load_image_dataset(args, seed=0, for_training=False)
    assert data.labels == ["cat"] and len(data.validation) == 4


def test_linked_class_folders_under_a_glob_character_are_named(tmp_path):
    write_image_folder(tmp_path / "store", {"n01": 3, "n02": 3})
    root = tmp_path / "set[1]" / "train"
    root.mkdir(parents=True)
    os.symlink(tmp_path / "store" / "n01", root / "cat")
    os.symlink(tmp_path / "store" / "n02", root / "dog")
    with pytest.raises(UserError, match=r"glob character\(s\) '\[', '\]' and it has class folders that are links"):
        load(root)

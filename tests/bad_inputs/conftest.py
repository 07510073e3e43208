"""Bad input and faults, as a new user meets them: each gives one line naming the culprit, and loses nothing. The
table of user mistakes, one file per entry point (train.py, its runs, its processes, `vit-accel`, the Python API).

Every case runs the real entry point (train.py's `cli`, `vit-accel`'s `main`, or the Python API) on a mistake and
checks three things: the exit status, a single error line that names the flag, file, key, column or row at fault,
and that no file of the output directory (and of any run it points at) changed. train.py runs in-process: each
mistake is found before the dataset is read, so a case costs well under a second.
"""

from __future__ import annotations

import pytest
from bad_input_helpers import tiny
from factories import png_bytes, random_rgb, write_hub_parquet, write_image_folder
from launching import train_in_this_process

from vit_accel.demo import export_digits

# --- data and runs every case can point at ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Datasets with one defect each, a finished run with checkpoints, and a second run."""
    from datasets import DatasetDict, load_from_disk

    root = tmp_path_factory.mktemp("world")
    digits = root / "digits"
    export_digits(digits)
    splits = load_from_disk(str(digits))
    DatasetDict(
        train=splits["train"].filter(lambda row: row["label"] == 0),
        test=splits["test"].filter(lambda r: r["label"] == 0),
    ).save_to_disk(str(root / "one_class"))
    write_hub_parquet(
        root / "empty_test", {"train": splits["train"].select(range(60)), "test": splits["test"].select([])}
    )
    write_image_folder(root / "folder" / "train", {"cat": 3, "dog": 3})
    write_image_folder(root / "folder" / "val", {"cat": 2, "dog": 2, "fox": 1}, seed=1)
    corrupt = write_image_folder(root / "corrupt", {"cat": 8, "dog": 8}, seed=2)
    corrupt[3].write_bytes(corrupt[3].read_bytes()[:60])  # a truncated PNG
    (root / "table.csv").write_text("image,label\nx.png,0\n")
    for path in write_image_folder(root / "cats_unreadable", {"cat": 8, "dog": 8}, seed=3):
        if path.parent.name == "cat":
            path.write_bytes(path.read_bytes()[:60])
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": png_bytes(random_rgb(i)), "path": None} for i in range(8)], "label": [0, 1] * 4}
    test = Dataset.from_dict(rows, features=features).map(
        lambda r, i: {"label": -1 if i == 5 else r["label"]}, with_indices=True
    )
    write_hub_parquet(root / "unlabelled", {"train": Dataset.from_dict(rows, features=features), "test": test})
    return root


@pytest.fixture(scope="session")
def finished(world, tmp_path_factory):
    """A finished 4-step run with checkpoint-2 and checkpoint-4, and a second run stopped at checkpoint-2."""
    runs = tmp_path_factory.mktemp("runs")
    for name, steps in (("finished", "4"), ("other", "2")):
        assert train_in_this_process(tiny(world / "digits", runs / name, "--max_train_steps", steps)) == 0
    assert (runs / "finished" / "checkpoint-4").is_dir() and (runs / "other" / "checkpoint-2").is_dir()
    return runs

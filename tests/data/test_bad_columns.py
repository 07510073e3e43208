"""Image columns that name remote files: refused in one line naming the split, row and column, with nothing fetched."""

from __future__ import annotations

import socket

import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value
from factories import png_bytes, random_rgb, write_hub_parquet
from test_bad_inputs import assert_one_line, snapshot, tiny

from vit_accel.data import DataArguments, load_image_dataset


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test reached for the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def rows(first_remote: int, kind: str) -> Dataset:
    """8 images, those from `first_remote` on given by URL: as file paths (`kind="paths"`) or as Image entries
    holding only a path (`kind="image"`)."""
    labels = ClassLabel(names=["a", "b"])
    local = [png_bytes(random_rgb(i)) for i in range(8)]
    urls = [f"https://example.com/images/{i}.png" for i in range(8)]
    if kind == "paths":
        column = ["/nonexistent/local.png"] * first_remote + urls[first_remote:]
        return Dataset.from_dict(
            {"image": column, "label": [0, 1] * 4}, features=Features({"image": Value("string"), "label": labels})
        )
    column = [{"bytes": b, "path": None} for b in local[:first_remote]]
    column += [{"bytes": None, "path": url} for url in urls[first_remote:]]
    return Dataset.from_dict(
        {"image": column, "label": [0, 1] * 4}, features=Features({"image": Image(), "label": labels})
    )


def write_parquet_as_is(root, dataset: Dataset) -> None:
    """The Hub layout, written by pyarrow: 🤗 datasets' own `to_parquet` would fetch each URL to embed it."""
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    pq.write_table(dataset.data.table, root / "data" / "train-00000-of-00001.parquet")


@pytest.mark.parametrize("kind", ["paths", "image"])
def test_an_image_column_of_urls_is_refused_without_fetching(kind, tmp_path, run_train, no_network):
    write_parquet_as_is(tmp_path / "data", rows(5, kind))
    code, stderr = run_train(tiny(tmp_path / "data", tmp_path / "out"))
    assert code == 2
    assert_one_line(
        stderr, "train.py", "Split 'train', row 5: column 'image'", "'https://example.com/images/5.png'",
        "3 such row(s)", "not fetched",
    )  # fmt: skip
    assert not snapshot(tmp_path / "out")


def test_bytes_beside_a_url_path_are_read_as_they_are(tmp_path, no_network):
    # An Image entry holding its bytes keeps the path it came from only as a name: nothing to fetch.
    column = [{"bytes": png_bytes(random_rgb(i)), "path": f"https://example.com/{i}.png"} for i in range(8)]
    data = Dataset.from_dict(
        {"image": column, "label": [0, 1] * 4},
        features=Features({"image": Image(), "label": ClassLabel(names=["a", "b"])}),
    )
    write_hub_parquet(tmp_path / "data", {"train": data, "test": data})
    loaded = load_image_dataset(DataArguments(dataset_name=str(tmp_path / "data")), seed=0)
    assert loaded.train[0]["image"].size == (32, 32)


def test_a_missing_image_is_a_bad_image(tmp_path, run_train):
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    column = [{"bytes": png_bytes(random_rgb(i)), "path": None} for i in range(16)]
    column[3] = None
    data = Dataset.from_dict({"image": column, "label": [0, 1] * 8}, features=features)
    write_hub_parquet(tmp_path / "data", {"train": data, "test": data})
    code, stderr = run_train(tiny(tmp_path / "data", tmp_path / "out"))
    assert code == 2
    assert_one_line(stderr, "train.py", "Cannot decode the image at row", "missing (null)", "--bad_images skip")
    code, stderr = run_train(tiny(tmp_path / "data", tmp_path / "skipped", "--bad_images", "skip"))
    assert code == 0, stderr[-2000:]


def test_predict_refuses_an_image_url_without_fetching(tmp_path, capsys, no_network):
    from vit_accel.cli import main

    code = main(["predict", "--model", str(tmp_path / "never-loaded"), "https://example.com/cat.png"])
    assert code == 2
    assert_one_line(capsys.readouterr().err, "vit-accel predict", "https://example.com/cat.png: a URL", "not fetched")

"""ImageClassificationDataset / collate / make_dataloader: reproducible, resumable, robust to bad images."""

import warnings

import numpy as np
import pytest
import torch
from accelerate import skip_first_batches
from datasets import ClassLabel, Dataset, Features, Image
from factories import (
    cifar10_dataset,
    png_bytes,
    random_rgb,
    write_exif_rotated_pair,
    write_hub_parquet,
    write_image_folder,
)

from vit_accel.data import (
    BadImageError,
    DataArguments,
    ImageClassificationDataset,
    build_pipeline,
    collate,
    example_seed,
    load_image_dataset,
    make_dataloader,
)
from vit_accel.data.decode import FAST_DECODERS
from vit_accel.data.libturbojpeg import available as turbojpeg_available

HALF = (0.5, 0.5, 0.5)
NO_TURBOJPEG = "the turbojpeg wheel (Linux x86_64 and macOS, Python <= 3.13) is not installed here"
TURBOJPEG = pytest.param("turbojpeg", marks=pytest.mark.skipif(not turbojpeg_available(), reason=NO_TURBOJPEG))


def cifar_train(tmp_path, num=24):
    write_hub_parquet(tmp_path, {"train": cifar10_dataset(num), "test": cifar10_dataset(4, seed=1)})
    return load_image_dataset(DataArguments(dataset_name=str(tmp_path)), seed=0).train


def make_set(data, seed=0, preset="cifar", bad_images="error"):
    return ImageClassificationDataset(data, build_pipeline(preset, 64, HALF, HALF, train=True), seed, bad_images)


def batches(loader):
    return [(batch["pixel_values"].clone(), batch["labels"].clone()) for batch in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_items_and_collate(tmp_path):
    dataset = make_set(cifar_train(tmp_path))
    item = dataset[3]
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 32, 32)
    assert item["labels"] == 3 and isinstance(item["labels"], int)
    batch = collate([dataset[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.uint8
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [0, 1, 2, 3, 4]
    loader = make_dataloader(dataset, batch_size=8, shuffle=True, seed=0)
    assert loader.pin_memory == torch.cuda.is_available() and not loader.persistent_workers
    # Resizing in the collate step (CPU-only runs) gives what on_device would give from the 32 px batch.
    resized = next(iter(make_dataloader(dataset, batch_size=8, shuffle=True, seed=0, resize_to=64)))
    small = next(iter(loader))
    assert resized["pixel_values"].shape == (8, 3, 64, 64) and resized["pixel_values"].dtype == torch.uint8
    assert torch.equal(
        dataset.pipeline.on_device(resized["pixel_values"]), dataset.pipeline.on_device(small["pixel_values"])
    )


def test_same_seed_same_batches_for_any_num_workers(tmp_path):
    data = cifar_train(tmp_path)
    reference = batches(make_dataloader(make_set(data), batch_size=5, shuffle=True, seed=0))
    assert sorted(torch.cat([labels for _, labels in reference]).tolist()) == sorted(i % 10 for i in range(24))
    assert same(reference, batches(make_dataloader(make_set(data), batch_size=5, shuffle=True, seed=0)))
    workers = batches(make_dataloader(make_set(data), batch_size=5, shuffle=True, seed=0, num_workers=2))
    assert same(reference, workers)
    other_seed = batches(make_dataloader(make_set(data, seed=1), batch_size=5, shuffle=True, seed=1))
    assert not same(reference, other_seed)


def test_epochs_differ_and_are_rebuilt_from_scratch(tmp_path):
    data = cifar_train(tmp_path)
    dataset = make_set(data)
    loader = make_dataloader(dataset, batch_size=6, shuffle=True, seed=0)
    epoch0 = batches(loader)
    dataset.set_epoch(1)
    epoch1 = batches(loader)
    assert not same(epoch0, epoch1)
    # Same pixels for the same (seed, epoch, index), whatever the order: compare example by example.
    assert not torch.equal(dataset[0]["pixel_values"], make_set(data)[0]["pixel_values"])
    # A fresh process that goes straight to epoch 1 (a resume) sees the same epoch 1.
    fresh = make_set(data)
    fresh.set_epoch(1)
    assert same(epoch1, batches(make_dataloader(fresh, batch_size=6, shuffle=True, seed=0)))
    # Unshuffled (evaluation) order is the dataset's.
    ordered = batches(make_dataloader(make_set(data), batch_size=6, shuffle=False, seed=0))
    assert torch.cat([labels for _, labels in ordered]).tolist() == [i % 10 for i in range(24)]


def test_resume_mid_epoch_with_skip_first_batches(tmp_path):
    data = cifar_train(tmp_path)
    dataset = make_set(data)
    dataset.set_epoch(2)
    uninterrupted = batches(make_dataloader(dataset, batch_size=5, shuffle=True, seed=0))
    resumed_set = make_set(data)
    resumed_set.set_epoch(2)
    resumed = batches(skip_first_batches(make_dataloader(resumed_set, batch_size=5, shuffle=True, seed=0), 2))
    assert len(resumed) == len(uninterrupted) - 2 and same(uninterrupted[2:], resumed)


def corrupt_dataset():
    """Ten CIFAR-like rows; rows 3 and 4 hold a truncated PNG and random bytes."""
    good = [png_bytes(random_rgb(i)) for i in range(10)]
    good[3] = good[3][:60]
    good[4] = b"not an image at all"
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    return Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in good], "label": list(range(10))}, features)


def test_corrupt_image_is_fatal_by_default_and_names_the_row():
    dataset = make_set(corrupt_dataset(), preset="none")
    dataset[2]
    with pytest.raises(BadImageError, match=r"row 3.*--bad_images skip"):
        dataset[3]
    with pytest.raises(BadImageError, match=r"row 4"):
        dataset[4]


def test_corrupt_image_is_skipped_counted_and_warned_once():
    dataset = make_set(corrupt_dataset(), preset="none", bad_images="skip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [dataset[i] for i in range(10)]
    assert dataset.bad_rows == [3, 4]
    assert len(caught) == 1 and "row 3" in str(caught[0].message) and "counted" in str(caught[0].message)
    assert [item["labels"] for item in items] == [0, 1, 2, 5, 5, 5, 6, 7, 8, 9]  # replaced by the next readable row
    # Deterministic replacement, and the count is shared with DataLoader workers.
    again = make_set(corrupt_dataset(), preset="none", bad_images="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = batches(make_dataloader(again, batch_size=5, shuffle=False, seed=0, num_workers=2))
    assert torch.cat([labels for _, labels in loaded]).tolist() == [0, 1, 2, 5, 5, 5, 6, 7, 8, 9]
    assert torch.equal(loaded[0][0][3], items[3]["pixel_values"])
    assert again.bad_rows == [3, 4]


def test_corrupt_file_in_image_folder_names_the_path(tmp_path):
    paths = write_image_folder(tmp_path / "train", {"a": 3, "b": 3})
    paths[4].write_bytes(paths[4].read_bytes()[:50])  # truncated PNG in class b
    data = load_image_dataset(DataArguments(train_dir=str(tmp_path / "train"), train_val_split=0.34), seed=0)
    with pytest.raises(BadImageError, match=r"row \d+ \(file '.*b/1\.png'\)"):
        for split in (data.train, data.validation):
            dataset = make_set(split, preset="none")
            for index in range(len(dataset)):
                dataset[index]
    skipped = 0
    for split in (data.train, data.validation):  # the bad file is in exactly one of them
        lenient = make_set(split, preset="none", bad_images="skip")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert all(lenient[i]["pixel_values"].shape == (3, 64, 64) for i in range(len(lenient)))
        skipped += len(lenient.bad_rows)
    assert skipped == 1


def test_dataset_copies_keep_the_skip_count():
    import copy
    import pickle

    dataset = make_set(corrupt_dataset(), preset="none", bad_images="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset[3]
    clone = pickle.loads(pickle.dumps(dataset))
    assert copy.deepcopy(dataset).bad_rows == clone.bad_rows == [3, 4]  # row 4, tried as the substitute, too
    assert torch.equal(clone[0]["pixel_values"], dataset[0]["pixel_values"])


def test_every_image_unreadable_is_an_error():
    data = corrupt_dataset().select([3, 4])
    dataset = make_set(data, preset="none", bad_images="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadImageError, match="No image in the dataset can be decoded"):
            dataset[0]


def test_grayscale_and_rgba_rows_come_out_rgb():
    import PIL.Image

    images = [PIL.Image.new("L", (32, 32), 9), PIL.Image.new("RGBA", (32, 32), (1, 2, 3, 255))]
    features = Features({"image": Image(), "label": ClassLabel(names=["x", "y"])})
    rows = {"image": [{"bytes": png_bytes(i), "path": None} for i in images], "label": [0, 1]}
    data = Dataset.from_dict(rows, features)
    dataset = make_set(data, preset="none")
    assert dataset[0]["pixel_values"].shape == (3, 64, 64) and int(dataset[0]["pixel_values"].max()) == 9
    assert dataset[1]["pixel_values"][:, 0, 0].tolist() == [1, 2, 3]
    assert np.all(np.isfinite(dataset.pipeline.on_device(collate([dataset[0], dataset[1]])["pixel_values"]).numpy()))


def test_epoch_and_resume_through_accelerate_wrappers(tmp_path):
    """As the training loop uses it: accelerate's sharded loader, `set_epoch` on the prepared loader, then
    `skip_first_batches` on it; two simulated processes together see exactly the single-process epoch."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches

    data = cifar_train(tmp_path)
    single = make_set(data)
    single.set_epoch(3)
    reference = batches(make_dataloader(single, batch_size=4, shuffle=True, seed=0))
    shards = []
    for rank in range(2):
        prepared = prepare_data_loader(
            make_dataloader(make_set(data), batch_size=4, shuffle=True, seed=0),
            num_processes=2,
            process_index=rank,
            put_on_device=False,
        )
        prepared.set_epoch(3)
        shards.append(batches(prepared))
        resumed = skip_first_batches(prepared, 1)
        resumed.set_epoch(3)
        assert same(shards[rank][1:], batches(resumed))
    interleaved = [batch for pair in zip(*shards) for batch in pair]
    assert same(reference, interleaved)


def test_a_photo_with_exif_orientation_is_read_upright_from_an_image_folder(tmp_path):
    jpeg, png = write_exif_rotated_pair(tmp_path / "files", size=(20, 16))
    pixels = {}
    for name, path in (("photo", jpeg), ("upright", png)):
        for split in ("train", "val"):
            (tmp_path / name / split / "cat").mkdir(parents=True)
            (tmp_path / name / split / "cat" / path.name).write_bytes(path.read_bytes())
            write_image_folder(tmp_path / name / split, {"dog": 1})
        folders = DataArguments(train_dir=str(tmp_path / name / "train"), validation_dir=str(tmp_path / name / "val"))
        data = load_image_dataset(folders, seed=0)
        pixels[name] = []
        for split, preset in ((data.train, "randaugment"), (data.validation, "none")):
            rows = ImageClassificationDataset(split, build_pipeline(preset, 20, HALF, HALF, train=True), 0)
            pixels[name] += [rows[i]["pixel_values"] for i in range(len(rows))]
    assert len(pixels["photo"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(pixels["photo"], pixels["upright"], strict=True))


def jpeg_rows(num: int, size=(320, 240), corrupt=()) -> Dataset:
    """`num` JPEG rows of random-ish photos (a gradient plus noise); rows in `corrupt` are truncated."""
    import io

    import PIL.Image

    rows = []
    for i in range(num):
        x = np.linspace(0, 255, size[0])[None, :, None] * np.ones((size[1], 1, 3))
        array = np.clip(x + random_rgb(i, size) * 0.3, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        PIL.Image.fromarray(array).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        rows.append(data[:400] if i in corrupt else data)
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    return Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in rows], "label": [i % 2 for i in range(num)]}, features
    )


def test_map_style_training_takes_the_fast_decoder_by_default():
    """`auto` picks the fast path for a random-resized-crop training preset: each item is exactly what
    `decode.prepare` makes from the row's bytes; `pil` is the full decode through the pipeline, as before."""
    import io

    import PIL.Image

    from vit_accel.data.decode import prepare

    data = jpeg_rows(4)
    pipeline = build_pipeline("inception", 64, HALF, HALF, train=True)
    fast = ImageClassificationDataset(data, pipeline, seed=3)
    full = ImageClassificationDataset(data, pipeline, seed=3, decoder="pil")
    assert fast.decoder in FAST_DECODERS and full.decoder == "pil"
    raw = data.cast_column("image", Image(decode=False))
    for index in range(4):
        generator = torch.Generator().manual_seed(example_seed(3, 0, index))
        expected = prepare(pipeline, raw[index]["image"]["bytes"], generator, fast.decoder)
        assert torch.equal(fast[index]["pixel_values"], expected)
        generator = torch.Generator().manual_seed(example_seed(3, 0, index))
        decoded = PIL.Image.open(io.BytesIO(raw[index]["image"]["bytes"]))
        assert torch.equal(full[index]["pixel_values"], pipeline(decoded, generator))
        # 64 px crops of a 320x240 JPEG mostly decode at a reduced DCT scale: close, not equal.
        assert (fast[index]["pixel_values"].float() - full[index]["pixel_values"].float()).abs().mean() < 3


def test_evaluation_keeps_the_full_decode():
    """An evaluation pipeline (resize + centre crop) prepares images exactly as before, whatever the flag."""
    import io

    import PIL.Image

    data = jpeg_rows(2)
    pipeline = build_pipeline("randaugment", 64, HALF, HALF, train=False)
    raw = data.cast_column("image", Image(decode=False))
    for decoder in (
        None,
        "auto",
        "pil",
        *(name for name in FAST_DECODERS if name != "turbojpeg" or turbojpeg_available()),
    ):
        dataset = ImageClassificationDataset(data, pipeline, seed=0, decoder=decoder)
        generator = torch.Generator().manual_seed(example_seed(0, 0, 1))
        expected = pipeline(PIL.Image.open(io.BytesIO(raw[1]["image"]["bytes"])), generator)
        assert torch.equal(dataset[1]["pixel_values"], expected)
        assert dataset.decoder == (decoder if decoder in FAST_DECODERS else "pil")


@pytest.mark.parametrize("decoder", ["pil_draft", "simplejpeg", TURBOJPEG])
def test_a_corrupt_jpeg_on_the_fast_path_names_its_row_and_can_be_skipped(decoder):
    pipeline = build_pipeline("inception", 64, HALF, HALF, train=True)
    strict = ImageClassificationDataset(jpeg_rows(5, corrupt=(2,)), pipeline, seed=0, decoder=decoder)
    with pytest.raises(BadImageError, match=r"row 2: (OSError|ValueError).*--bad_images skip"):
        strict[2]
    lenient = ImageClassificationDataset(
        jpeg_rows(5, corrupt=(2,)), pipeline, seed=0, bad_images="skip", decoder=decoder
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = [lenient[i]["labels"] for i in range(5)]
    assert labels == [0, 1, 1, 1, 0] and lenient.bad_rows == [2]


@pytest.mark.parametrize("decoder", ["pil", "pil_draft", "simplejpeg", TURBOJPEG])
def test_fast_decoder_batches_stay_channels_last_and_normalise_as_nchw(decoder):
    """The fast decoders' images keep the resize's channels-last memory, and a batch of them stays so (one copy);
    `on_device` gives the same NCHW-contiguous float batch as from the same pixels stored NCHW."""
    pipeline = build_pipeline("inception", 64, HALF, HALF, train=True)
    dataset = ImageClassificationDataset(jpeg_rows(4), pipeline, seed=0, decoder=decoder)
    batch = next(iter(make_dataloader(dataset, 4, shuffle=False, seed=0)))["pixel_values"]
    fast = decoder != "pil"
    assert batch.shape == (4, 3, 64, 64) and batch.is_contiguous(memory_format=torch.channels_last) == fast
    assert torch.equal(batch, torch.stack([dataset[i]["pixel_values"] for i in range(4)]))
    normalised = pipeline.on_device(batch)
    assert normalised.is_contiguous()
    assert torch.equal(normalised, pipeline.on_device(batch.contiguous()))

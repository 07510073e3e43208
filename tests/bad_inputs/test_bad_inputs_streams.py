"""Bad streams through train.py (`--streaming`): one line naming the shard or column at fault, before training or at
the row where it fails, no checkpoint damaged, and the output directory left as it was found (no lock file)."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_input_helpers import assert_one_line, snapshot
from factories import tiny_overrides
from streams import id_png, write_parquet_shards, write_shards, write_tar_shards

from vit_accel.data import DataArguments
from vit_accel.data.streaming import open_streaming_dataset
from vit_accel.training.checkpointing import list_checkpoints, verify_checkpoint

SMALL = tiny_overrides(image_size=8)


def stream_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", SMALL,
        "--dataset_name", str(data), "--streaming", "--augmentation", "none", "--dataloader_num_workers", "0",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3",
        "--max_train_steps", "4", "--checkpointing_steps", "1", "--save_total_limit", "10", "--seed", "3",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def assert_refused(run_train, data: Path, out: Path, *expected: str) -> None:
    """train.py stops in one line holding `expected`, and leaves nothing in its new output directory."""
    code, stderr = run_train(stream_args(data, out))
    assert code == 2 and assert_one_line(stderr, "train.py", *expected)
    assert not out.exists() or list(out.iterdir()) == []


def test_a_stream_with_no_label_column(tmp_path, run_train):
    root = tmp_path / "data"
    write_tar_shards(root, [6, 6], fields=("png", "txt"))
    assert_refused(run_train, root, tmp_path / "out", "'train' shards", "Could not find the label column", "txt")


def test_shards_of_mixed_schemas(tmp_path, run_train):
    root = tmp_path / "data"
    write_parquet_shards(root, [6, 6, 6])
    second = root / "train-00001-of-00003.parquet"
    table = pq.read_table(second)
    pq.write_table(table.append_column("caption", [["x"] * table.num_rows]), second)
    assert_refused(run_train, root, tmp_path / "out", str(second), "caption", "must share one schema")


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_an_unreadable_shard(kind, tmp_path, run_train):
    root = tmp_path / "data"
    write_shards(kind, root, [6, 6, 6])
    broken = sorted(root.iterdir())[1]
    broken.write_bytes(broken.read_bytes()[:100])  # cut short: a partial download, a full disk
    assert_refused(run_train, root, tmp_path / "out", str(broken), "cannot be read")


def test_a_stream_too_short_for_one_batch_per_process(tmp_path, run_train):
    root = tmp_path / "data"
    write_parquet_shards(root, [2, 1])
    write_parquet_shards(root, [2], split="validation", first_id=100)
    assert_refused(run_train, root, tmp_path / "out", "'train' stream (3 examples in 2 shard(s)) is too short")


def write_tar(path: Path, labels: list[bytes]) -> None:
    """A webdataset shard of `tests/streams.py` images with these `.cls` labels."""
    with tarfile.open(path, "w") as archive:
        for index, label in enumerate(labels):
            for ext, content in (("png", id_png(index)), ("cls", label)):
                info = tarfile.TarInfo(f"k{index:04d}.{ext}")
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))


def test_a_validation_split_with_a_label_training_has_not(tmp_path, run_train):
    root = tmp_path / "data"
    write_tar_shards(root, [6, 6])
    write_tar(root / "validation-00000.tar", [b"1", b"7"])
    assert_refused(run_train, root, tmp_path / "out", "'validation' shards hold label(s) ['7']")


def test_a_label_only_in_shards_held_out_of_training(tmp_path, run_train):
    """Without a validation split, whole shards are held out; the classes are those of the shards that train, so a
    label found only in a held-out shard is named, not added as a class no example trains."""
    root = tmp_path / "data"
    write_tar_shards(root, [6, 6, 6, 6])
    held = open_streaming_dataset(DataArguments(dataset_name=str(root), streaming=True), seed=3).validation.shards
    assert len(held) == 1
    write_tar(Path(held[0].url), [b"0", b"9", b"1", b"2", b"0", b"1"])
    assert_refused(run_train, root, tmp_path / "out", "'validation' shards hold label(s) ['9']")


def test_an_image_that_fails_mid_run_keeps_every_checkpoint_whole(tmp_path, run_train):
    root = tmp_path / "data"
    write_parquet_shards(root, [16])
    write_parquet_shards(root, [4], split="validation", first_id=100)
    shard = root / "train-00000-of-00001.parquet"
    table = pq.read_table(shard).to_pylist()
    table[13]["image"] = {"bytes": b"\x89PNG broken", "path": None}  # read in the 4th batch at the latest
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(shard)), shard)
    out = tmp_path / "out"
    code, stderr = run_train(stream_args(root, out, "--shuffle_buffer_size", "1"))
    assert code == 2 and assert_one_line(stderr, "train.py", str(shard), "row 13")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    for checkpoint in list_checkpoints(out):
        verify_checkpoint(checkpoint)  # every file as written, with its stream state
        assert (checkpoint / "stream_state.json").is_file()
    assert not list(out.glob("*.tmp")) and not (out / ".vit_accel.lock").exists()
    before = snapshot(out)
    # The resume stops at the same row, the checkpoints untouched.
    code, stderr = run_train(stream_args(root, out, "--shuffle_buffer_size", "1", "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", str(shard), "row 13")
    assert {k: v for k, v in snapshot(out).items() if "checkpoint-" in k} == {
        k: v for k, v in before.items() if "checkpoint-" in k
    }
    shutil.rmtree(out)


def test_a_resume_on_other_shards_is_refused_before_anything_is_loaded(tmp_path, run_train):
    root = tmp_path / "data"
    write_parquet_shards(root, [8, 8])
    write_parquet_shards(root, [4], split="validation", first_id=100)
    out = tmp_path / "out"
    assert run_train(stream_args(root, out, "--max_train_steps", "2"))[0] == 0
    before = snapshot(out)
    write_parquet_shards(root, [8, 8, 5])  # a shard more: the checkpoint's stream is not this one
    code, stderr = run_train(stream_args(root, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "not the one the checkpoint was trained on", "train_")
    assert snapshot(out) == before

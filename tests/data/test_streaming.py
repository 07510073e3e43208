"""Streaming shards: each example once per epoch across processes and workers, seeded shuffle, exact resume.

Processes are simulated at the data level (rank/world_size arguments): a process' loader depends on nothing else.
The tests named after a failure mode each reproduce a case where streaming loaders are known to go wrong.
"""

import io
import json

import PIL.Image
import pytest
import torch
from streams import id_png, ids_of, none_pipeline, stream_args, write_parquet_shards, write_shards, write_tar_shards

from vit_accel.data import DataArguments, load_image_dataset, streaming
from vit_accel.data.loading import example_seed
from vit_accel.data.streaming import (
    load_stream_state,
    make_streaming_dataloader,
    open_streaming_dataset,
    save_stream_state,
    worker_range,
)
from vit_accel.errors import UserError

KINDS = ("parquet", "webdataset")


def loaders(data, world_size, batch_size=2, num_workers=0, train=True, buffer=4, seed=0, split=None):
    split = split if split is not None else (data.train if train else data.validation)
    return [
        make_streaming_dataloader(
            split,
            none_pipeline(train),
            data.label_ids,
            seed,
            batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            train=train,
            shuffle_buffer_size=buffer,
        )
        for rank in range(world_size)
    ]


def epoch_ids(loader) -> list[list[int]]:
    return [ids_of(batch) for batch in loader]


def stream(tmp_path, kind, train_sizes, eval_sizes=(3,)):
    write_shards(kind, tmp_path, list(train_sizes))
    write_shards(kind, tmp_path, list(eval_sizes), split="validation", first_id=1000)
    return open_streaming_dataset(stream_args(tmp_path), seed=0)


def test_plan_covers_the_epoch_once():
    """Worker ranges of all processes tile [0, R*K*B) without overlap; every process has the same batch count."""
    for n, world, workers, batch in [(15, 2, 2, 2), (7, 3, 0, 1), (100, 4, 3, 5), (9, 2, 2, 4)]:
        slots = []
        for rank in range(world):
            for worker in range(max(1, workers)):
                span = worker_range(n, rank, world, worker, workers, batch, drop_last=True)
                slots += range(span.start, span.start + span.length)
        k = n // (world * batch)
        assert sorted(slots) == list(range(world * k * batch))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 0), (2, 2)])
def test_each_example_once_per_epoch(tmp_path, kind, world_size, num_workers):
    data = stream(tmp_path, kind, [7, 3, 5])  # uneven shards, 3 of them for 2 or 4 streams
    per_rank = [epoch_ids(loader) for loader in loaders(data, world_size, num_workers=num_workers)]
    assert len({len(batches) for batches in per_rank}) == 1  # the same batch count everywhere: no hang
    assert all(len(b) == 2 for batches in per_rank for b in batches)
    seen = [i for batches in per_rank for b in batches for i in b]
    assert len(seen) == len(set(seen))
    assert set(seen) <= set(range(15))
    assert 15 - len(seen) < world_size * 2  # only the tail of the epoch's order, less than one global batch
    assert len(per_rank[0]) == len(loaders(data, world_size, num_workers=num_workers)[0]) == 15 // (2 * world_size)


@pytest.mark.parametrize("kind", KINDS)
def test_uneven_shards_are_neither_read_n_times_nor_hang(tmp_path, kind, monkeypatch):
    """Fewer shards (1) than processes (3), and a shard count (5) no process count divides: each raw example is read
    by one process only, and all processes stop after the same number of batches."""
    reads = []
    original = streaming._ShardReader._rows

    def counting(self, shard_index, skip):
        for row in original(self, shard_index, skip):
            reads.append((shard_index, row[3]))
            yield row

    monkeypatch.setattr(streaming._ShardReader, "_rows", counting)
    for sizes, world in [([13], 3), ([4, 2, 5, 3, 1], 2)]:
        reads.clear()
        root = tmp_path / f"{len(sizes)}-{world}"
        data = stream(root, kind, sizes)
        per_rank = [epoch_ids(loader) for loader in loaders(data, world, batch_size=2, buffer=3)]
        used = sum(len(b) for batches in per_rank for b in batches)
        assert len({len(batches) for batches in per_rank}) == 1
        assert len(reads) == len(set(reads)) == used  # nothing read twice, nothing read that is not used


@pytest.mark.parametrize("kind", KINDS)
def test_shuffle_is_seeded_and_changes_with_the_epoch(tmp_path, kind):
    data = stream(tmp_path, kind, [6, 6, 6, 6])
    (first,) = loaders(data, 1, buffer=5)
    epoch0 = epoch_ids(first)
    epoch1 = epoch_ids(first)  # a second iteration is the next epoch
    (again,) = loaders(data, 1, buffer=5)
    assert epoch_ids(again) == epoch0
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == sorted(sum(epoch1, [])) == list(range(24))
    (other_seed,) = loaders(data, 1, buffer=5, seed=1)
    assert epoch_ids(other_seed) != epoch0
    # Shuffled beyond file order: not the identity, and shards interleave across epochs.
    assert sum(epoch0, []) != list(range(24))


def run_with_resumes(data, world_size, num_workers, stops, epochs=2, buffer=4):
    """Batches per rank over `epochs` epochs, the loader rebuilt from a JSON round trip of its state at each stop
    (a count of batches consumed since the start of the run)."""
    per_rank = []
    for rank in range(world_size):
        out, consumed, state = [], 0, None
        boundaries = [*stops, None]
        for stop in boundaries:
            loader = loaders(data, world_size, num_workers=num_workers, buffer=buffer)[rank]
            if state is not None:
                loader.load_state_dict(json.loads(json.dumps(state)))
            done = False
            while not done:
                epoch = loader.epoch
                if epoch >= epochs:
                    break
                for batch in loader:
                    out.append((epoch, ids_of(batch), batch["labels"].tolist()))
                    consumed += 1
                    if stop is not None and consumed == stop:
                        done = True
                        break
                else:
                    loader.set_epoch(epoch + 1)
            state = loader.state_dict()
        per_rank.append(out)
    return per_rank


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_resumed_twice_gives_the_uninterrupted_batches(tmp_path, kind, world_size, num_workers):
    data = stream(tmp_path, kind, [9, 4, 7])
    reference = run_with_resumes(data, world_size, num_workers, stops=[])
    per_epoch = len(loaders(data, world_size)[0])
    # Mid-window, then in the next epoch (a second resume of a resumed run).
    resumed = run_with_resumes(data, world_size, num_workers, stops=[1, per_epoch + 2])
    assert resumed == reference
    assert len(reference[0]) == 2 * per_epoch


@pytest.mark.parametrize("kind", KINDS)
def test_resume_restores_the_shuffle_buffer(tmp_path, kind):
    """A resume inside a shuffle window yields the rest of that window in the same order (a buffer refilled from
    the shard instead of rebuilt would give other examples)."""
    data = stream(tmp_path, kind, [16, 16])
    reference = run_with_resumes(data, 1, 0, stops=[], epochs=1, buffer=12)
    for stop in (1, 3, 5):
        assert run_with_resumes(data, 1, 0, stops=[stop], epochs=1, buffer=12) == reference
    window = [i for _, ids, _ in reference[0][:6] for i in ids]  # the first 12 examples: one window
    assert window != sorted(window)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_drops_no_samples_when_shards_divide_the_processes(tmp_path, kind):
    data = stream(tmp_path, kind, [6, 6, 6, 6])  # 4 shards, 2 processes
    reference = run_with_resumes(data, 2, 0, stops=[], epochs=1)
    resumed = run_with_resumes(data, 2, 0, stops=[2], epochs=1)
    ids = sorted(i for rank in resumed for _, b, _ in rank for i in b)
    assert ids == list(range(24))
    assert resumed == reference


@pytest.mark.parametrize("kind", KINDS)
def test_second_resume_does_not_restart_at_zero(tmp_path, kind):
    data = stream(tmp_path, kind, [10, 10])
    (loader,) = loaders(data, 1)
    first = [ids_of(b) for _, b in zip(range(2), loader)]
    state = loader.state_dict()
    (second,) = loaders(data, 1)
    second.load_state_dict(state)
    more = [ids_of(b) for _, b in zip(range(2), second)]
    (third,) = loaders(data, 1)
    third.load_state_dict(second.state_dict())
    assert third.state_dict()["batches_done"] == 4
    rest = epoch_ids(third)
    (reference,) = loaders(data, 1)
    assert first + more + rest == epoch_ids(reference)


def test_no_batch_replayed_under_two_processes_with_workers(tmp_path):
    """Two processes, two workers each, read ahead (prefetch) when the state is taken: the resumed run repeats no
    batch and skips none."""
    data = stream(tmp_path, "parquet", [11, 9, 12])
    reference = run_with_resumes(data, 2, 2, stops=[], epochs=1)
    resumed = run_with_resumes(data, 2, 2, stops=[3], epochs=1)
    assert resumed == reference
    ids = [i for rank in resumed for _, b, _ in rank for i in b]
    assert len(ids) == len(set(ids))


def test_labels_follow_the_examples(tmp_path):
    data = stream(tmp_path, "webdataset", [5, 5])
    (loader,) = loaders(data, 1)
    for batch in loader:
        assert batch["labels"].tolist() == [i % 3 for i in ids_of(batch)]
    assert data.labels == ["0", "1", "2"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 2), (3, 0)])
def test_evaluation_counts_each_example_once(tmp_path, kind, world_size, num_workers):
    write_shards(kind, tmp_path, [8])
    write_shards(kind, tmp_path, [4, 3], split="validation", first_id=100)
    data = open_streaming_dataset(stream_args(tmp_path), seed=0)
    per_rank = [epoch_ids_valid(loader) for loader in loaders(data, world_size, num_workers=num_workers, train=False)]
    assert len({len(batches) for batches in per_rank}) == 1
    real = sorted(i for batches in per_rank for ids in batches for i in ids)
    assert real == list(range(100, 107))


def epoch_ids_valid(loader):
    return [[i for i, ok in zip(ids_of(b), b["valid"].tolist()) if ok] for b in loader]


def test_without_an_eval_split_whole_training_shards_are_held_out(tmp_path):
    write_parquet_shards(tmp_path, [4, 4, 4, 4, 4])
    data = open_streaming_dataset(stream_args(tmp_path, train_val_split=0.2), seed=0)
    assert len(data.validation.shards) == 1 and len(data.train.shards) == 4
    assert {s.url for s in data.validation.shards}.isdisjoint(s.url for s in data.train.shards)
    assert open_streaming_dataset(stream_args(tmp_path, train_val_split=0.2), seed=0).validation == data.validation


def test_max_train_samples_keeps_a_prefix(tmp_path):
    write_parquet_shards(tmp_path, [4, 4, 4])
    write_parquet_shards(tmp_path, [2], split="test", first_id=50)
    data = open_streaming_dataset(stream_args(tmp_path, max_train_samples=6), seed=0)
    assert data.train.num_examples == 6 and data.validation.name == "test"
    (loader,) = loaders(data, 1)
    assert sorted(i for b in epoch_ids(loader) for i in b) == list(range(6))


def test_a_shard_url_streams(tmp_path):
    write_parquet_shards(tmp_path, [4, 4], split="train")
    args = stream_args(f"file://{tmp_path}/train-*.parquet", train_val_split=0.5)
    data = open_streaming_dataset(args, seed=0)
    assert data.train.num_examples == 4 and data.validation.num_examples == 4


# Bad input: one line naming the culprit.


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_no_label_column(tmp_path):
    write_tar_shards(tmp_path, [3, 3], fields=("png", "txt"))
    with pytest.raises(UserError) as error:
        open_streaming_dataset(stream_args(tmp_path), seed=0)
    assert "label column" in one_line(error) and "--label_column_name" in one_line(error)


def test_mixed_schemas_parquet(tmp_path):
    write_parquet_shards(tmp_path, [3, 3])
    from datasets import Dataset

    Dataset.from_dict({"image": [b"x"], "label": ["a"], "extra": [1]}).to_parquet(
        str(tmp_path / "train-00002-of-00003.parquet")
    )
    with pytest.raises(UserError) as error:
        open_streaming_dataset(stream_args(tmp_path), seed=0)
    assert "train-00002-of-00003.parquet" in one_line(error) and "schema" in one_line(error)


def test_mixed_schemas_webdataset(tmp_path):
    write_tar_shards(tmp_path, [3])
    write_tar_shards(tmp_path / "more", [3], fields=("png", "cls", "txt"))
    (tmp_path / "more" / "train-00000.tar").rename(tmp_path / "train-00001.tar")
    (tmp_path / "more").rmdir()
    with pytest.raises(UserError) as error:
        open_streaming_dataset(stream_args(tmp_path), seed=0)
    assert "train-00001.tar" in one_line(error) and "schema" in one_line(error)


@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_shard(tmp_path, kind):
    write_shards(kind, tmp_path, [3, 3])
    suffix = "parquet" if kind == "parquet" else "tar"
    bad = sorted(tmp_path.glob(f"*.{suffix}"))[1]
    bad.write_bytes(bad.read_bytes()[:100] + b"\x00garbage" * 50)
    with pytest.raises(UserError) as error:
        open_streaming_dataset(stream_args(tmp_path), seed=0)
    assert bad.name in one_line(error)


def test_stream_too_short_for_one_batch_per_process(tmp_path):
    data = stream(tmp_path, "parquet", [3])
    with pytest.raises(UserError) as error:
        loaders(data, 2, batch_size=2)
    assert "'train' stream (3 examples" in one_line(error) and "2 process(es)" in one_line(error)


def test_resume_on_another_plan_mid_epoch_is_refused_at_an_epoch_end_allowed(tmp_path):
    data = stream(tmp_path, "parquet", [8, 8])
    (loader,) = loaders(data, 1)
    next(iter(loader))
    mid = loader.state_dict()
    other = loaders(data, 2)[0]
    with pytest.raises(UserError) as error:
        other.load_state_dict(mid)
    assert "world_size 1 -> 2" in one_line(error)
    for _ in loader:
        pass
    other.load_state_dict(loader.state_dict())  # an epoch boundary: the next epoch is planned for two processes
    assert (other.epoch, other.batches_done) == (1, 0)


def test_resume_on_other_shards_is_refused(tmp_path):
    data = stream(tmp_path / "a", "parquet", [8, 8])
    fewer = stream(tmp_path / "b", "parquet", [8, 7])
    (loader,) = loaders(data, 1)
    (other,) = loaders(fewer, 1)
    with pytest.raises(UserError) as error:
        other.load_state_dict(loader.state_dict())
    assert "another stream" in one_line(error)


def test_bad_image_names_shard_and_row(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": b"not an image", "path": None}] * 4, "label": [0, 1, 0, 1]}
    Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    held_out = {"image": [{"bytes": id_png(i), "path": None} for i in range(2)], "label": [0, 1]}
    Dataset.from_dict(held_out, features=features).to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    data = open_streaming_dataset(stream_args(tmp_path), seed=0)
    (loader,) = loaders(data, 1)
    with pytest.raises(UserError) as error:
        next(iter(loader))
    assert "train-00000-of-00001.parquet" in one_line(error) and "row " in one_line(error)


def test_pixels_match_the_map_style_pipeline(tmp_path):
    """The streaming path prepares an example exactly as the map-style dataset's pipeline does, given the generator
    seeded from (seed, epoch, shard, row)."""
    data = stream(tmp_path, "parquet", [4])
    (loader,) = loaders(data, 1, batch_size=1)
    batch = next(iter(loader))
    example_id = ids_of(batch)[0]
    generator = torch.Generator().manual_seed(example_seed(0, 0, (0 << 32) + example_id))
    expected = none_pipeline()(PIL.Image.open(io.BytesIO(id_png(example_id))), generator)
    assert torch.equal(batch["pixel_values"][0], expected)


def test_state_file_round_trip_and_refusals(tmp_path):
    data = stream(tmp_path / "data", "parquet", [8, 8])
    (loader,) = loaders(data, 1, num_workers=2)
    first = [ids_of(b) for _, b in zip(range(3), loader)]
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    path = save_stream_state(loader, checkpoint)
    assert json.loads(path.read_text())["batches_done"] == 3
    (resumed,) = loaders(data, 1, num_workers=2)
    load_stream_state(resumed, checkpoint)
    (reference,) = loaders(data, 1, num_workers=2)
    assert first + epoch_ids(resumed) == epoch_ids(reference)
    path.write_text("{not json")
    with pytest.raises(UserError) as error:
        load_stream_state(resumed, checkpoint)
    assert "stream_state.json" in one_line(error)
    path.unlink()
    with pytest.raises(UserError) as error:
        load_stream_state(resumed, checkpoint)
    assert "no stream_state.json" in one_line(error)


def test_evaluation_stream_too_short_names_the_eval_flag(tmp_path):
    write_parquet_shards(tmp_path, [6])
    write_parquet_shards(tmp_path, [1], split="validation", first_id=50)
    data = open_streaming_dataset(stream_args(tmp_path, max_eval_samples=1), seed=0)
    assert len(loaders(data, 2, train=False)[0]) == 1  # one real row, padded on the second process
    empty = streaming.StreamSplit("validation", [], "parquet", "image", "label")
    with pytest.raises(UserError) as error:
        loaders(data, 1, train=False, split=empty)
    assert "--per_device_eval_batch_size" in one_line(error)


def test_streaming_loaders_from_the_flags(tmp_path):
    write_tar_shards(tmp_path, [6, 6])
    write_tar_shards(tmp_path, [3], split="validation", first_id=100)
    args = stream_args(tmp_path, shuffle_buffer_size=3, dataloader_num_workers=0)
    data = open_streaming_dataset(args, seed=0)
    train, evaluation = streaming.streaming_loaders(data, none_pipeline(), none_pipeline(False), args, 0, 2, 2, 1, 2)
    assert train.state_dict()["shuffle_buffer_size"] == 3 and (len(train), len(evaluation)) == (3, 1)
    assert [i for b in evaluation for i, ok in zip(ids_of(b), b["valid"].tolist()) if ok] == [102]


def test_config_name_refused_for_shard_folders(tmp_path):
    write_parquet_shards(tmp_path, [2, 2])
    with pytest.raises(UserError) as error:
        open_streaming_dataset(stream_args(tmp_path, dataset_config_name="x"), seed=0)
    assert "--dataset_config_name 'x'" in one_line(error)


@pytest.mark.parametrize("flag", [{"shuffle_buffer_size": 10}])
def test_streaming_flags_without_streaming_are_refused(tmp_path, flag):
    with pytest.raises(UserError) as error:
        DataArguments(dataset_name=str(tmp_path), **flag)
    assert f"--{next(iter(flag))} applies to --streaming" in one_line(error)


def test_a_whole_dataset_loader_refuses_streaming_arguments(tmp_path):
    """A command that loads datasets whole never loads a stream's shards whole in its place."""
    write_parquet_shards(tmp_path, [2, 2])
    with pytest.raises(UserError) as error:
        load_image_dataset(stream_args(tmp_path), seed=0)
    assert "--streaming" in one_line(error)


def test_a_validation_split_naming_other_classes_is_refused(tmp_path):
    """Label ids of a ClassLabel mean its names: a held-out split that names other classes than training would be
    scored against the wrong ones (or ids past the model's classes)."""
    from datasets import ClassLabel, Dataset, Features, Image

    write_parquet_shards(tmp_path, [4])  # classes c0, c1, c2
    features = Features({"image": Image(), "label": ClassLabel(names=["c0", "c1", "c2", "c3"])})
    held_out = {"image": [{"bytes": id_png(i), "path": None} for i in range(2)], "label": [0, 3]}
    Dataset.from_dict(held_out, features=features).to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    with pytest.raises(UserError) as error:
        open_streaming_dataset(stream_args(tmp_path), seed=0)
    assert "'validation' shards' label column 'label'" in one_line(error) and "['c3'] are not training" in one_line(
        error
    )

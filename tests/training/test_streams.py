"""Streaming training through train.py (`--streaming`): parquet and webdataset shards of uneven sizes on one process,
two DDP processes over gloo and DeepSpeed ZeRO-2; every example read once per epoch across processes and every
evaluation counting each held-out example once (counted from what each process read, recorded by the tests); a
SIGKILL mid-epoch, resumed twice in a row, ends bit-identical to the uninterrupted run with the same batches. Each
format runs under each launcher.

The shards' images carry their example id in a pixel (tests/streams.py), so the recorder reads back which examples
each process consumed. The same ids and labels are written as parquet and as webdataset shards: the two formats must
train the same model.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_line
from factories import tiny_overrides
from launching import FP32, assert_really, assert_same_weights, launch, results, train_in_this_process, train_losses
from stream_recorder import install, records
from streams import NUM_CLASSES, write_shards

TRAIN_SIZES = [7, 2, 6, 6]  # 21 examples in 4 uneven shards: ranges start and end inside shards
TRAIN_IDS = range(21)
EVAL_IDS = range(500, 505)  # 5: an odd count, so evaluation pads its last batches
SMALL = tiny_overrides(image_size=8)  # the shards' 8-px images, not resized: the id pixel stays exact
RECORDER = {"script": "tests/stream_recorder.py", "check": False}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """The same examples as parquet training shards (webdataset held-out split) and as webdataset training shards
    (parquet held-out split): every reader is used by training and by evaluation."""
    root = tmp_path_factory.mktemp("shards")
    other = {"parquet": "webdataset", "webdataset": "parquet"}
    for kind in other:
        write_shards(kind, root / kind, TRAIN_SIZES)
        write_shards(other[kind], root / kind, [len(EVAL_IDS)], split="validation", first_id=EVAL_IDS[0])
    return {kind: root / kind for kind in other}


def stream_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", SMALL,
        "--dataset_name", str(data), "--streaming", "--augmentation", "none", "--shuffle_buffer_size", "3",
        "--per_device_eval_batch_size", "2", "--learning_rate", "1e-3", "--num_train_epochs", "2",
        "--logging_steps", "1", "--save_total_limit", "10", "--seed", "3", "--output_dir", str(out), *extra,
    ]  # fmt: skip


# One process: batch 4, 2 micro-batches a step: 5 batches an epoch (20 of 21 examples), 3 steps (the last window
# cut short by the epoch's end), 6 in all; checkpoints at steps 2 (epoch 0, batch 4) and 4 (epoch 1, batch 2).
ONE = ("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "2")
ONE += ("--dataloader_num_workers", "0")
# Two processes: batch 2 each, 2 workers each: 5 batches an epoch per process, 10 steps; checkpoints every 3.
TWO = ("--per_device_train_batch_size", "2", "--checkpointing_steps", "3", "--dataloader_num_workers", "2")


def train_batches(read: dict[int, list[dict]]) -> dict[int, list[tuple]]:
    """rank -> (epoch, batch, ids) of every training batch it consumed, in order."""
    return {rank: [(r["epoch"], r["batch"], r["ids"]) for r in rows if r.get("train")] for rank, rows in read.items()}


def assert_each_example_once(read: dict[int, list[dict]], num_processes: int, batch_size: int) -> None:
    """Per epoch, every process took batches 0..4 of `batch_size` and no example twice across processes; every
    evaluation counted each held-out example exactly once."""
    assert sorted(read) == list(range(num_processes))
    batches = train_batches(read)
    for epoch in (0, 1):
        seen = []
        for rank in read:
            mine = [(b, ids) for e, b, ids in batches[rank] if e == epoch]
            assert [b for b, _ in mine] == list(range(5)), (rank, epoch, mine)
            assert all(len(ids) == batch_size for _, ids in mine)
            seen += [i for _, ids in mine for i in ids]
        assert len(seen) == len(set(seen)) == 20 and set(seen) <= set(TRAIN_IDS), (epoch, sorted(seen))
    evaluations = [r for r in read[0] if "evaluated" in r]
    assert len(evaluations) == 2  # one per epoch
    for evaluation in evaluations:
        assert evaluation["evaluated"] == len(EVAL_IDS)
        assert evaluation["labels"] == sorted(i % NUM_CLASSES for i in EVAL_IDS)
    real = Counter(
        i for rows in read.values() for r in rows if r.get("train") is False for i, v in zip(r["ids"], r["valid"]) if v
    )
    assert real == {i: len(evaluations) for i in EVAL_IDS}


def assert_resumed_exactly(interrupted: Path, reference: Path, read: dict, expected: dict) -> None:
    """Bit-identical weights, losses and results; the interrupted runs together consumed exactly the reference's
    batches, in order, none dropped or replayed."""
    assert_same_weights(interrupted, reference, atol=0)
    assert train_losses(interrupted) == train_losses(reference)
    metrics = [k for k in results(reference) if k.startswith("eval_") and k != "eval_split"]
    assert metrics and all(results(interrupted)[k] == results(reference)[k] for k in metrics)
    assert train_batches(read) == train_batches(expected)


def kill_and_resume_twice(config: str, argv, out: Path, read: Path, steps: tuple[int, int], launcher=()) -> list[str]:
    """Killed right after checkpoint `steps[0]`, resumed and killed after `steps[1]`, resumed to the end (every
    run recording what it read into `read`)."""
    resume = ("--resume_from_checkpoint", "latest")
    for step, extra in zip(steps, ((), resume)):
        env = {"VIT_ACCEL_TEST_RECORD": str(read), "VIT_ACCEL_TEST_FAULT": f"after_save:{step}"}
        killed = launch(config, argv(out, *extra), env=env, launcher_args=launcher, **RECORDER)
        assert killed.returncode != 0 and not (out / "all_results.json").exists(), killed.stderr[-3000:]
        state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["batches_in_epoch"] > 0  # stopped mid-epoch
        stream = json.loads((out / f"checkpoint-{step}" / "stream_state.json").read_text())
        assert (stream["epoch"], stream["batches_done"]) == (state["epoch"], state["batches_in_epoch"])
    return argv(out, *resume)


def test_one_process_parquet_and_webdataset_each_example_once_and_sigkill_resume_bit_exact(shards, tmp_path):
    for kind in ("parquet", "webdataset"):
        with pytest.MonkeyPatch.context() as patch:
            install(tmp_path / f"{kind}-read", patch.setattr)
            assert train_in_this_process(stream_args(shards[kind], tmp_path / kind, *ONE), threads=1) == 0
        assert_really(tmp_path / kind, "NO", 1)
        assert_each_example_once(records(tmp_path / f"{kind}-read"), 1, 4)
        log = [json.loads(line) for line in (tmp_path / kind / "log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in log if "loss" in r] == [0.4, 0.8, 1.0, 1.4, 1.8, 2.0]  # after batches 2, 4, 5
    # The same examples in either format train the same model.
    assert_same_weights(tmp_path / "webdataset", tmp_path / "parquet", atol=0)

    def argv(out, *extra):
        return stream_args(shards["parquet"], out, *ONE, *extra)

    interrupted, read = tmp_path / "interrupted", tmp_path / "interrupted-read"
    resumed = kill_and_resume_twice("cpu.yaml", argv, interrupted, read, (2, 4))
    with pytest.MonkeyPatch.context() as patch:
        install(read, patch.setattr)
        assert train_in_this_process(resumed, threads=1) == 0
    assert_resumed_exactly(interrupted, tmp_path / "parquet", records(read), records(tmp_path / "parquet-read"))


def run_two_processes(config: str, data: Path, out: Path, extensions_dir: Path) -> dict[int, list[dict]]:
    """A two-process streaming run under `config` (DDP or ZeRO-2), checked to have really run so and to have read
    each example once per epoch; what each process read."""
    read = out.with_name(out.name + "-read")
    env = {"VIT_ACCEL_TEST_RECORD": str(read), "TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    zero2 = config.startswith("deepspeed")
    launch(config, stream_args(data, out, *TWO), env=env, launcher_args=FP32 if zero2 else (),
           **{**RECORDER, "check": True})  # fmt: skip
    assert_really(out, "DEEPSPEED" if zero2 else "MULTI_CPU", 2)
    assert_each_example_once(records(read), 2, 2)
    return records(read)


def assert_zero2_trains_as_ddp(zero2: Path, zero2_read: dict, ddp: Path, ddp_read: dict) -> None:
    """The same batches, so the same training, within 1e-5 (ZeRO-2 sums and steps its shards in another order)."""
    assert train_batches(zero2_read) == train_batches(ddp_read)
    assert train_losses(zero2) == pytest.approx(train_losses(ddp), abs=1e-5)
    assert_same_weights(zero2, ddp, atol=1e-5)


def test_two_processes_ddp_and_zero2_each_example_once_and_sigkill_resume_bit_exact(
    shards, extensions_dir, tmp_path, run_train
):
    def argv(data, out, *extra):
        return stream_args(data, out, *TWO, *extra)

    reference = tmp_path / "ddp"
    read = run_two_processes("multi_cpu.yaml", shards["webdataset"], reference, extensions_dir)

    interrupted, interrupted_read = tmp_path / "interrupted", tmp_path / "interrupted-read"
    resumed = kill_and_resume_twice(
        "multi_cpu.yaml", lambda out, *extra: argv(shards["webdataset"], out, *extra), interrupted,
        interrupted_read, (3, 6),
    )  # fmt: skip
    env = {"VIT_ACCEL_TEST_RECORD": str(interrupted_read)}
    launch("multi_cpu.yaml", resumed, env=env, **{**RECORDER, "check": True})
    assert_resumed_exactly(interrupted, reference, records(interrupted_read), read)
    # Resumed on one process, a checkpoint that stopped mid-epoch cannot keep its plan: one line says what changed.
    other = tmp_path / "one-process"
    shutil.copytree(interrupted / "checkpoint-3", other / "checkpoint-3")
    code, stderr = run_train(argv(shards["webdataset"], other, "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "mid-epoch", "world_size 2 -> 1")

    # DeepSpeed ZeRO-2 on the parquet copy of the same examples: the same batches, so the same training as DDP.
    zero2 = tmp_path / "zero2"
    zero2_read = run_two_processes("deepspeed_zero2.yaml", shards["parquet"], zero2, extensions_dir)
    assert_zero2_trains_as_ddp(zero2, zero2_read, reference, read)


def test_two_processes_ddp_on_parquet_and_zero2_on_webdataset_each_example_once(shards, extensions_dir, tmp_path):
    """The other format under each two-process launcher (the test above runs DDP on webdataset and ZeRO-2 on
    parquet): each example once per epoch, the same batches in both, and the same training."""
    ddp, zero2 = tmp_path / "ddp-parquet", tmp_path / "zero2-webdataset"
    ddp_read = run_two_processes("multi_cpu.yaml", shards["parquet"], ddp, extensions_dir)
    zero2_read = run_two_processes("deepspeed_zero2.yaml", shards["webdataset"], zero2, extensions_dir)
    assert_zero2_trains_as_ddp(zero2, zero2_read, ddp, ddp_read)

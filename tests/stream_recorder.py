"""What each process of a streaming train.py run read, recorded by the tests (never part of the product).

`install(directory)` makes every batch a `StreamingDataLoader` hands to the loop, and every evaluation's count,
append a line to `directory/rank<RANK>.jsonl`: {"train", "epoch", "batch", "ids"[, "valid"]} for a batch (ids read
back from the pixels of `tests/streams.py` shards), {"evaluated", "labels"} for an evaluation as the metrics counted
it. Lines are written as the loop takes each batch, so a process killed mid-run leaves what it consumed.

As a script it runs `tests/fault_injection.py` (so train.py) with the recorder installed:

    accelerate launch ... tests/stream_recorder.py <train.py arguments>
    with VIT_ACCEL_TEST_RECORD=<directory> [VIT_ACCEL_TEST_FAULT=<point>:<step>]
"""

from __future__ import annotations

import json
import os
import runpy
from collections.abc import Callable
from pathlib import Path

from streams import ids_of


def install(directory: str | Path, set_attribute: Callable = setattr) -> None:
    from vit_accel import eval_loop
    from vit_accel.data.streaming import StreamingDataLoader

    path = Path(directory) / f"rank{os.environ.get('RANK', '0')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(record: dict) -> None:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    batches, metrics = StreamingDataLoader.__iter__, eval_loop.Evaluation.metrics

    def recorded_batches(self):
        for batch in batches(self):
            record = {"train": self.dataset.train, "epoch": self.epoch, "batch": self.batches_done - 1}
            record["ids"] = ids_of(batch)
            if "valid" in batch:
                record["valid"] = batch["valid"].tolist()
            write(record)
            yield batch

    def recorded_metrics(self, prefix: str = "eval_"):
        write({"evaluated": self.num_examples, "labels": sorted(self.labels.tolist())})
        return metrics(self, prefix)

    set_attribute(StreamingDataLoader, "__iter__", recorded_batches)
    set_attribute(eval_loop.Evaluation, "metrics", recorded_metrics)


def records(directory: Path) -> dict[int, list[dict]]:
    """rank -> its records, in the order written."""
    return {
        int(path.stem.removeprefix("rank")): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(Path(directory).glob("rank*.jsonl"))
    }


if __name__ == "__main__":
    install(os.environ["VIT_ACCEL_TEST_RECORD"])
    os.environ.setdefault("VIT_ACCEL_TEST_FAULT", "none:0")
    runpy.run_path(str(Path(__file__).with_name("fault_injection.py")), run_name="__main__")

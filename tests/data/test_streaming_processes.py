"""Two real processes (gloo), two DataLoader workers each, reading one stream: every batch is matched by an
all-reduce on the other process (a process with one batch more would hang, here: time out), and the examples of an
epoch, gathered, are each seen once."""

import datetime
import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from streams import ids_of, none_pipeline, stream_args, write_shards

from vit_accel.data.streaming import make_streaming_dataloader, open_streaming_dataset


def _rank_main(rank: int, world_size: int, root: str, store: str, out: str, kind: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    data = open_streaming_dataset(stream_args(root), seed=0)
    loader = make_streaming_dataloader(
        data.train, none_pipeline(), data.label_ids, 0, 2, rank=rank, world_size=world_size, num_workers=2
    )
    seen = []
    for batch in loader:
        step = torch.ones(1)
        dist.all_reduce(step)  # as a DDP gradient all-reduce would: both processes must take every step
        assert step.item() == world_size
        seen += ids_of(batch)
    everyone = [None] * world_size
    dist.all_gather_object(everyone, seen)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(everyone, handle)
    dist.destroy_process_group()


def test_two_processes_read_each_example_once_and_step_together(tmp_path):
    for kind in ("parquet", "webdataset"):
        root = tmp_path / kind
        write_shards(kind, root, [7, 2, 6])  # 3 uneven shards for 2 processes x 2 workers
        write_shards(kind, root, [2], split="validation", first_id=500)
        out = tmp_path / f"{kind}.json"
        # Forked, not spawned: a spawned child re-imports torch and datasets (tens of seconds on a busy machine).
        context = mp.get_context("fork")
        args = (2, str(root), str(tmp_path / f"{kind}.store"), str(out), kind)
        processes = [context.Process(target=_rank_main, args=(rank, *args)) for rank in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        assert [process.exitcode for process in processes] == [0, 0]
        per_rank = json.loads(out.read_text())
        seen = [i for ids in per_rank for i in ids]
        assert len(seen) == len(set(seen)) == 12  # 15 // (2 processes x 2) full batches of 2 each, x 2 processes
        assert set(seen) <= set(range(15))
        assert len(per_rank[0]) == len(per_rank[1])

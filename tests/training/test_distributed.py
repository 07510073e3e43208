import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from vit_accel.errors import UserError
from vit_accel.training.distributed import BatchLayout, micro_batches_to_skip, parameter_checksum, relayout


def examples_per_step(layout: BatchLayout, order: list[int]) -> list[set[int]]:
    """The examples each optimizer step trains on, all processes together, as accelerate shards `order`."""
    per_process = [
        list(BatchSamplerShard(BatchSampler(order, layout.per_device_batch, drop_last=False), layout.num_processes, i))
        for i in range(layout.num_processes)
    ]
    steps = len(per_process[0]) // layout.accumulation
    return [
        {
            index
            for batches in per_process
            for batch in batches[step * layout.accumulation : (step + 1) * layout.accumulation]
            for index in batch
        }
        for step in range(steps)
    ]


def test_every_split_of_a_global_batch_trains_each_step_on_the_same_examples():
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0)).tolist()
    reference = examples_per_step(BatchLayout(1, 16, 1), order)
    assert reference == [set(order[s * 16 : (s + 1) * 16]) for s in range(6)]
    for layout in (BatchLayout(2, 8, 1), BatchLayout(1, 8, 2), BatchLayout(4, 2, 2), BatchLayout(2, 4, 2)):
        assert examples_per_step(layout, order) == reference, layout


def test_relayout_keeps_the_global_batch_and_never_grows_the_per_device_batch():
    # Fewer processes: the per-device batch is kept, accumulation makes up the difference.
    assert relayout(BatchLayout(2, 8, 1), 1, 8) == BatchLayout(1, 8, 2)
    # More processes: accumulation cannot go below 1, so the per-device batch shrinks.
    assert relayout(BatchLayout(1, 16, 1), 2, 16) == BatchLayout(2, 8, 1)
    assert relayout(BatchLayout(2, 8, 2), 4, 8) == BatchLayout(4, 8, 1)
    assert relayout(BatchLayout(1, 16, 1), 1, 4) == BatchLayout(1, 4, 4)
    for saved in (BatchLayout(2, 8, 1), BatchLayout(3, 6, 2), BatchLayout(8, 32, 4)):
        for processes in (1, 2, 4, 8):
            if saved.global_batch % processes == 0:
                new = relayout(saved, processes, saved.per_device_batch)
                assert new.global_batch == saved.global_batch
                assert new.per_device_batch <= saved.per_device_batch and new.num_processes == processes


def test_relayout_refuses_a_process_count_that_does_not_divide_the_global_batch():
    with pytest.raises(UserError, match=r"global batch \(2 process\(es\) x 8 .* over 3 process\(es\)"):
        relayout(BatchLayout(2, 8, 1), 3, 8)


def test_micro_batches_to_skip_reach_the_same_example():
    # 3 micro-batches of 8 on each of 2 processes = 48 examples = 6 micro-batches of 8 on one process.
    assert micro_batches_to_skip(BatchLayout(2, 8, 1), 3, BatchLayout(1, 8, 2)) == 6
    assert micro_batches_to_skip(BatchLayout(1, 16, 1), 3, BatchLayout(2, 8, 1)) == 3
    with pytest.raises(UserError, match="example 24 of its epoch"):
        micro_batches_to_skip(BatchLayout(1, 8, 1), 3, BatchLayout(1, 16, 1))


def test_parameter_checksum_sums_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    expected = sum(p.detach().sum() for p in model.parameters())
    torch.testing.assert_close(parameter_checksum(model), expected.reshape(1))

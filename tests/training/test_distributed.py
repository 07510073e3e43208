import json

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from launching import LEAVES_GROUP, TWO_PROCESSES, launch, results, tiny_args
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


def test_a_two_process_run_that_returns_early_leaves_its_process_group(ddp_run, digits):
    # A finished run started again returns its results before the final save, which would end the group otherwise.
    argv = ["train.py", *tiny_args(digits, ddp_run, *TWO_PROCESSES, "--resume_from_checkpoint", "latest")]
    again = launch("multi_cpu.yaml", argv, script=LEAVES_GROUP)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == results(ddp_run)


def test_parameter_checksum_sums_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    expected = sum(p.detach().sum() for p in model.parameters())
    torch.testing.assert_close(parameter_checksum(model), expected.reshape(1))


# The two places train.py relies on library internals, each checked here in a fresh process with one FSDP process
# over gloo, so that a torch or accelerate release that changes them fails this test by name (no public API does
# either job: accelerate applies its FSDP plugin to accelerator devices only, and fully_shard exposes no way back
# to the module's own class, which save_pretrained needs to copy the right remote code).
FSDP_INTERNALS = """
import torch
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule, fully_shard

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.training.distributed import create_accelerator
from vit_accel.training.finish import _unsharded_class

accelerator = create_accelerator()
# 1. PartialState presented as MULTI_GPU before the Accelerator is built: accelerate then applies its FSDP plugin.
assert accelerator.distributed_type == DistributedType.FSDP, accelerator.distributed_type
assert accelerator.state.fsdp_plugin is not None and accelerator.state.fsdp_plugin.fsdp_version == 2
# 2. fully_shard replaces the class by a generated subclass of FSDPModule and of the model's own class.
model = ViTAccelForImageClassification(ViTAccelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=64, image_size=16, patch_size=8, num_labels=3))
fully_shard(model)
generated = type(model)
assert issubclass(generated, FSDPModule) and issubclass(generated, ViTAccelForImageClassification), generated.__mro__
assert generated.__module__ != "vit_accel.modeling_vit_accel", generated.__module__
with _unsharded_class(model):
    assert type(model) is ViTAccelForImageClassification
assert type(model) is generated
print("internals as relied on")
"""


def test_the_fsdp_internals_train_py_relies_on_still_hold(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from factories import ROOT

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "LOCAL_RANK": "0", "RANK": "0",
        "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "ACCELERATE_MIXED_PRECISION": "no", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", FSDP_INTERNALS], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0 and "internals as relied on" in result.stdout, result.stderr[-4000:]

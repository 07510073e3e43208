"""What the README says of the methods under sharded configs: FSDP and ZeRO-3 refuse LoRA, the EMA and freezing."""

from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from vit_accel.errors import UserError
from vit_accel.training.methods import check_accelerator

FLAGS = {"ema_decay": 0.999, "peft": "lora", "freeze": "backbone", "freeze_layers": 2}


def _args(**given):
    return SimpleNamespace(**{name: given.get(name) for name in FLAGS})


def _accelerator(distributed_type, zero_stage=None):
    plugin = SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
    return SimpleNamespace(distributed_type=distributed_type, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize(
    ("accelerator", "mode"),
    [(_accelerator(DistributedType.FSDP), "FSDP"), (_accelerator(DistributedType.DEEPSPEED, 3), "DeepSpeed ZeRO-3")],
)
@pytest.mark.parametrize("flag", list(FLAGS))
def test_sharded_configs_refuse_each_method_that_needs_whole_weights(accelerator, mode, flag):
    with pytest.raises(UserError, match=f"--{flag}: not supported under {mode}"):
        check_accelerator(accelerator, _args(**{flag: FLAGS[flag]}))

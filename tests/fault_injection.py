"""train.py with a SIGKILL at a chosen point of checkpoint saving, for the crash tests (never part of the product).

    accelerate launch ... tests/fault_injection.py <train.py arguments>
    with VIT_ACCEL_TEST_FAULT=<point>:<step>[:<signal>] (and VIT_ACCEL_TEST_SCRIPT=pretrain.py for that script)

`during_save:N`: killed once checkpoint-N's files are written but before its trainer_state.json marks it complete.
`after_save:N`: killed right after checkpoint-N is complete.
The signal is SIGKILL unless named (SIGTERM, SIGINT, ...).
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import vit_accel.training.checkpointing as checkpointing

ROOT = Path(__file__).resolve().parents[1]
point, step, *name = os.environ["VIT_ACCEL_TEST_FAULT"].split(":")


def kill() -> None:
    os.kill(os.getpid(), getattr(signal, name[0] if name else "SIGKILL"))


write_json, save_checkpoint = checkpointing._write_json, checkpointing.save_checkpoint


def faulty_write_json(path: Path, text: str) -> None:
    if (
        point == "during_save"
        and path.name == checkpointing.STATE_FILE
        and path.parent.name == f"checkpoint-{step}.tmp"
    ):
        kill()
    write_json(path, text)


def faulty_save_checkpoint(accelerator, output_dir, state, model_config, *args, **kwargs):
    saved = save_checkpoint(accelerator, output_dir, state, model_config, *args, **kwargs)
    if point == "after_save" and state.completed_steps == int(step):
        kill()
    return saved


checkpointing._write_json = faulty_write_json
checkpointing.save_checkpoint = faulty_save_checkpoint
script = ROOT / os.environ.get("VIT_ACCEL_TEST_SCRIPT", "train.py")
sys.argv = [str(script), *sys.argv[1:]]
runpy.run_path(str(script), run_name="__main__")

"""Checks made before the dataset is read and the model built (training/preflight.py)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from launching import ROOT, launch_command, tiny_args

from vit_accel.errors import UserError
from vit_accel.training.preflight import MULTI_CPU_COMMAND, check_launcher_processes

# What accelerate's single-process launcher exports for `accelerate launch --cpu --num_processes 2` (seen in its
# environment): the rendezvous address because more than one process was asked for, and no WORLD_SIZE.
SIMPLE_LAUNCHER_ASKED_FOR_2 = {
    "ACCELERATE_USE_CPU": "True",
    "ACCELERATE_MIXED_PRECISION": "no",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}
ONE_PROCESS = SimpleNamespace(num_processes=1)


def test_one_process_started_for_several_is_refused_naming_the_working_command():
    with pytest.raises(UserError, match="started only this one") as caught:
        check_launcher_processes(ONE_PROCESS, SIMPLE_LAUNCHER_ASKED_FOR_2)
    assert MULTI_CPU_COMMAND in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {k: v for k, v in SIMPLE_LAUNCHER_ASKED_FOR_2.items() if not k.startswith("MASTER")},  # cpu.yaml: 1 asked
        {**SIMPLE_LAUNCHER_ASKED_FOR_2, "WORLD_SIZE": "1"},  # torchrun / multi-process launcher with 1
        {**SIMPLE_LAUNCHER_ASKED_FOR_2, "PMI_SIZE": "1"},  # mpirun
        {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"},  # python train.py under a cluster's environment
    ],
)
def test_a_real_single_process_launch_passes(env):
    check_launcher_processes(ONE_PROCESS, env)


def test_accelerate_launch_cpu_num_processes_2_stops_before_training(digits, tmp_path):
    command, env = launch_command(
        "cpu.yaml", tiny_args(digits, tmp_path / "out"), launcher_args=("--cpu", "--num_processes", "2")
    )
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and MULTI_CPU_COMMAND in lines[0], result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "launcher_args", "hidden"),
    [
        ("cpu.yaml", ("-q",), True),  # accelerate's single-process launcher: -q hides its traceback
        # DeepSpeed on one machine goes through torch.distributed.run, which -q does not reach.
        ("deepspeed_zero2.yaml", ("-q", "--num_processes", "1", "--mixed_precision", "no"), False),
    ],
)
def test_accelerate_launch_quiet_hides_the_launcher_traceback_where_the_readme_says(
    digits, tmp_path, config, launcher_args, hidden
):
    args = tiny_args(digits, tmp_path / "out", "--learning_rate", "-1")
    command, env = launch_command(config, args, launcher_args=launcher_args)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert any(line.startswith("train.py: error: --learning_rate") for line in result.stderr.splitlines())
    assert ("Traceback" not in result.stderr) == hidden, result.stderr[-3000:]


def test_an_unwritable_hugging_face_cache_is_named_before_training_and_evaluating(digits, trained_run, tmp_path):
    # Fresh processes: `evaluate` reads these variables when it is imported.
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, so nothing can be created under it (whoever runs the test, root included)")
    cache = str(blocker / "hf")
    out = tmp_path / "run"
    commands = {
        "HF_HOME": [sys.executable, "train.py", *tiny_args(digits, out)],
        "HF_MODULES_CACHE": [sys.executable, "-m", "vit_accel.cli", "evaluate", "--model", str(trained_run),
                             "--dataset_name", str(digits), "--max_eval_samples", "16",
                             "--output_dir", str(tmp_path / "eval")],
    }  # fmt: skip
    for variable, command in commands.items():
        env = {**os.environ, "OMP_NUM_THREADS": "1", variable: cache}
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (variable, result.stderr[-3000:])
        assert f"{variable}={cache}: the Hugging Face cache at {cache} cannot be written" in lines[-1], lines[-1]
        assert "Traceback" not in result.stderr and "step" not in result.stderr.lower(), result.stderr[-3000:]
    assert not (out / "log.jsonl").exists() and not (tmp_path / "eval" / "eval_results.json").exists()

"""train.py in real processes: launches without a process group, several processes, signals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bad_input_helpers import tiny
from factories import ROOT

# --- processes and signals (real processes) ---------------------------------------------------------------------


def test_processes_without_a_process_group_are_refused(world, tmp_path):
    # multi_cpu.yaml without ACCELERATE_USE_CPU: accelerate starts two processes that each train alone.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_cpu.yaml",
        "--num_cpu_threads_per_process", "1", "train.py", *tiny(world / "digits", tmp_path / "out"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    result = subprocess.run(
        command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    lines = {line for line in result.stderr.splitlines() if line.startswith("train.py: error:")}
    assert len(lines) == 1, result.stderr[-3000:]
    assert "started 2 processes, but they run without a process group" in lines.pop()
    assert not (tmp_path / "out").exists()


def test_a_data_mistake_with_two_processes_is_one_line(world, tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_cpu.yaml",
        "--num_cpu_threads_per_process", "1", "train.py", *tiny(world / "one_class", tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "single class" in lines[0], result.stderr[-3000:]
    assert "[rank1]: Traceback" not in result.stderr and "Connection closed by peer" not in result.stderr


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_a_save_leaves_no_checkpoint_that_looks_whole(signal_name, world, tmp_path):
    from vit_accel.training.checkpointing import list_checkpoints, verify_checkpoint

    out = tmp_path / "out"
    command = [sys.executable, "tests/fault_injection.py", *tiny(world / "digits", out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIT_ACCEL_TEST_FAULT": f"during_save:4:{signal_name}"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert verify_checkpoint(out / "checkpoint-2").completed_steps == 2
    assert (out / "checkpoint-4.tmp").is_dir() and not (out / "all_results.json").exists()
    # Ctrl-C or a scheduler's SIGTERM: where the run stands and how to resume it, not a traceback or silence.
    prefix = "SIGTERM: " if signal_name == "SIGTERM" else ""
    assert f"train.py: {prefix}interrupted at step 4; the last complete checkpoint is checkpoint-2" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.returncode == {"SIGINT": 130, "SIGTERM": 143}[signal_name]

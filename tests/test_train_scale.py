"""train.py beyond one process on one machine, run for real on the CPU over gloo: two "nodes" on one machine (through
slurm/train.sbatch and through two `accelerate launch` commands), FSDP2, DeepSpeed ZeRO-3 with CPU offload, and
resuming a run on another number of processes.

Every run is checked for the distributed type it really got (train.py writes it into all_results.json), not the one
its config file asked for. The GPU config files default to bf16; these runs pass `--mixed_precision no`, so that
they can be compared with the fp32 DDP reference, except the last test, which runs them as shipped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launching import (
    FP32,
    ONE_PROCESS,
    ROOT,
    TWO_PROCESSES,
    assert_really,
    assert_same_weights,
    launch,
    launch_command,
    results,
    saved_model_top1,
    tiny_args,
    train_losses,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_script_starts_one_launch_per_node_that_train_as_one_job(digits, ddp_run, tmp_path):
    # SLURM itself stands in here: `scontrol` names the nodes, `srun` starts the script's task once per node with
    # that node's SLURM_NODEID, both on this machine. Everything else is the script as users submit it.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\necho 127.0.0.1\n")
    (fake / "srun").write_text(
        "#!/bin/bash\n"
        'while [[ "$1" == --* ]]; do shift; done\n'
        "pids=()\n"
        "for ((node = 0; node < SLURM_NNODES; node++)); do\n"
        '  SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "$NODE_LOGS/node$node.log" 2>&1 &\n'
        "  pids+=($!)\n"
        "done\n"
        "status=0\n"
        'for pid in "${pids[@]}"; do wait "$pid" || status=1; done\n'
        "exit $status\n"
    )
    for tool in ("scontrol", "srun"):
        (fake / tool).chmod(0o755)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PATH": f"{fake}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "NODE_LOGS": str(tmp_path),
        "SLURM_JOB_NODELIST": "node[0-1]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "PROCESSES_PER_NODE": "1",
        "MAIN_PORT": str(free_port()),
        "CONFIG": "accelerate_configs/multi_cpu.yaml",
        "ACCELERATE_USE_CPU": "true",  # DDP over gloo on CPU nodes
        "OMP_NUM_THREADS": "1",
    }
    command = ["bash", str(ROOT / "slurm" / "train.sbatch"), *tiny_args(digits, out, *TWO_PROCESSES)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(log.read_text()[-3000:] for log in sorted(tmp_path.glob("node*.log")))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + logs
    assert "2 nodes x 1 processes, main 127.0.0.1" in done.stdout
    # One job of two processes, one per node: both ended with the same weights, those of the one-machine run.
    assert_really(out, "MULTI_CPU", 2)
    assert results(out)["replica_checksums"] == results(ddp_run)["replica_checksums"]
    assert_same_weights(out, ddp_run, atol=1e-6)
    # Each node wrote its own part of the checkpoint into the shared directory.
    assert {p.name for p in (out / "checkpoint-6").glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }


@pytest.fixture(scope="module")
def zero2_two_nodes_run(digits, extensions_dir, tmp_path_factory) -> Path:
    """DeepSpeed ZeRO-2 from two `accelerate launch` commands, one per "node", one process each."""
    out = tmp_path_factory.mktemp("zero2-two-nodes") / "run"
    port = str(free_port())
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    nodes = []
    for rank in (0, 1):
        node = (*FP32, "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank))
        node += ("--main_process_ip", "127.0.0.1", "--main_process_port", port)
        command, full_env = launch_command("deepspeed_zero2.yaml", tiny_args(digits, out, *TWO_PROCESSES), env, node)
        log = open(out.parent / f"node{rank}.log", "w")  # noqa: SIM115 (closed below, after the process ends)
        nodes.append((subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in nodes:
        try:
            code = process.wait(timeout=900)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
        assert code == 0, Path(log.name).read_text()[-5000:]
    return out


def test_deepspeed_zero2_on_two_nodes(digits, zero2_two_nodes_run, ddp_run, tmp_path):
    out = zero2_two_nodes_run
    final = assert_really(out, "DEEPSPEED", 2)
    torch.testing.assert_close(train_losses(out), train_losses(ddp_run), atol=1e-5, rtol=1e-5)
    assert_same_weights(out, ddp_run, atol=1e-5)
    assert saved_model_top1(out, digits, tmp_path) == pytest.approx(final["eval_top1"], abs=1e-9)


@pytest.fixture(scope="module")
def fsdp_run(digits, tmp_path_factory) -> Path:
    """FSDP2 (accelerate_configs/fsdp.yaml) on two processes, per-device batch 8."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    launch("fsdp.yaml", tiny_args(digits, out, *TWO_PROCESSES), launcher_args=FP32)
    assert_really(out, "FSDP", 2)
    return out


def test_fsdp_two_processes_train_like_ddp_and_save_a_model_that_reloads(digits, ddp_run, fsdp_run, tmp_path):
    final = results(fsdp_run)
    torch.testing.assert_close(train_losses(fsdp_run), train_losses(ddp_run), atol=1e-5, rtol=1e-5)
    assert_same_weights(fsdp_run, ddp_run, atol=1e-5)
    # Checkpoints hold the sharded state: one torch.distributed.checkpoint file per process, model and optimizer.
    checkpoint = fsdp_run / "checkpoint-3"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # The final model was gathered whole, with our modeling code (not torch's FSDP wrapper class) as its remote code.
    assert (fsdp_run / "modeling_vit_accel.py").is_file() and not list(fsdp_run.glob("_fsdp*.py"))
    auto_map = json.loads((fsdp_run / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_vit_accel.ViTAccelForImageClassification"
    assert saved_model_top1(fsdp_run, digits, tmp_path) == pytest.approx(final["eval_top1"], abs=1e-9)


def stopped_after(run: Path, step: int, where: Path) -> Path:
    """A copy of `run` as it stood when stopped after checkpoint-`step`: later checkpoints and final files gone."""
    copy = where / f"{run.parent.name}-stopped-at-{step}"
    shutil.copytree(run, copy)
    for path in copy.iterdir():
        if path.name.startswith("checkpoint-") and int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
        elif path.is_file() and path.name not in ("log.jsonl",):
            path.unlink()
    return copy


def test_fsdp_resumes_exactly_from_its_sharded_checkpoint(digits, fsdp_run, tmp_path):
    resumed = stopped_after(fsdp_run, 3, tmp_path)
    launch(
        "fsdp.yaml",
        tiny_args(digits, resumed, *TWO_PROCESSES, "--resume_from_checkpoint", "latest"),
        launcher_args=FP32,
    )
    assert_really(resumed, "FSDP", 2)
    assert_same_weights(resumed, fsdp_run, atol=0)
    assert train_losses(resumed) == train_losses(fsdp_run)


def test_deepspeed_zero3_with_cpu_offload_two_processes(digits, ddp_run, extensions_dir, tmp_path):
    out = tmp_path / "run"
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    launch("deepspeed_zero3_offload.yaml", tiny_args(digits, out, *TWO_PROCESSES), env=env, launcher_args=FP32)
    final = assert_really(out, "DEEPSPEED", 2)
    # DeepSpeed ran with parameters and optimizer states offloaded (the config it records in its checkpoint), which
    # makes accelerate hand it DeepSpeedCPUAdam, built into the extensions cache.
    states = torch.load(
        out / "checkpoint-6" / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=True
    )
    zero = states["ds_config"]["zero_optimization"]
    assert (zero["stage"], zero["offload_optimizer"]["device"], zero["offload_param"]["device"]) == (3, "cpu", "cpu")
    assert (extensions_dir / "cpu_adam").is_dir()
    torch.testing.assert_close(train_losses(out), train_losses(ddp_run), atol=1e-4, rtol=1e-4)
    assert_same_weights(out, ddp_run, atol=1e-4)
    assert saved_model_top1(out, digits, tmp_path) == pytest.approx(final["eval_top1"], abs=1e-9)


# Resuming on another number of processes. The resumed runs pass the original flags: train.py keeps the global batch.


def resume(config: str, run: Path, digits: Path, layout: tuple[str, ...], *launcher_args: str, check: bool = True):
    return launch(
        config,
        tiny_args(digits, run, *layout, "--resume_from_checkpoint", "latest"),
        launcher_args=launcher_args,
        check=check,
    )


def layout_line(done) -> str:
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "keeps the global batch" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_ddp_run_of_two_processes_continues_on_one(digits, ddp_run, tmp_path):
    resumed = stopped_after(ddp_run, 3, tmp_path)
    done = resume("cpu.yaml", resumed, digits, TWO_PROCESSES)
    assert_really(resumed, "NO", 1)
    assert "1 process(es) x 8 per device x 2 accumulation step(s) = global batch 16" in layout_line(done)
    # The same examples at every step from step 4 on (the same losses) and the same final weights.
    torch.testing.assert_close(train_losses(resumed), train_losses(ddp_run), atol=1e-5, rtol=1e-5)
    assert_same_weights(resumed, ddp_run, atol=1e-5)


def test_run_of_one_process_continues_on_two_ddp_processes(digits, one_process_run, tmp_path):
    resumed = stopped_after(one_process_run, 3, tmp_path)
    done = resume("multi_cpu.yaml", resumed, digits, ONE_PROCESS)
    assert_really(resumed, "MULTI_CPU", 2)
    assert "2 process(es) x 8 per device x 1 accumulation step(s) = global batch 16" in layout_line(done)
    torch.testing.assert_close(train_losses(resumed), train_losses(one_process_run), atol=1e-5, rtol=1e-5)
    assert_same_weights(resumed, one_process_run, atol=1e-5)


def test_fsdp_run_of_two_processes_continues_on_one(digits, fsdp_run, tmp_path):
    resumed = stopped_after(fsdp_run, 3, tmp_path)
    done = resume("fsdp.yaml", resumed, digits, TWO_PROCESSES, *FP32, "--num_processes", "1")
    assert_really(resumed, "FSDP", 1)
    assert "1 process(es) x 8 per device x 2 accumulation step(s)" in layout_line(done)
    torch.testing.assert_close(train_losses(resumed), train_losses(fsdp_run), atol=1e-5, rtol=1e-5)
    assert_same_weights(resumed, fsdp_run, atol=1e-5)


def test_fsdp_offload_run_of_one_process_continues_on_two(digits, fsdp_run, tmp_path):
    # fsdp_offload.yaml on one process writes the same sharded format as fsdp.yaml, which continues it on two.
    one = tmp_path / "one"
    launch("fsdp_offload.yaml", tiny_args(digits, one, *ONE_PROCESS), launcher_args=(*FP32, "--num_processes", "1"))
    assert_really(one, "FSDP", 1)
    resumed = stopped_after(one, 3, tmp_path)
    done = resume("fsdp.yaml", resumed, digits, ONE_PROCESS, *FP32)
    assert_really(resumed, "FSDP", 2)
    assert "2 process(es) x 8 per device x 1 accumulation step(s)" in layout_line(done)
    torch.testing.assert_close(train_losses(resumed), train_losses(one), atol=1e-5, rtol=1e-5)
    assert_same_weights(resumed, one, atol=1e-5)
    assert_same_weights(resumed, fsdp_run, atol=1e-5)


def test_deepspeed_continues_on_another_process_count_through_a_universal_checkpoint(
    digits, zero2_two_nodes_run, ddp_run, extensions_dir, tmp_path
):
    resumed = stopped_after(zero2_two_nodes_run, 3, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in resumed.rglob("*")}
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    args = tiny_args(digits, resumed, *TWO_PROCESSES, "--resume_from_checkpoint", "latest")
    refused = launch("deepspeed_zero2.yaml", args, env=env, launcher_args=(*FP32, "--num_processes", "1"), check=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("train.py: error:")]
    assert refused.returncode != 0 and len(errors) == 1, refused.stderr[-3000:]
    assert "universal" in errors[0]
    assert {p: p.stat().st_mtime_ns for p in resumed.rglob("*")} == before
    # The line ends with the conversion command; once it has run, the resume goes through.
    conversion = errors[0].split("`")[-2]
    path = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # `python`: this one
    converted = subprocess.run(conversion, shell=True, env=path, capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-3000:]
    launch("deepspeed_zero2.yaml", args, env=env, launcher_args=(*FP32, "--num_processes", "1"))
    assert_really(resumed, "DEEPSPEED", 1)
    torch.testing.assert_close(train_losses(resumed), train_losses(ddp_run), atol=1e-5, rtol=1e-5)
    assert_same_weights(resumed, ddp_run, atol=1e-5)


@pytest.mark.parametrize(
    "config, layout",
    [("deepspeed_zero2.yaml", ONE_PROCESS), ("deepspeed_zero3.yaml", TWO_PROCESSES), ("fsdp.yaml", ONE_PROCESS)],
    ids=["zero2 one process", "zero3 two processes", "fsdp one process"],
)
def test_gpu_configs_compute_in_bf16_and_save_the_fp32_weights(config, layout, digits, extensions_dir, tmp_path):
    # The configs as shipped (bf16); ZeRO-3 on two processes, so that its masters are sharded. (ZeRO-3 in fp32 against
    # DDP: the CPU-offload test above.)
    out = tmp_path / "run"
    processes = "2" if layout == TWO_PROCESSES else "1"
    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    launch(config, tiny_args(digits, out, *layout), env=env, launcher_args=("--num_processes", processes))
    final = assert_really(out, "FSDP" if config == "fsdp.yaml" else "DEEPSPEED", int(processes))
    assert final["compute_dtype"] == "bfloat16", final  # the logits the loss saw

    # The saved model holds the fp32 weights the optimizer updated, not their bf16 rounding, and says so.
    from transformers import AutoModelForImageClassification

    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    saved = AutoModelForImageClassification.from_pretrained(out).state_dict()
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
    assert any(not torch.equal(v, v.bfloat16().float()) for v in saved.values() if v.is_floating_point())
    if config.startswith("deepspeed"):
        # Exactly the fp32 master weights of the last checkpoint, as DeepSpeed's own consolidation reads them.
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        masters = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoint-6"), tag="pytorch_model")
        assert masters.keys() <= saved.keys()
        assert all(torch.equal(saved[k], masters[k]) for k in masters)

"""The GPU run in one command: bench/train_step.py, bench/end_to_end.py, then bench/data_stream.py, in one report.

Sized for one run of under 8 minutes on a machine with one H100 or H200 GPU, torch 2.11, transformers 5.17 and
timm, but no `datasets`, `evaluate` nor `deepspeed`. The train-step benchmark needs none of those; it starts no new
row after `--train_step_budget` seconds (rows are ordered by importance) and is stopped at its share of `--total`,
keeping what it measured. The end-to-end benchmark runs train.py, which imports `datasets` and `evaluate`: without
them it writes a "skipped" line saying so. To include it, bring their wheels in `.whl/` (`pip download
--no-deps --only-binary=:all: --python-version 3.12 ... -d .whl datasets==5.2.0 evaluate==0.4.6 dill==0.4.1
multiprocess==0.70.19`, the versions tested here; the machine has pandas, pyarrow, xxhash, fsspec and requests, but
check its fsspec against datasets' bounds) and install them first, as in the command below.

On the GPU machine (one command; about 8 minutes):
    [ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 bench/run_gpu.py --out "$OUT"

Here (the same code paths on tiny shapes, on the CPU, in seconds; the test suite runs it):
    python bench/run_gpu.py --dry_run --out /tmp/gpu-dry-run

The data benchmark runs on the GPU machine's CPU: images/s per loader worker for 224-px JPEG training input, ours
against torchvision's ImageFolder pipeline, and the loader's ceiling with one worker per core against the GPU's
ViT-B/16 appetite. It needs `datasets` (the wheels above; without them it fails in its log, the other two tables
kept), and measures each fast decoder whose wheel is installed (`simplejpeg==1.9.0` and `turbojpeg==0.0.2` in `.whl/`
too, for the machine's Python). It gets the time the other two leave, at least 60 s.

Writes to --out: report.md (the three tables with the card, versions, date, commands), train_step.{md,json,log},
end_to_end.{md,json,log}, data_loading.{md,json,log}: 10 files.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
DATA_SECONDS = 90.0  # kept for the data benchmark: 128 JPEGs at two sizes, 3 epochs of 11 paths, about a minute
ROOT = BENCH.parent


def run_stage(name: str, command: list[str], out: Path, timeout: float) -> tuple[int | None, float]:
    """Run one benchmark in its own process group (its workers too), output to `<name>.log`; kill it at `timeout`."""
    print(f"[run_gpu] {name}: {' '.join(command)} (limit {timeout:.0f} s)", flush=True)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    seconds = time.perf_counter() - start
    print(f"[run_gpu] {name}: {'timed out' if code is None else f'exit {code}'} after {seconds:.0f} s", flush=True)
    if code not in (0, None):
        print((out / f"{name}.log").read_text()[-3000:], flush=True)
    return code, seconds


def section(out: Path, name: str, code: int | None, seconds: float) -> str:
    """A stage's table, or why there is none."""
    table = out / f"{name}.md"
    status = "finished" if code == 0 else ("stopped at its time limit" if code is None else f"failed (exit {code})")
    text = table.read_text() if table.exists() else "_no table written: see the log_\n"
    return f"### {name} ({status}, {seconds:.0f} s)\n\n{text}\n"


def versions() -> str:
    """The card (nvidia-smi) and the versions of the libraries the benchmarks use, without importing them."""
    from importlib import metadata

    found = []
    for name in ("torch", "transformers", "timm", "accelerate", "datasets", "evaluate"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    try:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        card = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or "no GPU found"
    except (OSError, subprocess.TimeoutExpired):
        card = "no nvidia-smi"
    return f"{card}; {', '.join(found)}"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "outputs" / "bench_gpu"))
    parser.add_argument(
        "--dry_run", "--dry-run", action="store_true", help="tiny shapes on the CPU: checks the whole run"
    )
    parser.add_argument("--total", type=float, default=450.0, help="seconds for the three benchmarks together")
    parser.add_argument(
        "--train_step_budget", "--train-step-budget", type=float, default=240.0, help="train_step starts no row after"
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    environment = versions()
    print(f"[run_gpu] {environment}", flush=True)

    device = ["--dry_run"] if args.dry_run else ["--device", "cuda"]
    train_step = [sys.executable, str(BENCH / "train_step.py"), *device]
    train_step += ["--out", str(out / "train_step.md"), "--json", str(out / "train_step.json")]
    if not args.dry_run:
        train_step += ["--time_budget", str(args.train_step_budget)]
    step_code, step_seconds = run_stage("train_step", train_step, out, timeout=args.total * 0.75)

    end_to_end = [sys.executable, str(BENCH / "end_to_end.py"), *device]
    end_to_end += ["--out", str(out / "end_to_end.md"), "--json", str(out / "end_to_end.json")]
    remaining = args.total - (time.perf_counter() - start)
    e2e_code, e2e_seconds = run_stage("end_to_end", end_to_end, out, timeout=max(remaining - DATA_SECONDS, 60.0))

    data = [sys.executable, str(BENCH / "data_stream.py")]
    data += ["--out", str(out / "data_loading.md"), "--json", str(out / "data_loading.json")]
    data += ["--num_images", "8", "--sizes", "300x240", "--batch_size", "2", "--repeats", "1"] if args.dry_run else []
    data += [] if args.dry_run else ["--num_images", "128", "--repeats", "2"]
    remaining = args.total - (time.perf_counter() - start)
    data_code, data_seconds = run_stage("data_loading", data, out, timeout=max(remaining, 60.0))

    report = (
        f"## GPU benchmarks{' (dry run: tiny shapes on the CPU)' if args.dry_run else ''}\n\n"
        f"{environment}; Python {sys.version.split()[0]}; {datetime.date.today().isoformat()}\n\n"
        f"Command: `python bench/run_gpu.py{' --dry_run' if args.dry_run else ''}`; "
        f"{time.perf_counter() - start:.0f} s in all.\n\n"
        + section(out, "train_step", step_code, step_seconds)
        + section(out, "end_to_end", e2e_code, e2e_seconds)
        + section(out, "data_loading", data_code, data_seconds)
    )
    (out / "report.md").write_text(report)
    print(report, flush=True)
    return out / "report.md"


if __name__ == "__main__":
    main()

"""Start-up and inference benchmark of the `vit-accel` command against transformers' `pipeline`, in one run.

Each command runs in a fresh child process; its CPU time (user + system, from the kernel's child accounting) and wall
time are measured:

- `vit-accel --help`, `python train.py --help`, `vit-accel variants` (targets: `--help` <= 1.5 CPU-s);
- one-image `vit-accel predict` against `pipeline("image-classification", model=<dir>)` on the same model and image
  (target: predict no slower);
- `vit-accel evaluate` over an ImageFolder against the pipeline over the same image files, both batched alike
  (target: evaluate >= 1.0x the pipeline's images/s). Images/s are over the classification loop (evaluate's
  `images_per_second`, the time of the pipeline call), and end to end (the whole process) beside them.

The model is a randomly initialised named variant saved with `save_pretrained` (its code travels with it, so the
pipeline loads it with `trust_remote_code=True`, without vit_accel), with a `ViTImageProcessor` at its size.

    python bench/startup.py [--variant vit-tiny-p16-224] [--num_images 256] [--batch_size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PIPELINE_SCRIPT = """
import json, sys, time
from transformers import pipeline
model, batch_size, images = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
classifier = pipeline("image-classification", model=model, trust_remote_code=True, device="cpu")
start = time.perf_counter()
out = classifier(images, batch_size=batch_size, top_k=5)
seconds = time.perf_counter() - start
print(json.dumps({"images": len(images), "seconds": seconds, "first": out[0][0]["label"]}))
"""


def run(command: list[str], env: dict) -> dict:
    """One fresh process: its CPU seconds (user + system), wall seconds and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "stdout": result.stdout}


def median_run(command: list[str], env: dict, repeats: int) -> dict:
    """The run of median CPU time among `repeats` (start-up on a shared machine varies by a second or more)."""
    runs = sorted((run(command, env) for _ in range(repeats)), key=lambda r: r["cpu_s"])
    return runs[len(runs) // 2]


def build(workdir: Path, variant: str, num_images: int, num_labels: int = 10) -> tuple[Path, Path]:
    """A model directory and an ImageFolder of `num_images` random photos-sized PNGs, `num_labels` classes."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import ViTImageProcessor

    from vit_accel import ViTAccelConfig, ViTAccelForImageClassification

    labels = {i: f"class_{i}" for i in range(num_labels)}
    config = ViTAccelConfig.from_variant(variant, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model_dir = workdir / "model"
    ViTAccelForImageClassification(config).save_pretrained(model_dir)
    size = config.image_size
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        model_dir
    )
    images = workdir / "images"
    rng = np.random.default_rng(0)
    for i in range(num_images):
        folder = images / labels[i % num_labels]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return model_dir, images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vit-tiny-p16-224", help="named variant, randomly initialised")
    parser.add_argument("--num_images", type=int, default=256, help="images evaluated by both")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="start-up runs per command (the median is kept)")
    parser.add_argument("--workdir", help="default: a temporary directory")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vit_startup_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workdir / "modules")}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    model_dir, images = build(workdir, args.variant, args.num_images)
    files = sorted(str(p) for p in images.rglob("*.png"))
    cli = [sys.executable, "-m", "vit_accel.cli"]
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "variant": args.variant,
    }
    for name, command in (
        ("vit-accel --help", [*cli, "--help"]),
        ("train.py --help", [sys.executable, "train.py", "--help"]),
        ("vit-accel variants", [*cli, "variants"]),
    ):
        run(command, env)  # page cache warm
        measured = median_run(command, env, args.repeats)
        results[name] = {"cpu_s": measured["cpu_s"], "wall_s": measured["wall_s"]}

    pipeline = [sys.executable, "-c", PIPELINE_SCRIPT, str(model_dir)]
    run(pipeline + ["1", files[0]], env)  # writes the remote code into HF_MODULES_CACHE once, as a first use does
    one = {
        "vit-accel predict": median_run([*cli, "predict", "--model", str(model_dir), files[0]], env, args.repeats),
        "pipeline": median_run(pipeline + ["1", files[0]], env, args.repeats),
    }
    results["one-image predict"] = {k: {"cpu_s": v["cpu_s"], "wall_s": v["wall_s"]} for k, v in one.items()}

    evaluated = run(
        [*cli, "evaluate", "--model", str(model_dir), "--validation_dir", str(images), "--output_dir",
         str(workdir / "eval"), "--batch_size", str(args.batch_size), "--dataloader_num_workers", "0"],
        env,
    )  # fmt: skip
    ours = json.loads(evaluated["stdout"].strip().splitlines()[-1])
    piped = run(pipeline + [str(args.batch_size), *files], env)
    theirs = json.loads(piped["stdout"].strip().splitlines()[-1])
    results["evaluate"] = {
        "images": ours["num_examples"],
        "vit-accel evaluate images/s": round(ours["images_per_second"], 1),
        "pipeline images/s": round(theirs["images"] / theirs["seconds"], 1),
        "vit-accel evaluate end-to-end images/s": round(ours["num_examples"] / evaluated["wall_s"], 1),
        "pipeline end-to-end images/s": round(theirs["images"] / piped["wall_s"], 1),
        "vit-accel evaluate cpu_s": evaluated["cpu_s"],
        "pipeline cpu_s": piped["cpu_s"],
    }
    results["evaluate"]["ratio"] = round(
        results["evaluate"]["vit-accel evaluate images/s"] / results["evaluate"]["pipeline images/s"], 2
    )
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

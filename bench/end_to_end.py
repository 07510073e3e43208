"""End-to-end benchmark: a short real run of train.py (data -> model -> optimizer), its images/s, and the
share of the step time the training loop spends waiting for data.

The run is `train.main([...])` itself, in this process, on a generated CIFAR-like dataset (32x32 PNGs cut from
scikit-learn's sample photos, 100 classes, written with `save_to_disk`) and the `cifar` preset: crop/flip/AutoAugment
at 32 px in the DataLoader workers, the resize to the model's size on the accelerator. The figures are train.py's
own, read from its `log.jsonl` (one record per step): images/s, and "waiting for data", its `data_wait_seconds`
(time inside `next()` of the prepared training loader, as the loop sees it: the workers' queue plus the
host-to-device copy) as a share of the step time. The loader is the bottleneck exactly when that share is large.

The first `--skip_steps` steps (worker start-up, compilation, allocator warm-up) are left out. It needs `datasets`
and `evaluate` (train.py imports them); where they are missing it prints why and writes a "skipped" table.

Usage:
    python bench/end_to_end.py                      # this CPU: S/16 at 96 px, batch 16, 1 worker
    python bench/end_to_end.py --device cuda        # ViT-B/16 at 224, bf16, compiled, batch 256, 12 workers
    python bench/end_to_end.py --dry_run            # tiny model on the CPU: checks the machinery in seconds
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # train.py and vit_accel from this checkout, installed or not
    sys.path.insert(0, str(ROOT))

NUM_CLASSES = 100
TINY = "image_size=32,patch_size=8,hidden_size=48,num_attention_heads=4,intermediate_size=96,num_hidden_layers=2"
PROFILES = {
    # model, config overrides, batch, workers, images, steps, skipped steps, compile
    "cuda": ("vit-base-p16-224", None, 256, 12, 24_000, 80, 20, True),
    "cpu": ("vit-small-p16-224", "image_size=96", 16, 1, 1_200, 40, 8, False),
    "dry-run": ("vit-tiny-p16-224", TINY, 8, 1, 160, 8, 2, False),
}


def missing_modules() -> list[str]:
    """The modules train.py needs that this Python lacks (the GPU machine has no `datasets` nor `evaluate`)."""
    missing = []
    for name in ("datasets", "evaluate", "accelerate", "torchvision"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def make_dataset(path: Path, num_images: int, num_eval: int, seed: int = 0) -> None:
    """`num_images` training and `num_eval` test 32x32 PNGs (crops of real photos), 100 classes, `save_to_disk`."""
    import datasets
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_sample_images

        photos = load_sample_images().images
    except ImportError:  # no scikit-learn: smooth random images (PNG decodes like a photo's, unlike noise)
        photos = [np.asarray(PIL.Image.fromarray(rng.integers(0, 256, (40, 60, 3), np.uint8)).resize((640, 427)))]

    def encode(i: int) -> dict:
        photo = photos[i % len(photos)]
        side = int(rng.integers(32, 160))
        top, left = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
        crop = PIL.Image.fromarray(photo[top : top + side, left : left + side]).resize((32, 32), PIL.Image.BILINEAR)
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{i}" for i in range(NUM_CLASSES)])}
    )
    splits = {}
    for name, count, offset in (("train", num_images, 0), ("test", num_eval, num_images)):
        rows = {"image": [encode(offset + i) for i in range(count)], "label": [i % NUM_CLASSES for i in range(count)]}
        splits[name] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))


def read_log(output_dir: Path) -> list[dict]:
    """train.py's step records so far (a last line still being written is left for the next read)."""
    path = output_dir / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return [record for record in records if "loss" in record]


def summary(records: list[dict], skip: int) -> dict:
    """images/s and the share of the step time spent waiting for data, over the steps after `skip`."""
    timed = [record for record in records if record["step"] > skip]
    if not timed:
        raise RuntimeError(f"Only {len(records)} steps were logged; need more than {skip}.")
    # One record per step: its images/s is the step's global batch over the step's wall time.
    seconds = sum(record["global_batch"] / record["images_per_second"] for record in timed)
    return {
        "steps_timed": len(timed),
        "seconds": seconds,
        "images_per_second": sum(record["global_batch"] for record in timed) / seconds,
        "data_wait_fraction": sum(record["data_wait_seconds"] for record in timed) / seconds,
    }


def watch(output_dir: Path, steps: int, on_trained, stop: threading.Event) -> None:
    """Call `on_trained` once train.py has logged all `steps` (before its final evaluation), unless stopped."""
    while not stop.wait(0.2):
        records = read_log(output_dir)
        if records and records[-1]["step"] >= steps:
            on_trained(records)
            return


def train_argv(args, data_dir: Path, output_dir: Path) -> list[str]:
    """train.py's flags for a short run that neither evaluates nor checkpoints before its last step."""
    argv = [
        "--model_name_or_path", args.model, "--from_scratch",
        "--dataset_name", str(data_dir), "--augmentation", "cifar",
        "--dataloader_num_workers", str(args.workers),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--logging_steps", "1",
        "--eval_steps", str(args.steps), "--learning_rate", "1e-4", "--num_warmup_steps", "0",
        "--seed", "0", "--output_dir", str(output_dir), "--overwrite_output_dir",
    ]  # fmt: skip
    if args.config_overrides:
        argv += ["--config_overrides", args.config_overrides]
    if args.torch_compile:
        argv.append("--torch_compile")
    return argv


def format_table(result: dict) -> str:
    head = (
        "| device | model | batch | workers | compiled | steps timed | images/s | waiting for data "
        "| train.py's last logged images/s |"
    )
    lines = [head, "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    if "skipped" in result:
        lines.append(f"| {result['device']} | skipped: {result['skipped']} | | | | | | | |")
        return "\n".join(lines) + "\n"
    logged = result.get("logged_images_per_second")
    lines.append(
        f"| {result['device']} | {result['model']} | {result['batch_size']} | {result['workers']} | "
        f"{'yes' if result['compiled'] else 'no'} | {result['steps_timed']} | {result['images_per_second']:,.1f} | "
        f"{result['data_wait_fraction']:.1%} | {f'{logged:,.1f}' if logged else '-'} |"
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--dry_run", "--dry-run", action="store_true", help="tiny model on the CPU, a few steps")
    parser.add_argument("--model", help="a named variant (trained from scratch)")
    parser.add_argument("--config_overrides", "--config-overrides")
    parser.add_argument("--batch_size", "--batch-size", type=int)
    parser.add_argument("--workers", type=int, help="DataLoader workers")
    parser.add_argument(
        "--num_images", "--num-images", type=int, help="training images generated (the test split: 1 in 10)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps of the run")
    parser.add_argument("--skip_steps", "--skip-steps", type=int, help="first steps left out of the figures")
    parser.add_argument("--torch_compile", "--torch-compile", action=argparse.BooleanOptionalAction)
    parser.add_argument("--workdir", type=Path, help="where the dataset and the run go (default: a temporary dir)")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = PROFILES["dry-run" if args.dry_run else args.device]
    names = ("model", "config_overrides", "batch_size", "workers", "num_images", "steps", "skip_steps")
    for name, default in zip(names, profile):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.torch_compile is None:
        args.torch_compile = profile[-1]
    if args.device == "cuda":
        args.workers = min(args.workers, max((os.cpu_count() or 2) - 2, 1))
    # One epoch must cover the run: train.py's loader restarts its workers at each epoch, which is not a step cost.
    args.num_images = max(args.num_images, args.batch_size * (args.steps + 1))
    return args


def run(args) -> dict:
    import torch

    result: dict = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": " ".join(["python", "bench/end_to_end.py", *sys.argv[1:]]),
    }
    missing = missing_modules()
    if missing:
        result["skipped"] = f"train.py needs {', '.join(missing)}, not installed here (carry wheels, see run_gpu.py)"
        return result
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # a dry run stays on the CPU even on a GPU machine
    else:
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"  # what accelerate_configs/single_gpu.yaml sets
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        data_dir, output_dir = Path(scratch) / "data", Path(scratch) / "run"
        start = time.perf_counter()
        make_dataset(data_dir, args.num_images, max(args.num_images // 10, args.batch_size))
        result["dataset_seconds"] = time.perf_counter() - start
        train = importlib.import_module("train")

        def save_early(records: list[dict]) -> None:
            # Written before train.py's final evaluation (which recompiles a compiled model for eval mode), so that a
            # run stopped at its time limit there still leaves the training figures.
            save(args, {**result, **summary(records, args.skip_steps), "complete": False} | describe(args))

        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(output_dir, args.steps, save_early, stop), daemon=True)
        watcher.start()
        try:
            final = train.main(train_argv(args, data_dir, output_dir))
        finally:
            stop.set()
            watcher.join()
        records = read_log(output_dir)
    result.update(
        describe(args),
        train_steps=final["train_steps"],
        logged_images_per_second=records[-1]["images_per_second"] if records else None,
        complete=True,
        **summary(records, args.skip_steps),
    )
    return result


def describe(args) -> dict:
    return {
        "model": args.model + (f" ({args.config_overrides})" if args.config_overrides else ""),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "compiled": args.torch_compile,
    }


def save(args, result: dict) -> str:
    """Print nothing; write the table and the numbers where asked; return the table."""
    table = format_table(result)
    header = f"End to end (train.py), {result['device']}; torch {result['torch']}; {result['date']}"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"{header}\n\n{table}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    table = save(args, result)
    header = f"End to end (train.py), {result['device']}; torch {result['torch']}; {result['date']}"
    print(header + "\n\n" + table, end="")
    if "skipped" in result:
        print(f"\nSkipped: {result['skipped']}")
    return result


if __name__ == "__main__":
    main()

"""End-to-end benchmark: a short real run of train.py (data -> model -> optimizer), its images/s, and the
share of the step time the training loop spends waiting for data.

The run is `train.main([...])` itself, in this process, on a generated CIFAR-like dataset (32x32 PNGs cut from
scikit-learn's sample photos, 100 classes, written with `save_to_disk`) and the `cifar` preset: crop/flip/AutoAugment
at 32 px in the DataLoader workers, the resize to the model's size on the accelerator. train.py is not modified: two
timers are wrapped around the loader from outside, for the training loader only (the eval loader is not counted):

- "waiting for the loader": time inside the DataLoader iterator's `__next__` (the workers' queue): the loader is
  the bottleneck exactly when this is a large share of the step time;
- "in next(loader)": time inside the prepared (accelerate) loader's `next`, as the loop sees it: the above plus the
  host-to-device copy. On CUDA that copy is a blocking one (accelerate's default `non_blocking=False`), so this also
  includes waiting for the previous step's GPU work to finish.

The first `--skip_steps` steps (worker start-up, compilation, allocator warm-up) are left out; images/s is measured
from the host's step boundaries over the remaining steps (train.py's own logged figure is shown beside it). It needs
`datasets` and `evaluate` (train.py imports them); where they are missing it prints why and writes a "skipped" table.

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


def _is_training(dataset) -> bool:
    """train.py's training set is the one whose augmentation pipeline is in training mode."""
    return bool(getattr(getattr(dataset, "pipeline", None), "train", False))


class LoaderClock:
    """Records (start, end) of every `next` on the training loader, at both levels (see the module docstring)."""

    def __init__(self, on_eval=None) -> None:
        self.outer: list[tuple[float, float]] = []
        self.inner: list[tuple[float, float]] = []
        self._restore: list = []
        self._on_eval = on_eval  # called once, when the first eval loader starts: training is over by then

    def install(self) -> None:
        import accelerate.data_loader as accelerate_loader
        from torch.utils.data import dataloader as torch_loader

        clock = self
        original_iter = accelerate_loader.DataLoaderShard.__iter__
        original_next = torch_loader._BaseDataLoaderIter.__next__

        def timed_iter(loader):
            iterator, training = original_iter(loader), _is_training(loader.dataset)
            if not training and clock._on_eval is not None:
                callback, clock._on_eval = clock._on_eval, None
                callback()
            while True:
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                if training:
                    clock.outer.append((start, time.perf_counter()))
                yield batch

        def timed_next(iterator):
            start = time.perf_counter()
            batch = original_next(iterator)
            if _is_training(iterator._dataset):
                clock.inner.append((start, time.perf_counter()))
            return batch

        accelerate_loader.DataLoaderShard.__iter__ = timed_iter
        torch_loader._BaseDataLoaderIter.__next__ = timed_next
        self._restore = [
            (accelerate_loader.DataLoaderShard, "__iter__", original_iter),
            (torch_loader._BaseDataLoaderIter, "__next__", original_next),
        ]

    def uninstall(self) -> None:
        for owner, name, original in self._restore:
            setattr(owner, name, original)
        self._restore = []

    def summary(self, batch_size: int, skip: int) -> dict:
        """images/s and waiting shares over the steps after `skip` (step i = from the i-th next to the (i+1)-th)."""
        if len(self.outer) < skip + 2:
            raise RuntimeError(f"Only {len(self.outer)} training batches were timed; need more than {skip + 1}.")
        window = self.outer[skip:]
        begin, end = window[0][0], window[-1][0]
        steps = len(window) - 1
        seconds = end - begin
        outer_wait = sum(stop - start for start, stop in window[:-1])
        inner_wait = sum(stop - start for start, stop in self.inner if begin <= start < end)
        return {
            "steps_timed": steps,
            "seconds": seconds,
            "images_per_second": batch_size * steps / seconds,
            "loader_wait_fraction": inner_wait / seconds,
            "next_wait_fraction": outer_wait / seconds,
        }


def train_argv(args, data_dir: Path, output_dir: Path) -> list[str]:
    """train.py's flags for a short run that neither evaluates nor checkpoints before its last step."""
    argv = [
        "--model_name_or_path", args.model, "--from_scratch",
        "--dataset_name", str(data_dir), "--augmentation", "cifar",
        "--dataloader_num_workers", str(args.workers),
        "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--logging_steps", str(max(args.steps // 4, 1)),
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
        "| device | model | batch | workers | compiled | steps timed | images/s | waiting for the loader "
        "| in next(loader), incl. the copy | train.py's logged images/s |"
    )
    lines = [head, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    if "skipped" in result:
        lines.append(f"| {result['device']} | skipped: {result['skipped']} | | | | | | | | |")
        return "\n".join(lines) + "\n"
    logged = result.get("logged_images_per_second")
    lines.append(
        f"| {result['device']} | {result['model']} | {result['batch_size']} | {result['workers']} | "
        f"{'yes' if result['compiled'] else 'no'} | {result['steps_timed']} | {result['images_per_second']:,.1f} | "
        f"{result['loader_wait_fraction']:.1%} | {result['next_wait_fraction']:.1%} | "
        f"{f'{logged:,.1f}' if logged else '-'} |"
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

        def save_early() -> None:
            # Written before train.py's final evaluation (which recompiles a compiled model for eval mode), so that a
            # run stopped at its time limit there still leaves the training figures.
            early = {**result, **clock.summary(args.batch_size, args.skip_steps), "complete": False}
            save(args, early | describe(args))

        clock = LoaderClock(on_eval=save_early)
        clock.install()
        try:
            final = train.main(train_argv(args, data_dir, output_dir))
        finally:
            clock.uninstall()
        log = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    logged = [record["images_per_second"] for record in log if "images_per_second" in record]
    result.update(
        describe(args),
        train_steps=final["train_steps"],
        logged_images_per_second=logged[-1] if logged else None,
        complete=True,
        **clock.summary(args.batch_size, args.skip_steps),
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

"""Data-loading benchmark for 224-px JPEG training input: images/s per worker, ratios in one run.

Every path reads the same JPEGs (cut from scikit-learn's two sample photos, re-encoded at quality 90, at each
`--sizes` resolution) and yields training batches of 224-px images with a random-resized crop and a flip:

- `torchvision ImageFolder`: torchvision.datasets.ImageFolder + RandomResizedCrop(224) / RandomHorizontalFlip /
  ToTensor / Normalize (torchvision's reference recipe), a DataLoader;
- `datasets map-style rows + torchvision`: a 🤗 Dataset of the JPEG bytes, `set_transform` with the same transforms;
- `ours map-style (decoder)`: vit_accel's ImageClassificationDataset over the same 🤗 rows (inception preset: uint8
  out, normalised per batch on the device), with each `--image_decoder` installed here: `pil` (full decode, the
  preset's transforms), `pil_draft`, `simplejpeg` and `turbojpeg` (the crop box drawn from the header, a JPEG decoded
  at the DCT scale it needs, turbojpeg reconstructing only the crop's region, resized on uint8);
- `ours ImageFolder (auto)`: the same dataset class over `--train_dir`'s folder (what train.py builds), auto decoder;
- `ours stream parquet/webdataset (decoder)`: vit_accel.data.streaming from local parquet / .tar shards.

Then the loader's ceiling on this machine, one worker per core (`--workers`, default: the CPU count) at the fastest
path's per-worker rate, against what one GPU trains ViT-B/16 at 224 px at (`--mfu` of an H100's dense bf16 peak),
and how many such workers that GPU needs with ours and with torchvision's pipeline.

Each path runs as one DataLoader worker would: in this process, one thread (`num_workers=0`), so that its images/s is
the per-worker figure. Time is this process' CPU time (what a worker with its own core spends; on a shared machine
wall time mostly measures the neighbours), and wall time is reported beside it. Paths take turns within each repeat,
so that a busy neighbour slows all of them alike; each ratio is also given as its range over the repeats (each
repeat's rate against torchvision's in the same repeat).

Usage:
    python bench/data_stream.py [--num_images 128] [--sizes 500x375,1024x768] [--batch_size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import torch
import torchvision
from datasets import ClassLabel, Dataset, Features, Image
from torch.utils.data import DataLoader
from torchvision import transforms as v1

from vit_accel.data import (
    DataArguments,
    ImageClassificationDataset,
    build_pipeline,
    load_image_dataset,
    make_dataloader,
)
from vit_accel.data.arguments import decoder_installed
from vit_accel.data.decode import FAST_DECODERS, auto_decoder
from vit_accel.data.streaming import make_streaming_dataloader, open_streaming_dataset

# ViT-B/16 at 224 px: 17.56 G multiply-adds a forward pass (timm's count), so about 3 x 2 x 17.56 GFLOP a training
# image (the backward pass costs twice the forward). An H100 SXM's dense bf16 peak is 989 TFLOP/s.
VIT_B16_TRAIN_FLOP = 3 * 2 * 17.56e9
H100_BF16_FLOPS = 989e12

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUT = 224
CLASSES = 4


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def make_jpegs(num: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """`num` JPEGs of width x height cut at random places and scales from the two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        photo = photos[i % len(photos)]
        h = int(rng.integers(photo.shape[0] // 2, photo.shape[0]))
        w = min(photo.shape[1], int(h * width / height))
        top, left = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        image = PIL.Image.fromarray(photo[top : top + h, left : left + w]).resize((width, height), PIL.Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_sources(root: Path, jpegs: list[bytes], shards: int = 4) -> dict[str, Path]:
    """The same images as an ImageFolder, parquet shards and webdataset tars (labels i % CLASSES)."""
    folder, parquet, tars = root / "folder", root / "parquet", root / "wds"
    for path in (folder, parquet, tars):
        path.mkdir(parents=True)
    for i, data in enumerate(jpegs):
        (folder / f"c{i % CLASSES}").mkdir(exist_ok=True)
        (folder / f"c{i % CLASSES}" / f"{i:06d}.jpg").write_bytes(data)
    features = Features({"image": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(CLASSES)])})
    per = -(-len(jpegs) // shards)
    for s in range(shards):
        part = range(s * per, min(len(jpegs), (s + 1) * per))
        rows = {"image": [{"bytes": jpegs[i], "path": None} for i in part], "label": [i % CLASSES for i in part]}
        Dataset.from_dict(rows, features=features).to_parquet(str(parquet / f"train-{s:05d}-of-{shards:05d}.parquet"))
        with tarfile.open(tars / f"train-{s:05d}.tar", "w") as archive:
            for i in part:
                for ext, data in (("jpg", jpegs[i]), ("cls", str(i % CLASSES).encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return {"folder": folder, "parquet": parquet, "wds": tars}


def torchvision_transform() -> v1.Compose:
    return v1.Compose(
        [v1.RandomResizedCrop(OUT), v1.RandomHorizontalFlip(), v1.ToTensor(), v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def loaders(sources: dict[str, Path], jpegs: list[bytes], batch_size: int) -> dict[str, Callable[[], Iterable]]:
    """name -> a function returning one epoch's batches."""
    folder = torchvision.datasets.ImageFolder(str(sources["folder"]), transform=torchvision_transform())
    features = Features({"image": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(CLASSES)])})
    rows = {"image": [{"bytes": d, "path": None} for d in jpegs], "label": [i % CLASSES for i in range(len(jpegs))]}
    table = Dataset.from_dict(rows, features=features)
    hf_rows = table.with_format(None)
    transform = torchvision_transform()
    hf_rows.set_transform(
        lambda batch: {
            "pixel_values": [transform(image.convert("RGB")) for image in batch["image"]],
            "labels": batch["label"],
        }
    )

    def hf_collate(examples):
        return torch.stack([e["pixel_values"] for e in examples]), torch.tensor([e["labels"] for e in examples])

    inception = build_pipeline("inception", OUT, IMAGENET_MEAN, IMAGENET_STD, train=True)
    fast = [decoder for decoder in FAST_DECODERS if decoder_installed(decoder)]
    paths: dict[str, Callable[[], Iterable]] = {
        "torchvision ImageFolder": lambda: DataLoader(folder, batch_size=batch_size, shuffle=True, num_workers=0),
        "datasets map-style rows + torchvision": lambda: DataLoader(
            hf_rows, batch_size=batch_size, shuffle=True, num_workers=0, collate_fn=hf_collate
        ),
    }
    for decoder in ("pil", *fast):
        dataset = ImageClassificationDataset(table, inception, seed=0, decoder=decoder)
        paths[f"ours map-style ({decoder})"] = lambda dataset=dataset: make_dataloader(
            dataset, batch_size, shuffle=True, seed=0
        )
    # What train.py builds from --train_dir (its training part: a validation split is held out as train.py does).
    folder_args = DataArguments(train_dir=str(sources["folder"]), augmentation="inception", train_val_split=0.25)
    ours_folder = ImageClassificationDataset(load_image_dataset(folder_args, seed=0).train, inception, seed=0)
    paths[f"ours ImageFolder (auto = {ours_folder.decoder})"] = lambda: make_dataloader(
        ours_folder, batch_size, shuffle=True, seed=0
    )
    for kind in ("parquet", "wds"):
        args = DataArguments(
            dataset_name=str(sources[kind]), streaming=True, augmentation="inception", train_val_split=0.25
        )
        data = open_streaming_dataset(args, seed=0)
        for decoder in ("pil", *fast) if kind == "parquet" else ("pil", auto_decoder("inception")):
            name = f"ours stream {'parquet' if kind == 'parquet' else 'webdataset'} ({decoder})"
            loader = make_streaming_dataloader(
                data.train, inception, data.label_ids, 0, batch_size, shuffle_buffer_size=256, decoder=decoder
            )
            paths[name] = lambda loader=loader: loader
    return paths


def measure(paths: dict[str, Callable[[], Iterable]], repeats: int) -> dict[str, dict]:
    """Per path: median images/s (CPU time and wall time) over `repeats` epochs after one warm-up epoch, and each
    repeat's CPU-time rate (`rounds`), for ratios taken within a repeat."""
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    wall: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(repeats + 1):
        for name, make in paths.items():
            start_cpu, start_wall, count = time.process_time(), time.perf_counter(), 0
            for batch in make():
                pixels = batch["pixel_values"] if isinstance(batch, dict) else batch[0]
                count += pixels.shape[0]
            if round_:  # round 0 warms up caches and imports
                cpu[name].append(count / (time.process_time() - start_cpu))
                wall[name].append(count / (time.perf_counter() - start_wall))
    return {
        name: {"cpu": float(np.median(cpu[name])), "wall": float(np.median(wall[name])), "rounds": cpu[name]}
        for name in paths
    }


def ratio_range(rates: dict[str, dict], name: str, base: str) -> tuple[float, float]:
    """(lowest, highest) over the repeats of `name`'s rate against `base`'s in the same repeat."""
    ratios = [ours / theirs for ours, theirs in zip(rates[name]["rounds"], rates[base]["rounds"])]
    return min(ratios), max(ratios)


def gpu_appetite(mfu: float) -> float:
    """Images/s one H100 trains ViT-B/16 at 224 px at, at `mfu` of its dense bf16 peak (0.4: about 3,750)."""
    return mfu * H100_BF16_FLOPS / VIT_B16_TRAIN_FLOP


def ceiling(rates: dict[str, dict], workers: int, appetite: float) -> dict:
    """The loader's ceiling with `workers` workers (one per core) at ours' fastest per-worker rate, against
    `appetite` images/s; and the workers that appetite needs with ours and with torchvision's pipeline."""
    best = max((name for name in rates if name.startswith("ours")), key=lambda name: rates[name]["cpu"])
    per_worker, torchvision_per_worker = rates[best]["cpu"], rates["torchvision ImageFolder"]["cpu"]
    return {
        "path": best,
        "per_worker": per_worker,
        "workers": workers,
        "images_per_s": per_worker * workers,
        "appetite": appetite,
        "fraction_fed": per_worker * workers / appetite,
        "workers_needed": math.ceil(appetite / per_worker),
        "workers_needed_torchvision": math.ceil(appetite / torchvision_per_worker),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=128)
    parser.add_argument("--sizes", default="500x375,1024x768", help="input JPEG resolutions, WxH, comma-separated")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers for the ceiling")
    parser.add_argument("--mfu", type=float, default=0.4, help="the GPU's model FLOPs utilisation for its appetite")
    parser.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "simplejpeg": _version("simplejpeg"),
        "turbojpeg": _version("turbojpeg"),
        "datasets": _version("datasets"),
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "results": {},
        "ceiling": {},
    }
    appetite = gpu_appetite(args.mfu)
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        jpegs = make_jpegs(args.num_images, width, height)
        with tempfile.TemporaryDirectory() as tmp:
            sources = write_sources(Path(tmp), jpegs)
            rates = measure(loaders(sources, jpegs, args.batch_size), args.repeats)
        base = "torchvision ImageFolder"
        say(f"\n{size} JPEG -> {OUT} px, images/s per worker (CPU time; wall in brackets); ratio to torchvision")
        say("ImageFolder (median, range over repeats) and to 🤗 datasets rows + torchvision\n")
        for name, rate in rates.items():
            low, high = ratio_range(rates, name, base)
            rows = rate["cpu"] / rates["datasets map-style rows + torchvision"]["cpu"]
            say(
                f"    {name:42s} {rate['cpu']:7.1f} ({rate['wall']:6.1f})  {rate['cpu'] / rates[base]['cpu']:5.2f}x "
                f"[{low:.2f}-{high:.2f}]  vs rows {rows:5.2f}x"
            )
        report["results"][size] = rates
        top = report["ceiling"][size] = ceiling(rates, args.workers, appetite)
        say(
            f"\nCeiling here: {top['workers']} workers x {top['per_worker']:.0f} images/s ({top['path']}) = "
            f"{top['images_per_s']:,.0f} images/s, {top['fraction_fed']:.0%} of one H100's ViT-B/16 appetite at "
            f"{args.mfu:.0%} MFU ({appetite:,.0f} images/s); it needs {top['workers_needed']} such workers "
            f"({top['workers_needed_torchvision']} with torchvision's pipeline)"
        )
    if args.out:
        args.out.write_text("\n".join(lines).lstrip() + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

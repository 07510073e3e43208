"""MAE pre-training step benchmark: images/s and peak memory of ours vs transformers' ViTMAEForPreTraining.

One pre-training step = forward with masking (the same noise, so the same mask, for both), the normalised-pixel loss
on the masked patches, backward, fused AdamW step (MAE's betas 0.9, 0.95), zero_grad (set_to_none); the same shape,
decoder, batch, seed and data for the two models:

- ours: `vit_accel.ViTAccelForPreTraining` (SDPA attention);
- transformers: `ViTMAEForPreTraining` with `attn_implementation="sdpa"`.

Each model runs in its own worker process, so its peak memory is its own: the peak resident set (Linux `VmHWM`, reset
once the inputs exist, before the model is built) minus the resident set at that moment, as `bench/train_step.py`
measures it on the CPU. The two workers take turns for `--rounds` rounds of `--steps` timed steps after `--warmup`
steps, so a busy neighbour slows both alike; "ours / transformers" is the median over rounds of the ratio of the two
rates in the same round.

Usage:
    python bench/mae_step.py                    # S/16 at 96 px, decoder 256 x 4, batch 16, 75% masked (CPU)
    python bench/mae_step.py --dry_run          # tiny shapes, seconds: checks the machinery
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):  # run as `python bench/mae_step.py` from a checkout that is not pip-installed
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from train_step import SIZES, Shape, _reset_peak_rss, _status_bytes, parse_shape  # noqa: E402

IMPLEMENTATIONS = ("ours", "transformers")


def build_model(impl: str, shape: Shape, decoder: tuple[int, int, int, int], mask_ratio: float):
    """One of the two implementations at `shape` with the decoder (width, depth, heads, MLP width)."""
    width, depth, heads, mlp = decoder
    fields = dict(
        hidden_size=shape.width,
        num_hidden_layers=shape.depth,
        num_attention_heads=shape.heads,
        intermediate_size=shape.mlp,
        image_size=shape.image_size,
        patch_size=shape.patch,
        decoder_hidden_size=width,
        decoder_num_hidden_layers=depth,
        decoder_num_attention_heads=heads,
        decoder_intermediate_size=mlp,
        mask_ratio=mask_ratio,
        norm_pix_loss=True,
        layer_norm_eps=1e-6,
    )
    if impl == "ours":
        from vit_accel import ViTAccelForPreTraining, ViTAccelMAEConfig

        return ViTAccelForPreTraining(ViTAccelMAEConfig(**fields, attn_implementation="sdpa"))
    if impl == "transformers":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        return ViTMAEForPreTraining(ViTMAEConfig(**fields, attn_implementation="sdpa"))
    raise ValueError(f"Unknown implementation {impl!r}.")


class Trainer:
    """One model's pre-training step on fixed synthetic images and noise (seeded), with timing and memory readings."""

    def __init__(self, impl: str, shape: Shape, batch: int, decoder, mask_ratio: float):
        import torch

        self.torch = torch
        generator = torch.Generator().manual_seed(1234)
        size, patches = shape.image_size, (shape.image_size // shape.patch) ** 2
        self.pixels = torch.randn(batch, 3, size, size, generator=generator)
        self.noise = torch.rand(batch, patches, generator=generator)
        # Build (and drop) a one-block model first: lazy imports and one-time set-up are not the model's memory.
        build_model(impl, Shape("Mini", 8, 1, 1, 8, shape.patch, shape.image_size), (8, 1, 1, 8), mask_ratio)
        gc.collect()
        self.rss_base = _status_bytes("VmRSS")
        self.rss_reset = _reset_peak_rss()
        torch.manual_seed(0)
        self.model = build_model(impl, shape, decoder, mask_ratio).train()
        parameters = [p for p in self.model.parameters() if p.requires_grad]  # transformers' frozen sin-cos tables
        self.optimizer = torch.optim.AdamW(parameters, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)

    def step(self) -> None:
        loss = self.model(self.pixels, noise=self.noise).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - start

    def peak_memory(self) -> int:
        if self.rss_reset:
            return max(_status_bytes("VmHWM") - self.rss_base, 0)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker_main(conn, impl: str, shape: Shape, batch: int, decoder, mask_ratio: float, threads: int) -> None:
    """Serve "warmup"/"time"/"memory"/"loss" requests from the parent over `conn` until "stop"."""
    import torch

    torch.set_num_threads(threads)
    try:
        trainer = Trainer(impl, shape, batch, decoder, mask_ratio)
        conn.send(("ready", None))
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        request, argument = conn.recv()
        if request == "stop":
            return
        try:
            if request in ("warmup", "time"):
                reply = trainer.run(argument)
            elif request == "memory":
                reply = trainer.peak_memory()
            else:
                raise ValueError(f"unknown request {request!r}")
            conn.send(("ok", reply))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


def ask(conn, request: str, argument=None):
    conn.send((request, argument))
    status, reply = conn.recv()
    if status == "error":
        raise RuntimeError(reply)
    return reply


def parse_decoder(text: str) -> tuple[int, int, int, int]:
    """`"256x4x8x1024"`: the decoder's width, depth, heads and MLP width."""
    parts = text.split("x")
    if len(parts) != 4 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"--decoder {text!r}: expected WIDTHxDEPTHxHEADSxMLP, e.g. 256x4x8x1024.")
    width, depth, heads, mlp = (int(part) for part in parts)
    if width % heads:
        raise argparse.ArgumentTypeError(f"--decoder {text!r}: the heads ({heads}) must divide the width ({width}).")
    return width, depth, heads, mlp


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="S/16@96", help=f"SIZE/PATCH@RESOLUTION, SIZE in {', '.join(SIZES)}")
    parser.add_argument("--decoder", type=parse_decoder, default=(256, 4, 8, 1024), help="WIDTHxDEPTHxHEADSxMLP")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--dry_run", action="store_true", help="tiny shapes and few steps: checks the machinery")
    parser.add_argument("--output_json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not 0 < args.mask_ratio < 1:
        parser.error(f"--mask_ratio {args.mask_ratio}: pre-training masks a share of patches in (0, 1).")
    if args.dry_run:
        args.shape, args.decoder, args.batch_size = "Mini/8@32", (32, 1, 4, 64), 2
        args.steps, args.warmup, args.rounds = 1, 1, 2
    try:
        shape = parse_shape(args.shape)
    except ValueError as error:
        parser.error(f"--shape: {error}")

    context = multiprocessing.get_context("spawn")
    workers = {}
    try:
        for impl in IMPLEMENTATIONS:
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(child, impl, shape, args.batch_size, args.decoder, args.mask_ratio, args.threads),
                daemon=True,
            )
            process.start()
            status, reply = parent.recv()
            if status == "error":
                raise RuntimeError(f"{impl}: {reply}")
            workers[impl] = (parent, process)
        for conn, _ in workers.values():
            ask(conn, "warmup", args.warmup)
        rates: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        for _ in range(args.rounds):
            for impl, (conn, _) in workers.items():
                rates[impl].append(args.batch_size * args.steps / ask(conn, "time", args.steps))
        peaks = {impl: ask(conn, "memory") for impl, (conn, _) in workers.items()}
    finally:
        for conn, process in workers.values():
            conn.send(("stop", None))
            process.join(timeout=30)

    import torch
    import transformers

    ratios = [ours / theirs for ours, theirs in zip(rates["ours"], rates["transformers"])]
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/mae_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {multiprocessing.cpu_count()} CPUs",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "shape": shape.name,
        "decoder": "x".join(map(str, args.decoder)),
        "batch_size": args.batch_size,
        "mask_ratio": args.mask_ratio,
        "images_per_s": {impl: statistics.median(values) for impl, values in rates.items()},
        "images_per_s_by_round": rates,
        "peak_mib": {impl: peak / 2**20 for impl, peak in peaks.items()},
        "ours_over_transformers_speed": statistics.median(ratios),
        "ours_over_transformers_memory": peaks["ours"] / peaks["transformers"] if peaks["transformers"] else None,
    }
    print(f"{shape.name}, decoder {result['decoder']}, batch {args.batch_size}, mask {args.mask_ratio}:")
    print("| implementation | images/s (median) | peak memory (MiB) |")
    print("|---|---:|---:|")
    for impl in IMPLEMENTATIONS:
        print(f"| {impl} | {result['images_per_s'][impl]:.2f} | {result['peak_mib'][impl]:.1f} |")
    memory = result["ours_over_transformers_memory"]
    memory_text = f"{memory:.3f}x" if memory is not None else "unknown"
    print(f"ours / transformers: {result['ours_over_transformers_speed']:.3f}x images/s, {memory_text} peak memory")
    if args.output_json:
        args.output_json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

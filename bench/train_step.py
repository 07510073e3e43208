"""Train-step benchmark: images/s and peak memory of ours vs transformers' ViT (sdpa) vs timm's.

A shape may name a family (`DINOv2-S/14@98`, `SigLIP-S/16@96`): ours with that family's options, timm's
`VisionTransformer` with the same (LayerScale 1e-5 for DINOv2; no CLS token and attention pooling for SigLIP), and
transformers' own class of that family (`Dinov2ForImageClassification`, whose head reads CLS + patch mean;
`SiglipForImageClassification`, whose head mean-pools instead of attention pooling).

One training step = forward, cross-entropy, backward, fused AdamW step, zero_grad (set_to_none); the
same shape, batch, dtype, seed and data for the three models:

- ours: `vit_accel.ViTAccelForImageClassification`;
- transformers: `ViTForImageClassification` with `attn_implementation="sdpa"`;
- timm: `timm.models.vision_transformer.VisionTransformer` (its fused-attention path, also SDPA).

Each model runs in its own worker process, so its peak memory is its own: on CUDA `torch.cuda.max_memory_allocated`;
on the CPU the peak resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs` once the inputs exist, before
the model is built) minus the resident set at that moment, i.e. what the model, its gradients, the optimizer state,
the activations and the allocators' slack added. The workers take turns (ours, transformers, timm, ours, ...) for
`--rounds` rounds of `--steps` timed steps after `--warmup` steps, so a busy neighbour slows all three alike; the
table gives the median over rounds, and "ours / faster peer" is the median over rounds of ours' rate divided by the
faster peer's rate in the same round.

On CUDA it also runs `torch.compile`d models ("compiled" rows), finds the largest batch that fits (eager, doubling then
bisecting, each worker alone on the GPU) and gives MFU from the training FLOPs per image (6 x timm's forward GMACs):
the full model's FLOPs for all three, although ours runs its last block on the CLS token only (about 1/depth less
work), so its MFU is an effective figure by that much. Rows run in order of importance and stop starting new ones
after `--time_budget` seconds; the table is rewritten after each row.

Usage:
    python bench/train_step.py                       # CPU: S/16 at 96 px, batch 16 (about 2 minutes here)
    python bench/train_step.py --device cuda         # ViT-B/16, B/32, L/16 at 224 and B/16 at 384, bf16
    python bench/train_step.py --dry_run             # tiny shapes on the CPU, seconds: checks the machinery
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import multiprocessing
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/train_step.py` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))

IMPLEMENTATIONS = ("ours", "transformers", "timm")
PEERS = ("transformers", "timm")

# width, depth, heads, MLP width: the paper's sizes (as vit_accel's VIT_SIZES) plus "Mini" for dry runs and tests.
SIZES: dict[str, tuple[int, int, int, int]] = {
    "Mini": (48, 2, 4, 96),
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}
# Training FLOPs per image: 6 x timm's published forward GMACs (forward 2x, backward 4x); other shapes use
# `forward_macs`.
REFERENCE_TRAIN_FLOPS: dict[str, float] = {
    "B/16@224": 105.5e9,
    "B/32@224": 26.5e9,
    "L/16@224": 369.6e9,
    "L/32@224": 92.3e9,
    "B/16@384": 333.2e9,
    "L/16@384": 1147e9,
}
# Dense bf16 peak on paper (H100 SXM; the H200 has the same compute), and what 8192^3 bf16 matmuls reached on this
# H100/H200 machines this project measures on: MFU is given against both.
PAPER_PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
MEASURED_PEAK_BF16 = 800e12

NUM_LABELS = 100
# (shape, batch) for the CUDA run, most important first; batches give each a similar number of tokens per step.
CUDA_SHAPES = (("B/16@224", 256), ("B/32@224", 1024), ("L/16@224", 128), ("B/16@384", 96))
CPU_SHAPES = (("S/16@96", 16), ("DINOv2-S/14@98", 16), ("SigLIP-S/16@96", 16))
FAMILIES = ("ViT", "DINOv2", "SigLIP")
DRY_RUN_SHAPES = (("Mini/8@32", 4),)


@dataclass(frozen=True)
class Shape:
    """A ViT shape named like "B/16@224" (or "DINOv2-S/14@98"): family, size letter(s), patch size, image size."""

    name: str
    width: int
    depth: int
    heads: int
    mlp: int
    patch: int
    image_size: int
    family: str = "ViT"

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + (self.family != "SigLIP")


def parse_shape(spec: str) -> Shape:
    """`"B/16@224"` or `"DINOv2-S/14@98"` -> Shape; sizes are Mini, Ti, S, B, L, H; families ViT, DINOv2, SigLIP."""
    match = re.fullmatch(r"(?:(?P<family>[A-Za-z0-9]+)-)?(?P<size>[A-Za-z]+)/(?P<patch>\d+)@(?P<res>\d+)", spec)
    if match is None or match["size"] not in SIZES or (match["family"] or "ViT") not in FAMILIES:
        raise ValueError(
            f"Shape {spec!r} is not [FAMILY-]SIZE/PATCH@RESOLUTION with SIZE in {', '.join(SIZES)} and FAMILY in "
            f"{', '.join(FAMILIES)}."
        )
    width, depth, heads, mlp = SIZES[match["size"]]
    patch, res = int(match["patch"]), int(match["res"])
    if res % patch:
        raise ValueError(f"Shape {spec!r}: the resolution must be a multiple of the patch size.")
    return Shape(spec, width, depth, heads, mlp, patch, res, match["family"] or "ViT")


def forward_macs(shape: Shape, num_labels: int = NUM_LABELS) -> float:
    """Multiply-accumulates of one image's forward pass: patch embedding, blocks (projections, attention, MLP), head."""
    n, d = shape.tokens, shape.width
    patch_embed = (n - 1) * d * 3 * shape.patch**2
    block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * shape.mlp
    return patch_embed + shape.depth * block + d * num_labels


def train_flops_per_image(shape: Shape) -> float:
    """The published figure where there is one, else 6 x forward MACs (forward 2x, backward 4x)."""
    return REFERENCE_TRAIN_FLOPS.get(shape.name, 6.0 * forward_macs(shape))


def paper_peak(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a known card, from its name (None when unknown: no MFU is given)."""
    for key, peak in PAPER_PEAK_BF16.items():
        if key in device_name:
            return peak
    return None


def largest_batch(fits, start: int, cap: int, granularity: int = 8) -> int:
    """The largest batch in [1, cap] for which `fits(batch)` holds, assuming it is monotone: doubling, then bisection
    down to `granularity` (or 3% of the batch). 0 when even the smallest tried batch does not fit."""
    good, batch = 0, max(1, min(start, cap))
    while not fits(batch):
        if batch == 1:
            return 0
        batch = max(1, batch // 2)
    good = batch
    bad = None
    while good < cap:
        batch = min(good * 2, cap)
        if fits(batch):
            good = batch
        else:
            bad = batch
            break
    if bad is None:
        return good
    while bad - good > max(granularity, int(good * 0.03)):
        middle = (good + bad) // 2
        middle -= middle % granularity if middle > granularity else 0
        if middle <= good:
            break
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


# ----------------------------------------------------------------------------------------------------------- worker


def build_model(impl: str, shape: Shape):
    """One of the three implementations at `shape`, with a `NUM_LABELS`-way head and Google's LayerNorm epsilon."""
    ours_options = {
        "ViT": {},
        "DINOv2": {"layer_scale_init_value": 1e-5},
        "SigLIP": {"use_cls_token": False, "pooling": "map"},
    }[shape.family]
    if impl == "ours":
        from vit_accel import ViTAccelConfig, ViTAccelForImageClassification

        config = ViTAccelConfig(
            hidden_size=shape.width,
            num_hidden_layers=shape.depth,
            num_attention_heads=shape.heads,
            intermediate_size=shape.mlp,
            image_size=shape.image_size,
            patch_size=shape.patch,
            num_labels=NUM_LABELS,
            **ours_options,
        )
        return ViTAccelForImageClassification(config)
    if impl == "transformers" and shape.family != "ViT":
        import transformers

        common = dict(
            hidden_size=shape.width,
            num_hidden_layers=shape.depth,
            num_attention_heads=shape.heads,
            intermediate_size=shape.mlp,
            image_size=shape.image_size,
            patch_size=shape.patch,
            layer_norm_eps=1e-6,
        )
        if shape.family == "DINOv2":
            config = transformers.Dinov2Config(
                **{k: v for k, v in common.items() if k != "intermediate_size"},
                mlp_ratio=shape.mlp // shape.width,  # an int in transformers' config
                layerscale_value=1e-5,
                num_labels=NUM_LABELS,
                attn_implementation="sdpa",
            )
            return transformers.Dinov2ForImageClassification(config)
        vision = transformers.SiglipVisionConfig(**common)
        config = transformers.SiglipConfig(vision_config=vision.to_dict(), num_labels=NUM_LABELS)
        config._attn_implementation = "sdpa"
        return transformers.SiglipForImageClassification(config)
    if impl == "transformers":
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(
            hidden_size=shape.width,
            num_hidden_layers=shape.depth,
            num_attention_heads=shape.heads,
            intermediate_size=shape.mlp,
            image_size=shape.image_size,
            patch_size=shape.patch,
            num_labels=NUM_LABELS,
            layer_norm_eps=1e-6,
            attn_implementation="sdpa",
        )
        return ViTForImageClassification(config)
    if impl == "timm":
        from timm.models.vision_transformer import VisionTransformer

        timm_options = {
            "ViT": {},
            "DINOv2": {"init_values": 1e-5},
            "SigLIP": {"class_token": False, "global_pool": "map"},
        }[shape.family]
        return VisionTransformer(
            img_size=shape.image_size,
            patch_size=shape.patch,
            embed_dim=shape.width,
            depth=shape.depth,
            num_heads=shape.heads,
            mlp_ratio=shape.mlp / shape.width,
            num_classes=NUM_LABELS,
            **timm_options,
        )
    raise ValueError(f"Unknown implementation {impl!r}.")


def _status_bytes(field_name: str) -> int:
    """A `/proc/self/status` memory field (VmRSS, VmHWM) in bytes; 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _is_oom(error: BaseException) -> bool:
    message = str(error)
    return "out of memory" in message or "ALLOC_FAILED" in message


class Trainer:
    """One model's training step on fixed synthetic data (seeded), with timing and memory readings."""

    def __init__(
        self,
        impl: str,
        shape: Shape,
        batch: int,
        device: str,
        dtype: str,
        compile_backend: str | None,
        clock: str = "wall",
    ):
        import torch

        self.torch = torch
        # "cpu": this process's CPU time, which does not count the time the scheduler gives other processes' jobs (a
        # shared machine's load), only what the steps themselves compute; CPU device only.
        self.clock = time.process_time if clock == "cpu" else time.perf_counter
        self.device = torch.device(device)
        self.impl, self.shape, self.compile_backend = impl, shape, compile_backend
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[dtype]
        self.pixels, self.labels = self.make_inputs(batch)
        # Build (and drop) a one-block model first: lazy imports and one-time library set-up are not the model's
        # memory, and would otherwise count in the peak of whichever implementation pulls in more modules.
        build_model(impl, Shape("Mini", 8, 1, 1, 8, shape.patch, shape.patch, shape.family))
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_base = _status_bytes("VmRSS")
        self.rss_reset = _reset_peak_rss()
        torch.manual_seed(0)
        model = build_model(impl, shape).to(self.device).train()
        # Fused AdamW everywhere: one multi-tensor kernel on CUDA; on the CPU torch's fused kernel took 18 ms per step
        # against 57 ms for the default per-tensor loop (S/16, 150 tensors), time that would dilute the models' share.
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        self.model = model
        self.forward = torch.compile(model, backend=compile_backend) if compile_backend else model

    def make_inputs(self, batch: int):
        generator = self.torch.Generator().manual_seed(1234)
        size = self.shape.image_size
        pixels = self.torch.randn(batch, 3, size, size, generator=generator)
        labels = self.torch.randint(0, NUM_LABELS, (batch,), generator=generator)
        return pixels.to(self.device), labels.to(self.device)

    def step(self) -> None:
        torch = self.torch
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            output = self.forward(self.pixels)
        logits = output if isinstance(output, torch.Tensor) else output.logits
        loss = torch.nn.functional.cross_entropy(logits.float(), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps on `clock`, the device drained before and after."""
        self.sync()
        start = self.clock()
        for _ in range(steps):
            self.step()
        self.sync()
        return self.clock() - start

    def peak_memory(self) -> int:
        """Peak bytes: CUDA allocator peak, or the CPU peak RSS above the resident set before the model existed."""
        if self.device.type == "cuda":
            return int(self.torch.cuda.max_memory_allocated(self.device))
        if self.rss_reset:
            return max(_status_bytes("VmHWM") - self.rss_base, 0)
        import resource  # no clear_refs: the process' whole peak (includes the interpreter and libraries)

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def fits(self, batch: int, steps: int = 2) -> bool:
        """Whether `steps` training steps at `batch` run without running out of device memory."""
        torch = self.torch
        self.pixels = self.labels = None
        gc.collect()
        ok = True
        try:
            self.pixels, self.labels = self.make_inputs(batch)
            self.run(steps)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            # cuBLAS/cuDNN report a failed workspace allocation as a plain RuntimeError.
            if not isinstance(error, torch.OutOfMemoryError) and not _is_oom(error):
                raise
            ok = False
        if not ok:  # outside the except block, so the traceback's frames no longer hold activations
            self.pixels = self.labels = None
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return ok


def worker_main(
    conn, impl: str, shape: Shape, batch: int, device: str, dtype: str, backend, threads: int, clock: str = "wall"
) -> None:
    """Serve requests from the parent over `conn` until "stop": warmup/time/memory/maxbatch."""
    import torch

    torch.set_num_threads(threads)
    try:
        trainer = Trainer(impl, shape, batch, device, dtype, backend, clock)
        conn.send(("ready", None))
    except Exception as error:  # reported to the parent, which prints it in the table instead of a number
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        request, argument = conn.recv()
        try:
            if request == "stop":
                return
            if request in ("warmup", "time"):
                reply = trainer.run(argument)
                if device.startswith("cuda") and request == "warmup":
                    torch.cuda.empty_cache()  # the others may warm up at the same time: hand cached blocks back
            elif request == "memory":
                reply = trainer.peak_memory()
            elif request == "maxbatch":
                start, cap = argument
                torch.cuda.empty_cache() if device.startswith("cuda") else None
                best = largest_batch(trainer.fits, start, cap)
                peak = None
                if best:
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    trainer.fits(best, steps=1)
                    peak = trainer.peak_memory()
                reply = (best, peak)
            else:
                raise ValueError(f"unknown request {request!r}")
            conn.send(("ok", reply))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


# ----------------------------------------------------------------------------------------------------------- parent


@dataclass
class Result:
    """One implementation in one row: per-round rates, peak memory, or the error that stopped it."""

    impl: str
    rates: list[float] = field(default_factory=list)
    peak_bytes: int | None = None
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


@dataclass
class Row:
    shape: str
    mode: str
    batch: int
    results: dict[str, Result]
    flops_per_image: float
    ratio_speed: float | None = None  # median over rounds of ours / faster peer
    ratio_memory: float | None = None  # ours' peak / the smaller peer peak


@dataclass
class MaxBatch:
    shape: str
    impl: str
    batch: int | None
    peak_bytes: int | None
    error: str | None = None
    cap: int = 0


class Workers:
    """One worker process per implementation, answering requests in turn."""

    def __init__(self, impls, shape: Shape, batch: int, args, backend: str | None) -> None:
        context = multiprocessing.get_context(args.start_method)
        self.connections, self.processes, self.errors = {}, {}, {}
        for impl in impls:
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(child, impl, shape, batch, args.device, args.dtype, backend, args.threads, args.clock),
                # Not daemonic: inductor may start compile-worker processes, which daemonic processes cannot have.
                # `close` (always called) stops them; run_gpu.py kills the whole process group at its time limit.
                daemon=False,
            )
            process.start()
            self.connections[impl], self.processes[impl] = parent, process
        for impl in impls:
            self._reply(impl)

    def _reply(self, impl: str):
        if impl in self.errors:
            return None
        try:
            status, value = self.connections[impl].recv()
        except EOFError:  # the worker died (killed for memory, a crash in a kernel)
            status, value = "error", f"worker exited with code {self.processes[impl].exitcode}"
        if status == "error":
            self.errors[impl] = value
            return None
        return value

    def ask(self, impl: str, request: str, argument=None):
        if impl in self.errors:
            return None
        self.connections[impl].send((request, argument))
        return self._reply(impl)

    def ask_all(self, request: str, argument=None) -> dict:
        """Send to every worker first, then collect: they work at the same time (warm-up, compilation)."""
        live = [impl for impl in self.connections if impl not in self.errors]
        for impl in live:
            self.connections[impl].send((request, argument))
        return {impl: self._reply(impl) for impl in live}

    def close(self) -> None:
        for impl, connection in self.connections.items():
            if impl not in self.errors:
                with contextlib.suppress(BrokenPipeError, OSError):
                    connection.send(("stop", None))
        for process in self.processes.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def measure_row(shape: Shape, batch: int, mode: str, args) -> Row:
    """Interleaved rounds of the three implementations at one shape/batch/mode."""
    backend = args.compile_backend if mode == "compiled" else None
    workers = Workers(args.impls, shape, batch, args, backend)
    results = {impl: Result(impl) for impl in args.impls}
    round_ratios = []
    try:
        warmup = args.warmup + (args.compile_warmup if backend else 0)
        workers.ask_all("warmup", warmup)
        for _ in range(args.rounds):
            seconds = {impl: workers.ask(impl, "time", args.steps) for impl in args.impls}
            rates = {impl: batch * args.steps / s for impl, s in seconds.items() if s}
            for impl, rate in rates.items():
                results[impl].rates.append(rate)
            peers = [rates[p] for p in PEERS if p in rates]
            if "ours" in rates and peers:
                round_ratios.append(rates["ours"] / max(peers))
        for impl, peak in workers.ask_all("memory").items():
            results[impl].peak_bytes = peak
    finally:
        workers.close()
    for impl, error in workers.errors.items():
        results[impl].error = error
    row = Row(shape.name, mode, batch, results, train_flops_per_image(shape))
    if round_ratios:
        row.ratio_speed = statistics.median(round_ratios)
    peer_peaks = [results[p].peak_bytes for p in PEERS if p in results and results[p].peak_bytes]
    if "ours" in results and results["ours"].peak_bytes and peer_peaks:
        row.ratio_memory = results["ours"].peak_bytes / min(peer_peaks)
    return row


def measure_max_batch(shape: Shape, start: int, args) -> list[MaxBatch]:
    """Largest eager batch for each implementation, one worker at a time (each alone on the device)."""
    found = []
    for impl in args.impls:
        workers = Workers([impl], shape, 1, args, None)
        try:
            reply = workers.ask(impl, "maxbatch", (start, args.max_batch_cap))
        finally:
            workers.close()
        if reply is None:
            found.append(MaxBatch(shape.name, impl, None, None, workers.errors.get(impl), args.max_batch_cap))
        else:
            found.append(MaxBatch(shape.name, impl, reply[0], reply[1], None, args.max_batch_cap))
    return found


# ------------------------------------------------------------------------------------------------------------ table


def _mib(value: int | None) -> str:
    return f"{value / 2**20:,.0f}" if value else "-"


def format_tables(rows: list[Row], max_batches: list[MaxBatch], peak: float | None, skipped: list[str]) -> str:
    """The markdown tables: throughput/memory per row and, when measured, the largest batches."""
    mfu = peak is not None
    head = "| shape | mode | batch | model | images/s (median) | ours / faster peer | peak memory MiB"
    head += " | ours / smaller peer | TFLOP/s |" + (" MFU (989) | MFU (800) |" if mfu else "")
    columns = head.count("|") - 1
    lines = [head, "|" + "|".join(["---"] * 3 + ["---"] + ["---:"] * (columns - 4)) + "|"]
    for row in rows:
        for impl, result in row.results.items():
            cells = [row.shape, row.mode, str(row.batch), impl]
            if result.median is None:
                cells += [f"failed: {result.error}"] + [""] * (columns - 5)
                lines.append("| " + " | ".join(cells) + " |")
                continue
            ours = impl == "ours"
            speed = f"{row.ratio_speed:.2f}x" if ours and row.ratio_speed is not None else ""
            memory = f"{row.ratio_memory:.2f}x" if ours and row.ratio_memory is not None else ""
            achieved = result.median * row.flops_per_image
            cells += [f"{result.median:,.1f}", speed, _mib(result.peak_bytes), memory, f"{achieved / 1e12:.3g}"]
            if mfu:
                cells += [f"{achieved / peak:.1%}", f"{achieved / MEASURED_PEAK_BF16:.1%}"]
            lines.append("| " + " | ".join(cells) + " |")
    if max_batches:
        lines += ["", "| shape | model | largest batch (eager) | peak memory MiB at it |", "|---|---|---:|---:|"]
        for item in max_batches:
            if item.batch is None:
                lines.append(f"| {item.shape} | {item.impl} | failed: {item.error} | |")
            else:
                batch = f"≥ {item.batch:,} (cap)" if item.batch >= item.cap else f"{item.batch:,}"
                lines.append(f"| {item.shape} | {item.impl} | {batch} | {_mib(item.peak_bytes)} |")
    for note in skipped:
        lines.append(f"\nSkipped: {note}")
    return "\n".join(lines) + "\n"


def environment(args) -> dict:
    """Machine, versions, date and command for the record."""
    import timm
    import torch
    import transformers

    device = "cpu"
    if args.device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        device = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"
    else:
        device = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} threads"
    return {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "bench/train_step.py", *sys.argv[1:]]),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shapes", nargs="+", help="e.g. B/16@224:256 (shape:batch); defaults per device")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="autocast dtype (default bf16 on CUDA)")
    parser.add_argument("--modes", nargs="+", choices=("eager", "compiled"), help="default: both on CUDA, eager here")
    parser.add_argument("--compile_backend", "--compile-backend", default="inductor")
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5 on CUDA, 7 on the CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default 10 on CUDA, 2 on the CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the first round")
    parser.add_argument(
        "--compile_warmup", "--compile-warmup", type=int, default=2, help="extra warm-up steps for compiled models"
    )
    parser.add_argument(
        "--max_batch", "--max-batch", action=argparse.BooleanOptionalAction, help="search the largest batch (CUDA)"
    )
    parser.add_argument("--max_batch_cap", "--max-batch-cap", type=int, default=4096)
    # One thread on the CPU by default: on this shared 2-core VM, 2-thread rounds varied up to 13x (OpenMP threads
    # waiting on a core a neighbour holds), 1-thread rounds by a few percent.
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: all cores on CUDA, 1 here)")
    parser.add_argument(
        "--time_budget", "--time-budget", type=float, default=float("inf"), help="start no new row after this (s)"
    )
    parser.add_argument(
        "--start_method", "--start-method", help="multiprocessing start method (default: fork on CPU, spawn on CUDA)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time the steps by the wall clock, or (CPU only) by each worker's own CPU time, which leaves out the "
        "time other processes hold the cores on a shared machine",
    )
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument(
        "--dry_run", "--dry-run", action="store_true", help="tiny shapes on the CPU, one round: a smoke test"
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and args.clock == "cpu":
        parser.error("--clock cpu times CPU runs (a CUDA step's time is the device's, not the process's)")
    if args.dry_run:
        if cuda:
            parser.error("--dry_run runs on the CPU")
        args.shapes = args.shapes or [f"{s}:{b}" for s, b in DRY_RUN_SHAPES]
        # Dynamo's own "eager" backend: the compiled path's tracing (and any graph break) without inductor's C++
        # code generation, which takes minutes on 2 cores.
        args.modes = args.modes or ["eager", "compiled"]
        args.compile_backend = "eager" if args.compile_backend == "inductor" else args.compile_backend
        args.rounds, args.steps, args.warmup, args.compile_warmup = args.rounds or 2, args.steps or 1, 1, 1
        args.max_batch = True if args.max_batch is None else args.max_batch
        args.max_batch_cap = min(args.max_batch_cap, 16)
    defaults = CUDA_SHAPES if cuda else CPU_SHAPES
    args.shapes = args.shapes or [f"{s}:{b}" for s, b in defaults]
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.modes = args.modes or (["eager", "compiled"] if cuda else ["eager"])
    args.threads = args.threads or ((os.cpu_count() or 1) if cuda else 1)
    args.rounds = args.rounds or (5 if cuda else 9)
    args.steps = args.steps or (10 if cuda else 2)
    args.max_batch = cuda if args.max_batch is None else args.max_batch
    args.start_method = args.start_method or ("spawn" if cuda else "fork")
    parsed = []
    for spec in args.shapes:
        name, _, batch = spec.partition(":")
        parsed.append((parse_shape(name), int(batch or 16)))
    args.parsed_shapes = parsed
    return args


def plan(args) -> list[tuple[str, Shape, int]]:
    """Work items, most important first, so that a time budget cuts the least useful ones: every shape eager (cheap),
    then the first shape compiled and its largest batch, then the other shapes compiled, then their largest batches."""
    shapes = args.parsed_shapes
    compiled = [("compiled", shape, batch) for shape, batch in shapes] if "compiled" in args.modes else []
    largest = [("maxbatch", shape, batch) for shape, batch in shapes] if args.max_batch else []
    items = [("eager", shape, batch) for shape, batch in shapes] if "eager" in args.modes else []
    return items + compiled[:1] + largest[:1] + compiled[1:] + largest[1:]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    env = environment(args)
    peak = paper_peak(env["device"]) if args.device.startswith("cuda") else None
    start = time.perf_counter()
    rows: list[Row] = []
    max_batches: list[MaxBatch] = []
    skipped: list[str] = []
    header = (
        f"Train step, {args.dtype}, AdamW; {env['device']}; torch {env['torch']}, transformers "
        f"{env['transformers']}, timm {env['timm']}; {args.rounds} rounds x {args.steps} steps after "
        f"{args.warmup} warm-up; {env['date']}"
        + ("; images/s by each worker's CPU time (--clock cpu)" if args.clock == "cpu" else "")
    )
    record: dict = {}
    for kind, shape, batch in plan(args):
        print(f"[train_step] {time.perf_counter() - start:6.1f} s: {shape.name} {kind}", file=sys.stderr, flush=True)
        if time.perf_counter() - start > args.time_budget:
            skipped.append(f"{shape.name} {kind} (time budget {args.time_budget:.0f} s spent)")
        elif kind == "maxbatch":
            max_batches += measure_max_batch(shape, batch, args)
        else:
            rows.append(measure_row(shape, batch, kind, args))
        table = format_tables(rows, max_batches, peak, skipped)
        record = {
            "environment": env,
            "header": header,
            "rows": [asdict(row) | {"medians": {k: r.median for k, r in row.results.items()}} for row in rows],
            "max_batches": [asdict(item) for item in max_batches],
            "skipped": skipped,
            "peak_flops": peak,
            "seconds": time.perf_counter() - start,
        }
        if args.out:  # rewritten after every row, so a run cut short still leaves what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(f"{header}\n\n{table}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
    record["environment"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(header)
    print()
    print(format_tables(rows, max_batches, peak, skipped), end="")
    print(f"\n({time.perf_counter() - start:.0f} s; load average at start {env['load_average']}, end "
          f"{record['environment']['load_average_end']})")  # fmt: skip
    return record


if __name__ == "__main__":
    main()

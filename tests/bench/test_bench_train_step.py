"""The train-step benchmark's arithmetic and planning: FLOPs per image, MFU peaks, the largest-batch search."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_shapes_parse(bench):
    shape = bench.parse_shape("B/16@224")
    assert (shape.width, shape.depth, shape.heads, shape.mlp, shape.patch, shape.image_size) == (
        768, 12, 12, 3072, 16, 224
    )  # fmt: skip
    assert shape.tokens == 197
    assert bench.parse_shape("L/16@384").tokens == 577
    for bad in ("X/16@224", "B16@224", "B/16@230"):
        with pytest.raises(ValueError):
            bench.parse_shape(bad)


@pytest.mark.parametrize("name", ["B/16@224", "B/32@224", "L/16@224", "L/32@224", "B/16@384", "L/16@384"])
def test_counted_flops_agree_with_the_reference_table(bench, name):
    # The published figures are 6 x timm's forward GMACs; our count (matmuls only) must land within 1% of it.
    counted = 6 * bench.forward_macs(bench.parse_shape(name), num_labels=1000)
    assert counted == pytest.approx(bench.REFERENCE_TRAIN_FLOPS[name], rel=0.01)


def test_a_shape_without_a_published_figure_is_counted(bench):
    # The MFU of a shape outside the table rests on our own count: 6 x forward MACs with the benchmark's head.
    shape = bench.parse_shape("S/16@96")
    assert shape.name not in bench.REFERENCE_TRAIN_FLOPS
    assert bench.train_flops_per_image(shape) == 6 * bench.forward_macs(shape, num_labels=bench.NUM_LABELS)
    assert bench.train_flops_per_image(shape) < bench.train_flops_per_image(bench.parse_shape("B/16@224")) / 10


def test_mfu_peak_by_card_name(bench):
    assert bench.paper_peak("NVIDIA H100 80GB HBM3, 79 GiB") == 989e12
    assert bench.paper_peak("NVIDIA H200, 140 GiB") == 989e12
    assert bench.paper_peak("Tesla V100-SXM2-32GB") is None


@pytest.mark.parametrize("limit", [1, 7, 100, 1000, 1013, 4096, 5000])
def test_largest_batch_search(bench, limit):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= limit

    found = bench.largest_batch(fits, start=64, cap=4096)
    assert found <= min(limit, 4096)
    # Exact below the granularity, else within 8 or 3% of the true limit.
    assert min(limit, 4096) - found <= max(8, int(0.03 * found))
    assert len(tried) <= 16
    assert bench.largest_batch(lambda batch: False, start=64, cap=4096) == 0


def test_plan_orders_by_importance_and_table_marks_failures(bench):
    args = bench.parse_args(["--device", "cuda", "--json", "/dev/null"])
    kinds = [(kind, shape.name) for kind, shape, _ in bench.plan(args)]
    assert kinds[:4] == [("eager", s) for s in ("B/16@224", "B/32@224", "L/16@224", "B/16@384")]
    assert kinds[4:6] == [("compiled", "B/16@224"), ("maxbatch", "B/16@224")]
    assert len(kinds) == 12

    results = {
        "ours": bench.Result("ours", rates=[110.0, 100.0, 120.0], peak_bytes=2**30),
        "transformers": bench.Result("transformers", rates=[90.0], peak_bytes=2**31),
        "timm": bench.Result("timm", error="OutOfMemoryError: CUDA out of memory"),
    }
    row = bench.Row("B/16@224", "eager", 256, results, 105.5e9, ratio_speed=1.2, ratio_memory=0.5)
    table = bench.format_tables([row], [bench.MaxBatch("B/16@224", "ours", 1024, 60 * 2**30, cap=4096)], 989e12, [])
    lines = table.splitlines()
    assert lines[0].count("|") == lines[2].count("|") == 12
    assert "| ours | 110.0 | 1.20x | 1,024 | 0.50x | 11.6 | 1.2% | 1.5% |" in table
    assert "| timm | failed: OutOfMemoryError" in table
    assert "| B/16@224 | ours | 1,024 | 61,440 |" in table


def test_trainer_fits_treats_out_of_memory_as_too_big(bench, monkeypatch):
    import torch

    trainer = bench.Trainer("ours", bench.parse_shape("Mini/8@32"), 2, "cpu", "fp32", None)
    assert trainer.run(1) > 0 and trainer.peak_memory() > 0
    real_run = trainer.run

    def run(steps):
        if trainer.pixels.shape[0] > 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if trainer.pixels.shape[0] > 10:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real_run(steps)

    monkeypatch.setattr(trainer, "run", run)
    assert bench.largest_batch(trainer.fits, start=4, cap=64, granularity=1) == 10
    assert trainer.fits(8) and trainer.pixels.shape[0] == 8
    monkeypatch.setattr(trainer, "run", lambda steps: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # anything else is a real failure, not "too big"
        trainer.fits(4)


def test_family_shapes_parse_and_build_the_same_model_in_ours_and_timm(bench):
    dino, siglip = bench.parse_shape("DINOv2-Mini/8@32"), bench.parse_shape("SigLIP-Mini/8@32")
    assert (dino.family, dino.tokens, siglip.family, siglip.tokens) == ("DINOv2", 17, "SigLIP", 16)
    with pytest.raises(ValueError, match="FAMILY in ViT, DINOv2, SigLIP"):
        bench.parse_shape("EVA-S/16@96")
    for shape in (dino, siglip):
        ours, timm = bench.build_model("ours", shape), bench.build_model("timm", shape)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in timm.parameters()), shape.name
        assert bench.build_model("transformers", shape) is not None


def test_flags_take_underscores(bench):
    args = bench.parse_args(["--dry_run", "--time_budget", "5", "--compile_backend", "eager"])
    assert (args.dry_run, args.time_budget, args.compile_backend) == (True, 5.0, "eager")


def test_cpu_clock_counts_the_steps_computing_not_the_time_waited(bench, monkeypatch):
    """On a shared machine a step's wall time includes the time others' jobs hold the core; `--clock cpu` counts the
    worker's own CPU time. A step that waits (sleeps) for 0.3 s takes 0.3 s of wall time and almost no CPU time."""
    import time

    shape = bench.parse_shape("Mini/8@32")
    wall, cpu = (bench.Trainer("ours", shape, 2, "cpu", "fp32", None, clock) for clock in ("wall", "cpu"))
    for trainer in (wall, cpu):
        monkeypatch.setattr(trainer, "step", lambda: time.sleep(0.3))
    assert wall.run(1) >= 0.3 and cpu.run(1) < 0.1
    assert bench.parse_args(["--clock", "cpu"]).clock == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cuda", "--clock", "cpu"])

"""The data-pipeline benchmark runs and its pipelines produce what they claim (tiny sizes)."""

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data_pipeline.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_data_pipeline", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_pipelines_and_measure():
    bench = load_bench()
    encoded = bench.make_images(8)
    arrays = [bench.np.asarray(bench.decode(data)) for data in encoded]
    seed = bench.seed_order(64, "array")(arrays)
    assert seed.shape == (8, 3, 64, 64) and seed.dtype == torch.float32
    collated = bench.ours(64, "png", "collate")(encoded)
    assert collated.shape == (8, 3, 64, 64) and collated.dtype == torch.uint8
    device = bench.ours(64, "array", "device")(arrays)
    assert device.shape == (8, 3, 32, 32) and device.dtype == torch.uint8
    full = bench.ours(64, "png", "full")(encoded)
    assert full.shape == (8, 3, 64, 64) and full.dtype == torch.float32
    assert bench.ours_dataset(64, encoded)(encoded[:4]).shape == (4, 3, 64, 64)
    rates = bench.measure({"a": (bench.ours(64, "array", "device"), arrays)}, batch_size=4, repeats=2)
    assert len(rates["a"]) == 2 and min(rates["a"]) > 0

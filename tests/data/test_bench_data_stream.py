"""The streaming data benchmark runs end to end on tiny inputs and reports every path."""

import importlib.util
from pathlib import Path

from vit_accel.data.arguments import decoder_installed
from vit_accel.data.decode import FAST_DECODERS, auto_decoder

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data_stream.py"


def test_benchmark_reports_every_path(capsys):
    spec = importlib.util.spec_from_file_location("bench_data_stream", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--num_images", "8", "--sizes", "300x240", "--batch_size", "2", "--repeats", "1"])
    rates = report["results"]["300x240"]
    expected = {"torchvision ImageFolder", "datasets map-style rows + torchvision", "ours stream webdataset (pil)"}
    expected |= {f"ours map-style ({decoder})" for decoder in ("pil", *FAST_DECODERS) if decoder_installed(decoder)}
    assert expected | {f"ours ImageFolder (auto = {auto_decoder('inception')})"} <= set(rates)
    assert all(rate["cpu"] > 0 and rate["wall"] > 0 and len(rate["rounds"]) == 1 for rate in rates.values())
    assert "vs rows" in capsys.readouterr().out
    # The loader's ceiling: ours' fastest path with one worker per core, against a GPU's ViT-B/16 appetite.
    top = report["ceiling"]["300x240"]
    fastest = max(rate["cpu"] for name, rate in rates.items() if name.startswith("ours"))
    assert top["per_worker"] == fastest and top["images_per_s"] == fastest * top["workers"]
    assert top["fraction_fed"] == top["images_per_s"] / top["appetite"]
    assert (top["workers_needed"] - 1) * fastest < top["appetite"] <= top["workers_needed"] * fastest
    assert top["workers_needed_torchvision"] >= 1
    assert 3_700 < bench.gpu_appetite(0.4) < 3_800  # 40% of 989 TFLOP/s over ~105 GFLOP an image

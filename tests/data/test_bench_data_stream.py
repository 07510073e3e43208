"""The streaming data benchmark runs end to end on tiny inputs and reports every path."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "data_stream.py"


def test_benchmark_reports_every_path(capsys):
    spec = importlib.util.spec_from_file_location("bench_data_stream", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--num_images", "8", "--sizes", "300x240", "--batch_size", "2", "--repeats", "1"])
    rates = report["results"]["300x240"]
    expected = {"torchvision ImageFolder", "datasets map-style rows + torchvision", "ours stream webdataset (pil)"}
    expected |= {f"ours map-style ({decoder})" for decoder in ("pil", "pil_draft", "simplejpeg")}
    assert expected | {"ours ImageFolder (auto = simplejpeg)"} <= set(rates)
    assert all(rate["cpu"] > 0 and rate["wall"] > 0 and len(rate["rounds"]) == 1 for rate in rates.values())
    assert "vs rows" in capsys.readouterr().out

"""The GPU script's dry run: the three benchmarks on tiny shapes on the CPU, through the same code paths as on the GPU
(worker processes, interleaved rounds, compiled rows, the largest-batch search, train.py with the loader timers)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run_writes_the_three_tables(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/run_gpu.py", "--dry_run", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert "### train_step (finished" in report and "### end_to_end (finished" in report
    assert "### data_loading (finished" in report and "Ceiling here:" in report
    data = json.loads((tmp_path / "data_loading.json").read_text())
    assert data["ceiling"]["300x240"]["workers_needed"] >= 1

    step = json.loads((tmp_path / "train_step.json").read_text())
    assert [(row["shape"], row["mode"]) for row in step["rows"]] == [("Mini/8@32", "eager"), ("Mini/8@32", "compiled")]
    for row in step["rows"]:
        assert set(row["results"]) == {"ours", "transformers", "timm"}
        for result_ in row["results"].values():
            assert result_["error"] is None
            assert len(result_["rates"]) == 2 and min(result_["rates"]) > 0
            assert result_["peak_bytes"] > 0
        assert row["ratio_speed"] > 0 and row["ratio_memory"] > 0
    assert [item["impl"] for item in step["max_batches"]] == ["ours", "transformers", "timm"]
    assert all(item["batch"] == 16 and item["peak_bytes"] > 0 for item in step["max_batches"])
    table = (tmp_path / "train_step.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| Mini/8@32 | eager") or line.startswith("| Mini/8@32 | comp")]
    assert len(rows) == 6 and all(line.count("|") == 10 for line in rows)

    e2e = json.loads((tmp_path / "end_to_end.json").read_text())
    assert e2e["train_steps"] == 8 and e2e["steps_timed"] == 6  # the 2 first steps left out
    assert e2e["images_per_second"] > 0 and e2e["logged_images_per_second"] > 0
    assert 0 < e2e["data_wait_fraction"] < 1
    assert "| CPU" in (tmp_path / "end_to_end.md").read_text()

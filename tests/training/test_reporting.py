import json

import pytest

from vit_accel.errors import UserError
from vit_accel.training.reporting import JsonlLog


def test_a_torn_last_line_is_dropped_saying_so_and_rewritten_away(tmp_path, caplog):
    log = JsonlLog(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    with log.path.open("a") as handle:  # an append cut short by a full disk
        handle.write('{"step": 4, "lo')
    assert [r["step"] for r in log.records()] == [1, 2, 3]
    assert "dropping its torn last line" in caplog.text and str(log.path) in caplog.text
    log.truncate_after(2)  # what a resume from step 2 does first
    assert log.path.read_text().endswith("\n") and [r["step"] for r in log.records()] == [1, 2]
    log.write({"step": 3, "loss": 0.3})
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2, 3]
    log.truncate_after(0)  # a fresh run over an old one
    assert log.records() == []


def test_a_corrupt_line_in_the_middle_names_the_file_and_line(tmp_path):
    log = JsonlLog(tmp_path, enabled=True)
    log.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"log.jsonl, line 2: not a JSON record"):
        log.records()


def test_a_claimed_directory_keeps_nothing_of_the_final_save_it_replaces(tmp_path):
    from types import SimpleNamespace

    from accelerate import PartialState

    from vit_accel.training.reporting import Reporter

    PartialState(cpu=True)  # accelerate's logger needs it

    for name in ("config.json", "model.safetensors", "adapter_config.json", "all_results.json", "README.md"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "model-00001-of-00002.safetensors").write_text("")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "model.safetensors").write_text("")
    (tmp_path / "notes.txt").write_text("mine")  # not a run's output: left alone
    (tmp_path / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    accelerator = SimpleNamespace(is_main_process=True, is_local_main_process=True)
    reporter = Reporter(accelerator, tmp_path, total_steps=4, initial_step=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "model.safetensors", "adapter_config.json", "all_results.json", "README.md", "merged",
         "model-00001-of-00002.safetensors", "notes.txt", "log.jsonl"]
    )  # fmt: skip
    try:
        reporter.claim()  # the run's first write: only now does the old run go
    finally:
        PartialState._reset_state()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_training_curves_show_the_learning_rate(tmp_path):
    import matplotlib.pyplot as plt

    from vit_accel.training.reporting import curves_figure, plot_curves

    records = [{"step": s, "loss": 2.0 / s, "lr": 1e-3 * min(1.0, s / 3)} for s in range(1, 7)]
    records.append({"step": 6, "eval_loss": 0.5, "eval_top1": 0.8, "eval_top5": 0.95})
    fig = curves_figure(records)
    (panel,) = [ax for ax in fig.axes if ax.get_title().startswith("Learning rate")]
    (line,) = panel.get_lines()
    assert list(line.get_xdata()) == list(range(1, 7)) and list(line.get_ydata()) == [r["lr"] for r in records[:6]]
    plt.close(fig)
    assert plot_curves(records, tmp_path / "curves.png").stat().st_size > 0

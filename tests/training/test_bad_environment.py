"""Environment variables a launcher sets, set by hand: one line naming the variable, before anything is written."""

from __future__ import annotations

import pytest
from test_bad_inputs import assert_one_line, tiny


@pytest.mark.parametrize(
    "value, expected",
    [("2", "WORLD_SIZE=2 is set, but not RANK, MASTER_ADDR, MASTER_PORT"), ("two", "WORLD_SIZE='two' is not a number")],
)
def test_a_world_size_without_a_launcher_is_named(value, expected, tmp_path, run_train, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", value)
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    code, stderr = run_train(tiny(tmp_path / "no-data", tmp_path / "out"))
    assert code == 2
    assert_one_line(stderr, "train.py", expected)
    assert not (tmp_path / "out").exists()

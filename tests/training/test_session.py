"""What train.py and pretrain.py share around their loops: the run's length, the trackers' configuration and the
command-line ending."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from vit_accel.errors import UserError
from vit_accel.training.loop import Interrupted
from vit_accel.training.session import run_cli, run_length, tracker_config


def lengths(**given) -> SimpleNamespace:
    values = dict(
        gradient_accumulation_steps=1, max_train_steps=None, num_train_epochs=2, checkpointing_steps=None,
        eval_steps=None,
    )  # fmt: skip
    return SimpleNamespace(**{**values, **given})


@pytest.mark.parametrize(
    "num_batches, given, expected",
    [
        (10, {}, (20, 2, 10, 0)),
        (10, {"gradient_accumulation_steps": 3}, (8, 2, 4, 0)),  # 4 optimizer steps an epoch (the last one short)
        (10, {"max_train_steps": 25, "checkpointing_steps": "epoch"}, (25, 3, 10, 10)),
        (10, {"max_train_steps": 5, "eval_steps": 2, "checkpointing_steps": "3"}, (5, 1, 2, 3)),
    ],
)
def test_run_length_counts_optimizer_steps(num_batches, given, expected):
    assert run_length(num_batches, lengths(**given)) == expected


def test_the_trackers_get_every_argument_set_but_the_token():
    from vit_accel.training.arguments import ModelArguments, TrainingArguments

    config = tracker_config(ModelArguments(), TrainingArguments(hub_token="hf_secret", seed=7))
    assert config["seed"] == 7 and "hub_token" not in config and "hf_secret" not in json.dumps(config)
    assert all(value is not None for value in config.values())


@pytest.mark.parametrize(
    "raised, status, line",
    [
        (UserError("--flag: wrong"), 2, "prog.py: error: --flag: wrong"),
        (Interrupted("interrupted at step 3"), 130, "prog.py: interrupted at step 3"),
        (KeyboardInterrupt(), 130, "prog.py: interrupted before training started; nothing was written."),
    ],
)
def test_the_command_line_ends_in_one_line_and_its_status(raised, status, line, capsys):
    def main():
        raise raised

    with pytest.raises(SystemExit) as exit_info:
        run_cli("prog.py", main)
    assert exit_info.value.code == status
    captured = capsys.readouterr()
    assert captured.err.strip() == line and captured.out == ""


def test_a_finished_run_prints_its_results_as_json(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    run_cli("prog.py", lambda: {"train_steps": 4})
    assert json.loads(capsys.readouterr().out) == {"train_steps": 4}

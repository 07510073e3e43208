"""--metric_for_best_model and --early_stopping_patience: Trainer's rules, kept in the TrainerState across a resume."""

import json
import shutil

import pytest
from launching import tiny_args

from vit_accel.errors import UserError
from vit_accel.training.best import check_metric, greater_is_better, metric_name, record_evaluation
from vit_accel.training.checkpointing import TrainerState


def test_metric_names_and_direction_follow_trainer():
    assert metric_name("top1") == "eval_top1" and metric_name("eval_loss") == "eval_loss"
    assert greater_is_better("eval_top1") and greater_is_better("top5") and not greater_is_better("loss")
    check_metric("ema_eval_top1", ema=True)
    with pytest.raises(UserError, match="--metric_for_best_model must be one of .*got 'accuracy'"):
        check_metric("accuracy", ema=False)
    with pytest.raises(UserError, match="with --ema_decay"):
        check_metric("ema_eval_top1", ema=False)


def test_a_loss_metric_improves_downwards_and_patience_counts_evaluations_in_a_row(tmp_path):
    state = TrainerState()
    stops = []
    for step, loss in enumerate([1.0, 0.8, 0.9, 0.7, 0.75, 0.7], start=1):
        state.completed_steps = step
        stops.append(record_evaluation(state, {"eval_loss": loss}, "eval_loss", patience=2))
    # Best 0.7 at step 4 (the count restarts); 0.75, then 0.7 again (equal is no improvement): stopped at step 6.
    assert (state.best_metric, state.best_step) == (0.7, 4)
    assert stops == [False, False, False, False, False, True] and state.early_stopped_at == 6
    (tmp_path / "trainer_state.json").write_text(state.to_json())
    read = TrainerState.from_file(tmp_path / "trainer_state.json")
    assert (read.evaluations_without_improvement, read.early_stopped_at) == (2, 6)


def test_early_stopping_ends_the_run_and_a_resume_stops_at_the_same_step(digits, tmp_path, run_train):
    # A learning rate too small to change any prediction: top-1 never improves after the first evaluation.
    settings = ["--learning_rate", "1e-12", "--max_train_steps", "12", "--eval_steps", "1", "--checkpointing_steps",
                "2", "--save_total_limit", "10", "--early_stopping_patience", "2"]  # fmt: skip
    out = tmp_path / "run"
    code, err = run_train(tiny_args(digits, out, *settings))
    assert code == 0, err
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_steps"] == 3 and results["early_stopped_at"] == 3
    assert (results["metric_for_best_model"], results["best_step"]) == ("eval_top1", 1)
    assert results["best_metric"] == results["eval_top1"]
    card = (out / "README.md").read_text()
    assert "| early_stopping_patience | 2 |" in card and "| metric_for_best_model | eval_top1 |" in card
    assert "stopped early at step 3: 2 evaluations in a row without improvement of eval_top1" in card

    # Resumed from the step-2 checkpoint (one evaluation without improvement counted): stops at step 3 again.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("all_results.json"))
    checkpoint = resumed / "checkpoint-2"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["evaluations_without_improvement"] == 1
    code, err = run_train(tiny_args(digits, resumed, *settings, "--resume_from_checkpoint", str(checkpoint)))
    assert code == 0, err
    again = json.loads((resumed / "all_results.json").read_text())
    for key in ("train_steps", "early_stopped_at", "best_step", "best_metric", "eval_top1", "eval_loss"):
        assert again[key] == results[key], key

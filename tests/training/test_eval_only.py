"""`train.py --eval_only`: the run's evaluation of a model or checkpoint, written without training."""

import json

from launching import tiny_args

RESULTS = ("eval_top1", "eval_top5", "eval_loss")


def test_eval_only_reproduces_the_runs_evaluation_from_its_model_and_its_checkpoint(digits, tmp_path, run_train):
    run = tmp_path / "run"
    settings = ["--max_train_steps", "4", "--eval_steps", "4", "--checkpointing_steps", "4"]
    code, err = run_train(tiny_args(digits, run, *settings))
    assert code == 0, err
    trained = json.loads((run / "all_results.json").read_text())
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".vit_accel.lock"}

    # From the checkpoint, into its own run directory: nothing of the run is rewritten.
    code, err = run_train(tiny_args(digits, run, *settings, "--eval_only", "--resume_from_checkpoint", "latest"))
    assert code == 0, err
    from_checkpoint = json.loads((run / "eval_results.json").read_text())
    assert from_checkpoint["checkpoint_step"] == 4 and from_checkpoint["eval_num_examples"] == 64
    for key in RESULTS:
        assert from_checkpoint[key] == trained[key], key
    skipped = (".vit_accel.lock", "eval_results.json")  # the lock is taken again by every run
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name not in skipped} == files

    # From the saved model (its trained head kept: the same labels), into a new directory.
    args = tiny_args(digits, tmp_path / "eval", "--eval_only")
    args[args.index("--model_name_or_path") + 1] = str(run)
    args.remove("--from_scratch")
    code, err = run_train(args)
    assert code == 0, err
    from_model = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert from_model["checkpoint_step"] is None and not (tmp_path / "eval" / "model.safetensors").exists()
    for key in RESULTS:
        assert from_model[key] == trained[key], key

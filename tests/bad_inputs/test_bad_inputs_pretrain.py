"""pretrain.py's mistakes: a mask ratio outside (0, 1), a decoder that does not fit, an option that needs labels, the
base rate together with the rate; each refused in one line naming the flag, before anything is read or written."""

from __future__ import annotations

import pytest
from bad_input_helpers import assert_one_line, snapshot
from factories import TINY
from launching import train_in_this_process

DECODER = ("--decoder_hidden_size", "16", "--decoder_num_hidden_layers", "1", "--decoder_num_attention_heads", "2")


def pretrain_argv(data, output_dir, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", TINY, *DECODER,
        "--dataset_name", str(data), "--max_train_samples", "32", "--max_eval_samples", "16",
        "--dataloader_num_workers", "0", "--per_device_train_batch_size", "16", "--max_train_steps", "2",
        "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


CASES = {
    "mask ratio 0": (["--mask_ratio", "0"], ["--mask_ratio must be in (0, 1)", "got 0.0"]),
    "mask ratio 1": (["--mask_ratio", "1"], ["--mask_ratio must be in (0, 1)", "got 1.0"]),
    "mask ratio negative": (["--mask_ratio", "-0.5"], ["--mask_ratio must be in (0, 1)"]),
    "mask ratio nan": (["--mask_ratio", "nan"], ["--mask_ratio must be in (0, 1)", "nan"]),
    "decoder heads not dividing its width": (
        ["--decoder_hidden_size", "24", "--decoder_num_attention_heads", "5"],
        ["--decoder_hidden_size (24) must be divisible by --decoder_num_attention_heads (5)"],
    ),
    "decoder width not a multiple of 4": (
        ["--decoder_hidden_size", "18", "--decoder_num_attention_heads", "2"],
        ["--decoder_hidden_size (18) must be a multiple of 4"],
    ),
    "decoder of no blocks": (["--decoder_num_hidden_layers", "0"], ["--decoder_num_hidden_layers must be a positive"]),
    "decoder of negative MLP width": (["--decoder_intermediate_size", "-4"], ["--decoder_intermediate_size"]),
    "label smoothing": (["--label_smoothing", "0.1"], ["--label_smoothing 0.1: pre-training has no labels"]),
    "mixup": (["--mixup_alpha", "0.8"], ["--mixup_alpha 0.8: pre-training has no labels"]),
    "cutmix": (["--cutmix_alpha", "1.0"], ["--cutmix_alpha 1.0: pre-training has no labels"]),
    "layer decay": (["--layer_decay", "0.65"], ["--layer_decay 0.65: pre-training has no labels"]),
    "lora": (["--peft", "lora"], ["--peft lora: pre-training has no labels"]),
    "ema": (["--ema_decay", "0.99"], ["--ema_decay 0.99: pre-training has no labels"]),
    "eval only": (["--eval_only"], ["--eval_only: pre-training has no labels"]),
    "num_labels": (["--config_overrides", TINY + ",num_labels=3"], ["--config_overrides num_labels", "no classes"]),
    "best model by top-1": (
        ["--metric_for_best_model", "eval_top1"],
        ["--metric_for_best_model eval_top1", "eval_loss"],
    ),
    "best model by top1": (["--metric_for_best_model", "top1"], ["--metric_for_best_model top1"]),
    "a label column": (["--label_column_name", "label"], ["--label_column_name 'label'", "reads no labels"]),
    "base rate and rate": (
        ["--base_learning_rate", "1e-3", "--learning_rate", "1e-3"],
        ["--base_learning_rate and --learning_rate: give one"],
    ),
    "base rate 0": (["--base_learning_rate", "0"], ["--base_learning_rate must be a positive number"]),
    "unknown flag": (["--mask_ratoi", "0.5"], ["--mask_ratoi"]),
}


@pytest.mark.parametrize("extra, expected", CASES.values(), ids=CASES.keys())
def test_pretraining_mistakes_are_one_line_naming_the_flag(extra, expected, digits, tmp_path, capsys):
    out = tmp_path / "out"
    argv = pretrain_argv(digits, out, *extra)
    if extra[0] == "--config_overrides":
        index = argv.index("--config_overrides")
        del argv[index : index + 2]
    before = snapshot(digits)
    assert train_in_this_process(argv, script="pretrain") == 2
    assert_one_line(capsys.readouterr().err, "pretrain.py", *expected)
    assert not out.exists() and snapshot(digits) == before

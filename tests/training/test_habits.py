"""Flags from transformers' Trainer and timm's train.py: exact aliases parse as ours, the rest name the replacement;
typos name the closest flag; a token given to a wrong flag is never echoed."""

import pytest
from factories import FAKE_TOKEN

from vit_accel.cli import main as cli
from vit_accel.errors import UserError
from vit_accel.training.arguments import parse_args
from vit_accel.training.habits import HABIT_FLAGS

BASE = ["--dataset_name", "data", "--output_dir", "out"]
# A valid value for each flag an alias stands for, and the field that must receive it.
VALUES = {
    "--checkpointing_steps": ("7", "checkpointing_steps", "7"),
    "--num_warmup_steps": ("3", "num_warmup_steps", 3),
    "--max_train_steps": ("5", "max_train_steps", 5),
    "--label_smoothing": ("0.1", "label_smoothing", 0.1),
    "--learning_rate": ("0.01", "learning_rate", 0.01),
    "--num_train_epochs": ("2", "num_train_epochs", 2),
    "--per_device_train_batch_size": ("4", "per_device_train_batch_size", 4),
    "--mixup_alpha": ("0.2", "mixup_alpha", 0.2),
    "--cutmix_alpha": ("0.3", "cutmix_alpha", 0.3),
    "--max_grad_norm": ("0.5", "max_grad_norm", 0.5),
    "--image_size": ("64", "image_size", 64),
    "--gradient_accumulation_steps": ("2", "gradient_accumulation_steps", 2),
    "--dataloader_num_workers": ("1", "dataloader_num_workers", 1),
}
ALIASES = [flag for flag, (ours, _) in HABIT_FLAGS.items() if ours is not None]
REFUSED = [flag for flag, (ours, _) in HABIT_FLAGS.items() if ours is None]


def _field(parsed, name):
    return next(getattr(group, name) for group in parsed if hasattr(group, name))


@pytest.mark.parametrize("flag", ALIASES)
def test_an_exact_alias_sets_our_flag(flag):
    value, name, expected = VALUES[HABIT_FLAGS[flag][0]]
    for spelling in {flag, flag.replace("_", "-")}:
        assert _field(parse_args([*BASE, spelling, value]), name) == expected, spelling
        if spelling.startswith("--"):
            assert _field(parse_args([*BASE, f"{spelling}={value}"]), name) == expected, spelling


@pytest.mark.parametrize("flag", REFUSED)
def test_another_habit_flag_names_its_replacement_in_one_line(flag):
    for spelling in {flag, flag.replace("_", "-")}:
        with pytest.raises(UserError) as caught:
            parse_args([*BASE, spelling, "1"])
        message = str(caught.value)
        assert "\n" not in message and spelling in message and HABIT_FLAGS[flag][1] in message


def test_precision_flags_point_at_accelerate_launch():
    with pytest.raises(UserError, match=r"--bf16: .*accelerate launch --mixed_precision bf16"):
        parse_args([*BASE, "--bf16"])


@pytest.mark.parametrize(
    ("typo", "closest"),
    [("--learning_rat", "--learning_rate"), ("--num_train_epoch", "--num_train_epochs"), ("--seeed", "--seed")],
)
def test_a_typo_names_the_closest_flag(typo, closest):
    with pytest.raises(UserError, match=f"{typo} \\(did you mean {closest}\\?\\)"):
        parse_args([*BASE, typo, "3"])


@pytest.mark.parametrize(
    "argv", [["--token", FAKE_TOKEN], ["--hub_tokn", FAKE_TOKEN], [f"--hub-tokn={FAKE_TOKEN}"], ["--tokn", FAKE_TOKEN]]
)
def test_a_token_given_to_a_wrong_flag_is_never_printed(argv):
    with pytest.raises(UserError) as caught:
        parse_args([*BASE, *argv])
    assert FAKE_TOKEN not in str(caught.value) and argv[0].split("=")[0] in str(caught.value)


def test_vit_accel_names_the_closest_flag_of_its_command(capsys):
    with pytest.raises(SystemExit) as caught:
        cli(["predict", "--model", "m", "--top-k", "3", "a.png"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "vit-accel predict: error:" in err and "--top-k (did you mean --top_k?)" in err
    with pytest.raises(SystemExit):
        cli(["evaluate", "--model", "m", "--hub_tokn", FAKE_TOKEN])
    assert FAKE_TOKEN not in capsys.readouterr().err

"""train.py's flags that would change nothing or contradict each other, and overrides that pretrained weights cannot
take: each refused in one line naming the flag, before the dataset is read (the dataset here does not even exist)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_bad_inputs import TINY, assert_one_line, tiny

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.errors import UserError
from vit_accel.training.arguments import parse_args

# A flag that only acts together with another, given without it: (extra flags, what the line must say).
WITHOUT_EFFECT = {
    "lora rank without peft": (["--lora_r", "4"], ["--lora_r 4 needs --peft lora"]),
    "lora alpha without peft": (["--lora_alpha", "32"], ["--lora_alpha 32.0 needs --peft lora"]),
    "lora dropout without peft": (["--lora_dropout", "0"], ["--lora_dropout 0.0 needs --peft lora"]),
    "lora targets without peft": (["--lora_target_modules", "fc1"], ["--lora_target_modules fc1 needs --peft lora"]),
    "dora without peft": (["--use_dora"], ["--use_dora needs --peft lora"]),
    "ema warm-up without an ema": (["--ema_warmup"], ["--ema_warmup needs --ema_decay"]),
    "switch probability without mixing": (["--mix_switch_prob", "0.2"], ["--mix_switch_prob 0.2 needs both"]),
    "switch probability with mixup alone": (
        ["--mixup_alpha", "0.8", "--mix_switch_prob", "0.2"],
        ["--mix_switch_prob 0.2 needs both --mixup_alpha and --cutmix_alpha"],
    ),
    "mix probability without mixing": (["--mix_prob", "0.5"], ["--mix_prob 0.5 needs --mixup_alpha or --cutmix_alpha"]),
    "momentum with adamw": (["--momentum", "0.5"], ["--momentum 0.5 needs --optimizer sgd"]),
    "adam beta with sgd": (
        ["--optimizer", "sgd", "--adam_beta2", "0.99"],
        ["--adam_beta2 0.99 needs --optimizer adamw"],
    ),
    "warm-up of a constant schedule": (
        ["--lr_scheduler_type", "constant", "--num_warmup_steps", "5"],
        ["--num_warmup_steps 5 needs a schedule with warm-up"],
    ),
    "private repository without a push": (["--hub_private_repo"], ["--hub_private_repo needs --push_to_hub"]),
    "hub strategy without a push": (
        ["--hub_strategy", "checkpoint"],
        ["--hub_strategy checkpoint needs --push_to_hub"],
    ),
    "accepting changes without a resume": (
        ["--accept_changed_settings"],
        ["--accept_changed_settings needs --resume_from_checkpoint"],
    ),
    "linear probe of random features": (["--freeze", "backbone"], ["--freeze backbone needs pretrained weights"]),
    "frozen random blocks": (["--freeze_layers", "1"], ["--freeze_layers 1 needs pretrained weights"]),
    "mismatched sizes from scratch": (["--ignore_mismatched_sizes"], ["--ignore_mismatched_sizes needs pretrained"]),
    "mixing that never mixes": (["--cutmix_alpha", "1", "--mix_prob", "0"], ["--cutmix_alpha 1.0 needs --mix_prob"]),
    "a checkpoint limit without checkpoints": (["--save_total_limit", "1"], ["--save_total_limit 1 needs --checkpo"]),
}


@pytest.mark.parametrize("name", list(WITHOUT_EFFECT))
def test_a_flag_that_would_change_nothing_is_refused(name, tmp_path, run_train):
    extra, expected = WITHOUT_EFFECT[name]
    argv = tiny(tmp_path / "no-data", tmp_path / "out", *extra)
    argv[argv.index("--save_total_limit") : argv.index("--save_total_limit") + 2] = []  # tiny's own checkpoints
    argv[argv.index("--checkpointing_steps") : argv.index("--checkpointing_steps") + 2] = []
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", *expected, "changes nothing")
    assert not (tmp_path / "out").exists()


def test_the_same_flags_with_what_they_need_or_at_their_defaults_pass():
    needed = [
        ["--peft", "lora", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0", "--use_dora"],
        ["--ema_decay", "0.9", "--ema_warmup", "--final_model", "ema"],
        ["--mixup_alpha", "0.8", "--cutmix_alpha", "1", "--mix_switch_prob", "0.2", "--mix_prob", "0.5"],
        ["--cutmix_alpha", "1", "--mix_prob", "0.5"],
        ["--optimizer", "sgd", "--momentum", "0.5"],
        ["--lr_scheduler_type", "constant_with_warmup", "--num_warmup_steps", "5"],
        ["--lora_r", "8", "--mix_switch_prob", "0.5", "--momentum", "0.9"],  # the defaults, typed: nothing changes
    ]
    for extra in needed:
        parse_args(["--dataset_name", "x", *extra])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A 2-block, 32-wide model directory of ours (the TINY shape), as a finished run leaves it."""
    fields = dict(item.split("=") for item in TINY.split(","))
    config = ViTAccelConfig(**{key: int(value) for key, value in fields.items()}, num_labels=10)
    path = tmp_path_factory.mktemp("pretrained") / "tiny"
    ViTAccelForImageClassification(config).save_pretrained(path)
    return path


def pretrained_args(source: str | Path, tmp_path: Path, *extra: str) -> list[str]:
    argv = tiny(tmp_path / "no-data", tmp_path / "out", *extra)
    argv.remove("--from_scratch")
    argv[argv.index("vit-tiny-p16-224")] = str(source)
    return argv


@pytest.mark.parametrize(
    "override, expected",
    [
        ("num_hidden_layers=4", ["num_hidden_layers=4", "num_hidden_layers=2", "blocks 2..3 would start from random"]),
        ("num_hidden_layers=1", ["num_hidden_layers=1", "num_hidden_layers=2", "blocks 1..1 would be dropped"]),
        ("hidden_size=64,num_attention_heads=2", ["hidden_size=64", "hidden_size=32"]),
        ("num_attention_heads=4", ["num_attention_heads=4", "num_attention_heads=2", "split into that many heads"]),
        ("patch_size=8,image_size=16", ["patch_size=8", "patch_size=4"]),
    ],
)
def test_an_override_the_pretrained_weights_cannot_take_is_refused(override, expected, pretrained, tmp_path, run_train):
    code, stderr = run_train(pretrained_args(pretrained, tmp_path, "--config_overrides", override))
    assert code == 2
    assert_one_line(stderr, "train.py", f"--config_overrides {expected[0]}", str(pretrained), *expected[1:])
    assert not (tmp_path / "out").exists()


def test_a_named_variant_is_checked_without_downloading_it(tmp_path, run_train):
    argv = pretrained_args("vit-tiny-p16-224", tmp_path, "--config_overrides", "hidden_size=64,num_attention_heads=2")
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", "--config_overrides hidden_size=64", "vit-tiny-p16-224", "hidden_size=192")


def test_overrides_a_pretrained_model_can_take_pass(pretrained, tmp_path, run_train):
    # Its own shape again, another resolution (resampled) and another dropout: the run goes on to the data, missing.
    overrides = "hidden_size=32,image_size=32,hidden_dropout_prob=0.1"
    code, stderr = run_train(pretrained_args(pretrained, tmp_path, "--config_overrides", overrides))
    assert code == 2
    assert_one_line(stderr, "train.py", "no-data")


def test_from_pretrained_refuses_such_an_override_by_keyword(pretrained):
    with pytest.raises(UserError, match=r"num_hidden_layers=4\): .*pretrained with num_hidden_layers=2"):
        ViTAccelForImageClassification.from_pretrained(pretrained, num_hidden_layers=4)
    model = ViTAccelForImageClassification.from_pretrained(pretrained, num_hidden_layers=2, hidden_dropout_prob=0.1)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_dropout_prob == 0.1


def test_a_lora_rank_wider_than_the_adapted_layers_is_refused(pretrained, tmp_path, run_train):
    # The attention projections are 32 x 32: rank 32 is their most; the MLP's fc1 is 32 x 64.
    code, stderr = run_train(pretrained_args(pretrained, tmp_path, "--peft", "lora", "--lora_r", "48"))
    assert code == 2
    assert_one_line(stderr, "train.py", "--lora_r 48", "q_proj maps 32 to 32", "at most 32", "--lora_r 32 or less")
    assert not (tmp_path / "out").exists()
    code, stderr = run_train(pretrained_args(pretrained, tmp_path, "--peft", "lora", "--lora_r", "32"))
    assert code == 2 and assert_one_line(stderr, "train.py", "no-data")  # accepted: refused for the data only


def test_apply_lora_checks_the_rank_on_any_model(pretrained):
    from vit_accel.adapters import apply_lora

    model = ViTAccelForImageClassification.from_pretrained(pretrained)
    with pytest.raises(UserError, match="--lora_r 40 .* fc1 maps 32 to 64"):
        apply_lora(model, r=40, target_modules=["fc1", "fc2"])


def test_config_override_given_twice_is_refused(tmp_path, run_train):
    code, stderr = run_train(
        tiny(tmp_path / "no-data", tmp_path / "out", "--config_overrides", f"{TINY},image_size=32")
    )
    assert code == 2
    assert_one_line(stderr, "train.py", "'image_size' is given twice", "image_size=16 and image_size=32")


def test_image_size_flag_over_the_override_is_named(tmp_path, run_train, caplog):
    with caplog.at_level(logging.WARNING):
        code, stderr = run_train(tiny(tmp_path / "no-data", tmp_path / "out", "--image_size", "32"))
    assert code == 2 and assert_one_line(stderr, "train.py", "no-data")  # the run goes on, at 32
    assert "--image_size 32 replaces image_size=16 of --config_overrides" in caplog.text
    model_args, _, _ = parse_args(["--dataset_name", "x", "--config_overrides", "image_size=16", "--image_size", "16"])
    assert model_args.image_size_conflict() is None and model_args.parsed_overrides() == {"image_size": 16}


RECIPES_GIVEN_TWICE = {
    "a key": ("seed: 1\nlearning_rate: 0.1\nseed: 2\n", "key 'seed' is given twice (lines 1 and 3)"),
    "a config field": (
        "config_overrides:\n  image_size: 32\n  image_size: 16\n",
        "key 'image_size' is given twice (lines 2 and 3)",
    ),
}


@pytest.mark.parametrize("name", list(RECIPES_GIVEN_TWICE))
def test_a_recipe_giving_a_key_twice_is_refused(name, tmp_path, run_train):
    text, expected = RECIPES_GIVEN_TWICE[name]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code, stderr = run_train([str(recipe), *tiny(tmp_path / "no-data", tmp_path / "out")])
    assert code == 2
    assert_one_line(stderr, "train.py", str(recipe), expected)
    assert not (tmp_path / "out").exists()


def test_recipe_lists_are_the_comma_separated_flags(pretrained, tmp_path):
    from vit_accel.training import methods

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {pretrained}\npeft: lora\nlora_r: 4\nlora_target_modules: [q_proj, fc1]\n"
        "config_overrides: [hidden_dropout_prob=0.1, image_size=32]\nreport_to: [tensorboard, wandb]\n"
    )
    model_args, _, args = parse_args([str(recipe), "--dataset_name", "x"])
    assert args.report_to == "tensorboard,wandb" and args.with_tracking
    assert model_args.parsed_overrides() == {"hidden_dropout_prob": 0.1, "image_size": 32}
    methods.check_run(model_args, args)
    adapted = methods.setup_model(ViTAccelForImageClassification.from_pretrained(pretrained), model_args, args)
    assert set(adapted.peft_config["default"].target_modules) == {"q_proj", "fc1"}
    lora = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in adapted.named_parameters() if ".lora_A" in name}
    assert lora == {"q_proj", "fc1"}


def test_the_python_api_takes_lists_and_mappings_too():
    from vit_accel.adapters import parse_target_modules
    from vit_accel.training.arguments import ModelArguments
    from vit_accel.training.preflight import check_trackers

    assert parse_target_modules(["q_proj", "fc1"]) == ["q_proj", "fc1"]
    assert ModelArguments(config_overrides={"image_size": 32}).parsed_overrides() == {"image_size": 32}
    with pytest.raises(UserError, match="--report_to wandb: its package is not installed"):
        check_trackers(["wandb"])


def test_a_list_for_a_single_value_is_refused(tmp_path, run_train):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: [0.1, 0.01]\n")
    code, stderr = run_train([str(recipe), *tiny(tmp_path / "no-data", tmp_path / "out")])
    assert code == 2
    assert_one_line(
        stderr, "train.py", "key 'learning_rate': a list where one value is expected", "lora_target_modules"
    )


def test_layer_decay_on_a_frozen_backbone_is_refused(pretrained, tmp_path, run_train):
    argv = pretrained_args(pretrained, tmp_path, "--freeze", "backbone", "--layer_decay", "0.75")
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", "--layer_decay 0.75 needs blocks that train (not --freeze backbone)")


def test_a_diverging_run_stops_without_saving_a_model(digits, tmp_path, run_train):
    from launching import tiny_args

    out = tmp_path / "out"
    argv = tiny_args(digits, out, "--learning_rate", "1e10", "--max_train_steps", "4", "--checkpointing_steps", "1")
    code, stderr = run_train(argv)  # step 1 takes a step of 1e10: the loss of step 2 is NaN
    assert code == 2
    assert_one_line(stderr, "train.py", "Step 2: the training loss is nan", "diverged", "checkpoint-1")
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


def test_a_warm_up_longer_than_the_run_is_named(tmp_path, caplog):
    import torch

    from vit_accel.training.arguments import TrainingArguments
    from vit_accel.training.optim import build_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with caplog.at_level(logging.WARNING):
        build_scheduler(optimizer, TrainingArguments(num_warmup_steps=100), total_steps=10)
    assert "--num_warmup_steps 100 is longer than the run's 10 optimizer steps" in caplog.text


def test_a_list_in_config_overrides_and_a_misplaced_recipe_are_named(tmp_path, run_train):
    out = tmp_path / "out"
    code, stderr = run_train(tiny(tmp_path / "no-data", out, "--config_overrides", "image_size=[16,32]"))
    assert code == 2 and assert_one_line(stderr, "train.py", "--config_overrides image_size=[16", "a list is not")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 1\n")
    code, stderr = run_train([*tiny(tmp_path / "no-data", out), str(recipe)])
    assert code == 2 and assert_one_line(stderr, "train.py", str(recipe), "only as the first argument")
    (tmp_path / "folder.yaml").mkdir()
    code, stderr = run_train([str(tmp_path / "folder.yaml"), *tiny(tmp_path / "no-data", out)])
    assert code == 2 and assert_one_line(stderr, "train.py", "folder.yaml is a directory, not a YAML file")
    code, stderr = run_train(tiny(tmp_path / "no-data", out, "--config_overrides", TINY + ",pooler_output_size=8"))
    assert code == 2 and assert_one_line(stderr, "train.py", "pooler_output_size=8: sets the bare model's pooler")
    code, stderr = run_train(tiny(tmp_path / "no-data", out, "--image_size", "17"))
    assert code == 2 and assert_one_line(
        stderr, "train.py", "with --image_size 17:", "must be a multiple of patch_size"
    )
    assert not out.exists()


def test_another_activation_for_pretrained_weights_is_named(pretrained, tmp_path, run_train, caplog):
    with caplog.at_level(logging.WARNING):
        code, stderr = run_train(pretrained_args(pretrained, tmp_path, "--config_overrides", "hidden_act=relu"))
        model = ViTAccelForImageClassification.from_pretrained(pretrained, layer_norm_eps=1e-3)
    assert code == 2 and assert_one_line(stderr, "train.py", "no-data")  # allowed: the run goes on to the data
    assert f"--config_overrides hidden_act=relu: {pretrained} was trained with hidden_act=gelu" in caplog.text
    assert "layer_norm_eps=0.001): " in caplog.text and "was trained with layer_norm_eps=1e-06" in caplog.text
    assert model.config.layer_norm_eps == 1e-3

"""train.py's flags, recipes, models and datasets: refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest
from bad_input_helpers import assert_data_refused, assert_one_line, snapshot, tiny
from factories import FAKE_TOKEN, TINY

# --- train.py: flags and recipes (nothing exists yet: the output directory must not appear) ----------------------

FLAG_CASES = {
    "unknown flag": (["--learning_rat", "0.1"], ["--learning_rat"]),
    "flag typo with a dash": (["--per-device-train-batch-sise", "8"], ["--per-device-train-batch-sise"]),
    "batch size 0": (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size", "got 0"]),
    "batch size not a number": (["--per_device_train_batch_size", "abc"], ["--per_device_train_batch_size", "'abc'"]),
    "accumulation 0": (["--gradient_accumulation_steps", "0"], ["--gradient_accumulation_steps"]),
    "negative learning rate": (["--learning_rate", "-1"], ["--learning_rate", "-1"]),
    "label smoothing 1.5": (["--label_smoothing", "1.5"], ["--label_smoothing"]),
    "unknown optimizer": (["--optimizer", "lamb"], ["--optimizer", "lamb"]),
    "unknown scheduler": (["--lr_scheduler_type", "wavy"], ["--lr_scheduler_type", "wavy"]),
    "checkpointing steps not a number": (["--checkpointing_steps", "often"], ["--checkpointing_steps", "often"]),
    "logging steps 0": (["--logging_steps", "0"], ["--logging_steps"]),
    "epochs 0": (["--num_train_epochs", "0"], ["--num_train_epochs"]),
    "push without a repository": (["--push_to_hub"], ["--push_to_hub needs --hub_model_id"]),
    "unknown hub strategy": (["--hub_strategy", "sometimes"], ["--hub_strategy", "sometimes"]),
    "config field typo": (["--config_overrides", "hidden_sise=32"], ["hidden_sise", "did you mean 'hidden_size'"]),
    "config override without a value": (["--config_overrides", "image_size"], ["--config_overrides", "'image_size'"]),
    "unknown augmentation": (["--augmentation", "fancy"], ["--augmentation", "fancy"]),
    "unknown bad-image policy": (["--bad_images", "ignore"], ["--bad_images", "ignore"]),
    "validation fraction 1.5": (["--train_val_split", "1.5"], ["--train_val_split", "1.5"]),
    "max train samples 0": (["--max_train_samples", "0"], ["--max_train_samples"]),
    "negative workers": (["--dataloader_num_workers", "-1"], ["--dataloader_num_workers"]),
    "validation dir with a dataset name": (["--validation_dir", "somewhere"], ["--validation_dir", "not both"]),
    "unknown tracker": (["--with_tracking", "--report_to", "notebooks"], ["--report_to notebooks"]),
    "tracker not installed": (["--with_tracking", "--report_to", "wandb"], ["--report_to wandb", "pip install wandb"]),
    "empty hub token": (["--hub_token", " "], ["--hub_token is empty"]),
    "layer decay 0": (["--layer_decay", "0"], ["--layer_decay must be in (0, 1]", "got 0.0"]),
    "layer decay above 1": (["--layer_decay", "1.5"], ["--layer_decay must be in (0, 1]"]),
    "ema decay 1": (["--ema_decay", "1"], ["--ema_decay must be in (0, 1)"]),
    "final model ema without an ema": (["--final_model", "ema"], ["--final_model ema needs --ema_decay"]),
    "negative mixup alpha": (["--mixup_alpha", "-0.2"], ["--mixup_alpha must be >= 0"]),
    "mix probability 2": (["--cutmix_alpha", "1", "--mix_prob", "2"], ["--mix_prob must be in [0, 1]"]),
    "random erasing 1.5": (["--random_erasing", "1.5"], ["--random_erasing", "1.5"]),
    "unknown peft method": (["--peft", "prefix"], ["--peft must be one of lora"]),
    "lora on a model from scratch": (["--peft", "lora"], ["--peft lora adapts pretrained weights", "--from_scratch"]),
    "merge without an adapter": (["--merge_adapter"], ["--merge_adapter needs --peft lora"]),
    "unknown freeze": (["--freeze", "head"], ["--freeze must be one of backbone"]),
    "negative seed": (["--seed", "-1"], ["--seed", "-1"]),
    "seed beyond 2**32": (["--seed", str(2**32)], ["--seed", str(2**32)]),
    "adam beta1 1.5": (["--adam_beta1", "1.5"], ["--adam_beta1", "1.5"]),
    "adam beta2 1": (["--adam_beta2", "1"], ["--adam_beta2", "1.0"]),
    "learning rate nan": (["--learning_rate", "nan"], ["--learning_rate", "nan"]),
    "negative momentum": (["--optimizer", "sgd", "--momentum", "-1"], ["--momentum", "-1"]),
    "negative weight decay": (["--weight_decay", "-1"], ["--weight_decay", "-1"]),
    "negative warm-up": (["--num_warmup_steps", "-5"], ["--num_warmup_steps", "-5"]),
    "negative clipping norm": (["--max_grad_norm", "-1"], ["--max_grad_norm", "-1"]),
    "checkpointing steps 0": (["--checkpointing_steps", "0"], ["--checkpointing_steps", "'0'"]),
    "empty output dir": (["--output_dir", ""], ["--output_dir is empty"]),
    "malformed hub repo id": (["--hub_model_id", "not a valid id!"], ["--hub_model_id 'not a valid id!'"]),
    "multi-label problem type": (
        ["--config_overrides", TINY + ",problem_type=multi_label_classification"],
        ["problem_type"],
    ),
    "label count as a config field": (["--config_overrides", TINY + ",num_labels=5"], ["num_labels comes from the"]),
    "one-channel model on RGB data": (["--config_overrides", TINY + ",num_channels=1"], ["num_channels=1", "RGB"]),
    "unknown activation": (["--config_overrides", TINY + ",hidden_act=foo"], ["hidden_act=foo"]),
    "image size not a number": (["--config_overrides", TINY + ",image_size=abc"], ["image_size=abc"]),
    "image size 0": (["--image_size", "0"], ["--image_size 0"]),
    "trackers named without --with_tracking": (["--report_to", "wandb"], ["--report_to wandb", "pip install wandb"]),
    "model path that does not exist": (["--model_name_or_path", "./nope"], ["--model_name_or_path ./nope", "no such"]),
    "flash attention not installed": (["--attn_implementation", "flash_attention_2"], ["flash_attention_2"]),
}


LORA_CASES = {
    "target matching no module": (["--lora_target_modules", "q_proj,qkv"], ["--lora_target_modules", "'qkv'"]),
    "freezing with an adapter": (["--freeze", "backbone"], ["--freeze/--freeze_layers cannot be combined"]),
    "lora rank 0": (["--lora_r", "0"], ["--lora_r must be at least 1, got 0"]),
    "lora alpha 0": (["--lora_alpha", "0"], ["--lora_alpha must be a positive number, got 0.0"]),
    "lora alpha nan": (["--lora_alpha", "nan"], ["--lora_alpha must be a positive number, got nan"]),
    "lora dropout 1": (["--lora_dropout", "1"], ["--lora_dropout must be in [0, 1), got 1.0"]),
    "negative lora dropout": (["--lora_dropout", "-0.1"], ["--lora_dropout must be in [0, 1), got -0.1"]),
}


@pytest.mark.parametrize("name", list(LORA_CASES))
def test_bad_lora_combination(name, world, tmp_path, run_train):
    extra, expected = LORA_CASES[name]
    output_dir = tmp_path / "out"
    args = tiny(world / "digits", output_dir, "--peft", "lora", *extra)
    args.remove("--from_scratch")  # a pretrained model (never loaded: the flags are refused first)
    code, stderr = run_train(args)
    assert code == 2
    assert_one_line(stderr, "train.py", *expected)
    assert not output_dir.exists()


@pytest.mark.parametrize("name", list(FLAG_CASES))
def test_bad_flag(name, world, tmp_path, run_train):
    extra, expected = FLAG_CASES[name]
    output_dir = tmp_path / "out"
    code, stderr = run_train(tiny(world / "digits", output_dir, *extra))
    assert code == 2
    assert_one_line(stderr, "train.py", *expected)
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("ACCELERATE_MIXED_PRECISION", "fp16", ["--mixed_precision fp16", "fp32 on the CPU"]),
        (
            "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
            "4",
            ["gradient accumulation to 4", "--gradient_accumulation_steps"],
        ),
    ],
)
def test_launcher_settings_that_would_not_apply(variable, value, expected, world, tmp_path, run_train, monkeypatch):
    monkeypatch.setenv(variable, value)  # what `accelerate launch --<setting>` hands the script
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out"))
    assert code == 2 and assert_one_line(stderr, "train.py", *expected)
    assert not (tmp_path / "out").exists()


def test_a_training_checkpoint_is_not_a_model(finished, world, tmp_path, run_train):
    checkpoint = finished / "finished" / "checkpoint-2"
    argv = [a for a in tiny(world / "nowhere", tmp_path / "out") if a != "--from_scratch"]
    argv[argv.index("vit-tiny-p16-224")] = str(checkpoint)
    code, stderr = run_train(argv)  # refused before the (missing) dataset is even looked for
    assert code == 2 and assert_one_line(stderr, "train.py", "is a training checkpoint", "--resume_from_checkpoint")


def test_no_dataset_at_all(tmp_path, run_train):
    code, stderr = run_train(["--output_dir", str(tmp_path / "out")])
    assert code == 2 and assert_one_line(stderr, "train.py", "Give a dataset: --dataset_name")
    assert not (tmp_path / "out").exists()


def test_dataset_name_and_train_dir_together(world, tmp_path, run_train):
    argv = tiny(world / "digits", tmp_path / "out", "--train_dir", str(world / "folder" / "train"))
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "either --dataset_name or --train_dir")


def test_a_mistyped_token_flag_is_never_echoed(world, tmp_path, run_train):
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out", "--hub_tokn", FAKE_TOKEN))
    assert code == 2 and assert_one_line(stderr, "train.py", "--hub_tokn (did you mean --hub_token?)")  # no value
    assert FAKE_TOKEN not in stderr


def test_the_deprecated_token_flag_is_accepted_and_never_written(world, tmp_path, run_train, caplog):
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out", "--hub_token", FAKE_TOKEN))
    assert code == 0, stderr[-3000:]
    assert "--hub_token is deprecated" in caplog.text
    assert FAKE_TOKEN not in stderr + caplog.text
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes(), path
    recorded = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert recorded["TrainingArguments"]["hub_token"] == "<redacted>" and "<redacted>" in recorded["command"]


RECIPES = {
    "unknown key": ("learnig_rate: 0.1\n", ["learnig_rate", "did you mean 'learning_rate'"]),
    "broken YAML": ("learning_rate: [0.1\nseed: 2\n", ["not valid YAML at line 2"]),
    "wrong type": ("learning_rate: fast\n", ["key 'learning_rate'", "'fast'"]),
    "not a mapping": ("- learning_rate\n- seed\n", ["must be a mapping"]),
    "bad value": ("label_smoothing: 2\n", ["--label_smoothing must be in [0, 1)"]),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_bad_recipe(name, world, tmp_path, run_train):
    text, expected = RECIPES[name]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    code, stderr = run_train([str(recipe), *tiny(world / "digits", tmp_path / "out")])
    assert code == 2
    line = assert_one_line(stderr, "train.py", *expected)
    assert name in ("bad value",) or str(recipe) in line
    assert not (tmp_path / "out").exists()


def test_recipe_encoding_extension_and_mapping(world, tmp_path, run_train):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# caf\xe9\nseed: 3\n".encode("latin-1"))
    code, stderr = run_train([str(latin), *tiny(world / "digits", tmp_path / "out")])
    assert code == 2 and assert_one_line(stderr, "train.py", str(latin), "not UTF-8")
    from vit_accel.training.arguments import parse_args

    upper = tmp_path / "recipe.YAML"
    upper.write_text("config_overrides:\n  image_size: 16\n  patch_size: 4\nseed: 5\n")
    model_args, _, training_args = parse_args([str(upper), "--dataset_name", "x"])
    assert training_args.seed == 5 and model_args.parsed_overrides() == {"image_size": 16, "patch_size": 4}


def test_missing_recipe(world, tmp_path, run_train):
    code, stderr = run_train([str(tmp_path / "nope.yaml"), "--dataset_name", "x"])
    assert code == 2 and assert_one_line(stderr, "train.py", "Recipe file not found", "nope.yaml")


# --- train.py: models that cannot be built ---------------------------------------------------------------------

MODEL_CASES = {
    "variant typo from scratch": (["--model_name_or_path", "vit-bse-p16-224"], ["vit-bse-p16-224", "vit-base-p16-224"]),
    "inconsistent width and heads": (["--config_overrides", TINY + ",hidden_size=37"], ["--config_overrides"]),
    "image not a multiple of the patch": (["--config_overrides", TINY + ",image_size=18"], ["--config_overrides"]),
}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_bad_model(name, world, tmp_path, run_train):
    extra, expected = MODEL_CASES[name]
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out", *extra))
    assert code == 2
    assert_one_line(stderr, "train.py", *expected)
    assert not snapshot(tmp_path / "out")


def test_unknown_model_without_from_scratch_names_it(world, tmp_path, run_train):
    argv = [
        a
        for a in tiny(world / "digits", tmp_path / "out", "--model_name_or_path", "vit-bse-p16-224")
        if a != "--from_scratch"
    ]
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "vit-bse-p16-224")


# --- train.py: datasets -----------------------------------------------------------------------------------------

DATA_CASES = {
    "missing path": (lambda w: ["--dataset_name", str(w / "nowhere")], ["nowhere"]),
    "a csv file": (lambda w: ["--dataset_name", str(w / "table.csv")], ["table.csv", ".parquet or .arrow"]),
    "a single class": (lambda w: ["--dataset_name", str(w / "one_class")], ["single class", "'0'"]),
    "empty evaluation split": (
        lambda w: ["--dataset_name", str(w / "empty_test")],
        ["empty_test", '"test" corresponds to no data'],
    ),
    "label seen only in evaluation": (
        lambda w: ["--train_dir", str(w / "folder" / "train"), "--validation_dir", str(w / "folder" / "val")],
        ["'fox'", "Split 'validation'"],
    ),
    "label outside the label set": (lambda w: ["--dataset_name", str(w / "unlabelled")], ["Split 'test', row 5"]),
    "unknown image column": (lambda w: ["--image_column_name", "picture"], ["--image_column_name 'picture'"]),
    "unknown label column": (lambda w: ["--label_column_name", "class"], ["--label_column_name 'class'"]),
    "missing train dir": (lambda w: ["--train_dir", str(w / "nope")], ["--train_dir", "nope"]),
}


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_bad_dataset(name, world, tmp_path, run_train):
    assert_data_refused(*DATA_CASES[name], world, tmp_path, run_train)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_names_its_file_even_from_a_worker(workers, world, tmp_path, run_train):
    argv = tiny("unused", tmp_path / "out", "--dataloader_num_workers", str(workers), "--train_val_split", "0.25")
    index = argv.index("--dataset_name")
    argv[index : index + 2] = ["--train_dir", str(world / "corrupt")]
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", "Cannot decode the image at row", "cat/3.png", "--bad_images skip")
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "all_results.json").exists()


def test_skipped_images_are_counted_in_results_log_and_card(world, tmp_path, run_train, caplog):
    argv = tiny("unused", tmp_path / "out", "--bad_images", "skip", "--train_val_split", "0.25")
    index = argv.index("--dataset_name")
    argv[index : index + 2] = ["--train_dir", str(world / "corrupt")]
    code, stderr = run_train(argv)
    assert code == 0, stderr[-3000:]
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["train_unreadable_images"] + results["eval_unreadable_images"] == 1
    assert "could not be decoded and were replaced" in (tmp_path / "out" / "README.md").read_text()
    last = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])
    assert last["train_unreadable_images"] + last["eval_unreadable_images"] == 1
    assert "Unreadable images replaced" in caplog.text


# --- train.py: data mistakes found only on what is really trained, or through paths and flags that did not apply ---

LATER_DATA_CASES = {
    "a subsample of a single class": (
        lambda w: ["--max_train_samples", "1"],
        ["--max_train_samples 1 keeps a single class", "at least two"],
    ),
    "the same folder for training and validation": (
        lambda w: ["--train_dir", str(w / "folder" / "train"), "--validation_dir", str(w / "folder" / "train")],
        ["--train_dir", "--validation_dir", "are the same folder"],
    ),
    "a configuration of a save_to_disk directory": (
        lambda w: ["--dataset_config_name", "cifar10"],
        ["--dataset_config_name 'cifar10'", "save_to_disk directory"],
    ),
}


@pytest.mark.parametrize("name", list(LATER_DATA_CASES))
def test_data_mistakes_on_what_is_trained(name, world, tmp_path, run_train):
    assert_data_refused(*LATER_DATA_CASES[name], world, tmp_path, run_train)

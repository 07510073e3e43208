"""Bad input and faults, as a new user meets them: each gives one line naming the culprit, and loses nothing.

Every case runs the real entry point (train.py's `cli`, `vit-accel`'s `main`, or the Python API) on a mistake and
checks three things: the exit status, a single error line that names the flag, file, key, column or row at fault,
and that no file of the output directory (and of any run it points at) changed. train.py runs in-process: each
mistake is found before the dataset is read, so a case costs well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import FAKE_TOKEN, ROOT, png_bytes, random_rgb, write_hub_parquet, write_image_folder
from launching import train_in_this_process

from vit_accel.cli import main as vit_accel
from vit_accel.demo import export_digits
from vit_accel.errors import UserError

TINY = "image_size=16,patch_size=4,hidden_size=32,num_attention_heads=2,intermediate_size=64,num_hidden_layers=2"


def tiny(data: Path | str, output_dir: Path | str, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", TINY,
        "--dataset_name", str(data), "--max_train_samples", "96", "--max_eval_samples", "32",
        "--augmentation", "none", "--dataloader_num_workers", "0", "--per_device_train_batch_size", "16",
        "--learning_rate", "1e-3", "--max_train_steps", "4", "--logging_steps", "2", "--checkpointing_steps", "2",
        "--save_total_limit", "5", "--seed", "3", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def snapshot(*roots: Path) -> dict:
    """Every file under `roots` with its size, modification time and content hash (the lock file a run takes on its
    directory aside: it records who holds the directory, not what the run holds)."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if path.is_file() and path.name != ".vit_accel.lock":
                found[str(path)] = (
                    path.stat().st_size,
                    path.stat().st_mtime_ns,
                    hashlib.sha1(path.read_bytes()).hexdigest(),
                )
    return found


def assert_one_line(stderr: str, program: str, *expected: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{program}: error:")]
    assert len(lines) == 1, stderr[-3000:]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# --- data and runs every case can point at ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Datasets with one defect each, a finished run with checkpoints, and a second run."""
    from datasets import DatasetDict, load_from_disk

    root = tmp_path_factory.mktemp("world")
    digits = root / "digits"
    export_digits(digits)
    splits = load_from_disk(str(digits))
    DatasetDict(
        train=splits["train"].filter(lambda row: row["label"] == 0),
        test=splits["test"].filter(lambda r: r["label"] == 0),
    ).save_to_disk(str(root / "one_class"))
    write_hub_parquet(
        root / "empty_test", {"train": splits["train"].select(range(60)), "test": splits["test"].select([])}
    )
    write_image_folder(root / "folder" / "train", {"cat": 3, "dog": 3})
    write_image_folder(root / "folder" / "val", {"cat": 2, "dog": 2, "fox": 1}, seed=1)
    corrupt = write_image_folder(root / "corrupt", {"cat": 8, "dog": 8}, seed=2)
    corrupt[3].write_bytes(corrupt[3].read_bytes()[:60])  # a truncated PNG
    (root / "table.csv").write_text("image,label\nx.png,0\n")
    for path in write_image_folder(root / "cats_unreadable", {"cat": 8, "dog": 8}, seed=3):
        if path.parent.name == "cat":
            path.write_bytes(path.read_bytes()[:60])
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    rows = {"image": [{"bytes": png_bytes(random_rgb(i)), "path": None} for i in range(8)], "label": [0, 1] * 4}
    test = Dataset.from_dict(rows, features=features).map(
        lambda r, i: {"label": -1 if i == 5 else r["label"]}, with_indices=True
    )
    write_hub_parquet(root / "unlabelled", {"train": Dataset.from_dict(rows, features=features), "test": test})
    return root


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished 4-step run with checkpoint-2 and checkpoint-4, and a second run stopped at checkpoint-2."""
    runs = tmp_path_factory.mktemp("runs")
    for name, steps in (("finished", "4"), ("other", "2")):
        assert train_in_this_process(tiny(world / "digits", runs / name, "--max_train_steps", steps)) == 0
    assert (runs / "finished" / "checkpoint-4").is_dir() and (runs / "other" / "checkpoint-2").is_dir()
    return runs


def copy_run(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished / "finished", target)
    return target


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


def assert_data_refused(extra, expected: list[str], world: Path, tmp_path: Path, run_train) -> None:
    """train.py on the digits with `extra(world)` added stops in one line holding `expected`, writing nothing."""
    argv = tiny(world / "digits", tmp_path / "out", *extra(world))
    if "--train_dir" in argv:  # replaces --dataset_name
        index = argv.index("--dataset_name")
        del argv[index : index + 2]
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", *expected)
    assert not snapshot(tmp_path / "out")


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


# --- train.py: output directories, resumes and damaged checkpoints ----------------------------------------------


def test_an_existing_run_is_never_overwritten_by_accident(finished, world, run_train):
    run = finished / "finished"
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run))
    assert code == 2 and assert_one_line(stderr, "train.py", f"--output_dir {run} already holds a run")
    assert snapshot(run) == before


def test_output_dir_that_is_a_file_or_cannot_be_created(world, tmp_path, run_train):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for output_dir, message in ((blocker, "is a file"), (blocker / "run", "cannot be written")):
        code, stderr = run_train(tiny(world / "digits", output_dir))
        assert code == 2 and assert_one_line(stderr, "train.py", f"--output_dir {output_dir}", message)
    assert blocker.read_text() == "not a directory"


def test_a_directory_of_other_files_is_not_written_over(world, tmp_path, run_train):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my notes")
    (project / "config.json").write_text("{}")
    before = snapshot(project)
    code, stderr = run_train(tiny(world / "digits", project))
    assert code == 2 and assert_one_line(stderr, "train.py", "holds files that are not a vit_accel run", "README.md")
    assert snapshot(project) == before


def test_the_run_never_writes_over_its_own_inputs(finished, world, tmp_path, run_train):
    before = snapshot(world / "digits")
    code, stderr = run_train(tiny(world / "digits", world / "digits", "--overwrite_output_dir"))
    assert code == 2 and assert_one_line(stderr, "train.py", "is (or lies inside) --dataset_name")
    assert snapshot(world / "digits") == before
    source = copy_run(finished, tmp_path)
    before = snapshot(source)
    argv = [a for a in tiny(world / "digits", source, "--overwrite_output_dir") if a != "--from_scratch"]
    argv[argv.index("vit-tiny-p16-224")] = str(source)
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "is (or lies inside) --model_name_or_path")
    assert snapshot(source) == before


def test_a_second_run_into_the_same_directory_is_refused(world, tmp_path, run_train):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".vit_accel.lock", "w") as held:  # as a first run holds it for its lifetime
        held.write("PID 4242 on somewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, stderr = run_train(tiny(world / "digits", out))
    assert code == 2 and assert_one_line(stderr, "train.py", "in use by another run (PID 4242 on somewhere)")
    assert sorted(p.name for p in out.iterdir()) == [".vit_accel.lock"]


def test_overwriting_deletes_nothing_when_the_new_run_fails_before_its_first_step(finished, world, tmp_path, run_train):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    argv = tiny("unused", run, "--overwrite_output_dir", "--train_val_split", "0.25")
    index = argv.index("--dataset_name")
    argv[index : index + 2] = ["--train_dir", str(world / "cats_unreadable")]
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "Cannot decode the image", "cat/")
    assert snapshot(run) == before


def test_resume_from_another_run_into_a_finished_one_is_refused(finished, world, run_train):
    before = snapshot(finished)
    other = finished / "other" / "checkpoint-2"
    argv = tiny(world / "digits", finished / "finished", "--resume_from_checkpoint", str(other))
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", f"belongs to the run in {other.parent}")
    assert snapshot(finished) == before


def test_resume_latest_of_a_finished_run_changes_nothing(finished, world, run_train, caplog):
    run = finished / "finished"
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run, "--resume_from_checkpoint", "latest"))
    assert code == 0 and "already finished at step 4 of 4: nothing to do" in caplog.text
    assert snapshot(run) == before
    assert json.loads((run / "all_results.json").read_text())["eval_top1"] >= 0


def test_resume_asking_for_fewer_steps_than_done_changes_nothing(finished, world, run_train, caplog):
    run = finished / "finished"
    before = snapshot(run)
    argv = tiny(world / "digits", run, "--resume_from_checkpoint", "latest", "--max_train_steps", "2")
    code, stderr = run_train(argv)
    assert code == 0, stderr[-3000:]
    assert "already at step 4, past the 2 asked for: nothing to do" in caplog.text
    assert snapshot(run) == before


def test_the_same_dataset_written_another_way_is_the_same_dataset(finished, world, run_train, caplog):
    run = finished / "finished"
    before = snapshot(run)
    code, stderr = run_train(tiny(f"{world / 'digits'}/", run, "--resume_from_checkpoint", "latest"))
    assert code == 0 and "already finished at step 4" in caplog.text, stderr[-3000:]
    assert snapshot(run) == before


def test_resume_on_other_data_under_the_same_path_is_refused(world, tmp_path, run_train):
    from datasets import DatasetDict, load_from_disk

    digits, data = load_from_disk(str(world / "digits")), tmp_path / "data"
    DatasetDict(train=digits["train"].select(range(400)), test=digits["test"]).save_to_disk(str(data))
    run = tmp_path / "run"
    assert run_train(tiny(data, run, "--max_train_steps", "2"))[0] == 0
    shutil.rmtree(data)  # the same path, re-exported with other rows
    DatasetDict(train=digits["train"].select(range(400, 800)), test=digits["test"]).save_to_disk(str(data))
    before = snapshot(run)
    code, stderr = run_train(tiny(data, run, "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "the dataset is not the one", "train_labels_sha256")
    assert snapshot(run) == before


def test_resume_latest_with_nothing_to_resume(world, tmp_path, run_train):
    (tmp_path / "out").mkdir()
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out", "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "no complete checkpoint in --output_dir")


def test_resume_from_a_path_that_is_not_a_checkpoint(finished, world, tmp_path, run_train):
    argv = tiny(world / "digits", tmp_path / "out", "--resume_from_checkpoint", str(finished / "finished"))
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "not a complete checkpoint directory")


CHANGED = {
    "seed": (["--seed", "4"], "--seed: 3 in the checkpoint, 4 now"),
    "batch size": (["--per_device_train_batch_size", "8"], "--per_device_train_batch_size: 16"),
    "accumulation": (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps: 1"),
    "dataset": (["--max_train_samples", "80"], "--max_train_samples: 96"),
    "augmentation": (["--augmentation", "inception"], "--augmentation: 'none'"),
    "model shape": (["--config_overrides", TINY.replace("hidden_size=32", "hidden_size=64")], "--config_overrides"),
    "learning rate": (["--learning_rate", "0.01"], "--learning_rate: 0.001"),
}


@pytest.mark.parametrize("name", list(CHANGED))
def test_resume_with_changed_settings_is_refused(name, finished, world, tmp_path, run_train):
    extra, expected = CHANGED[name]
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    argv = tiny(world / "digits", run, "--resume_from_checkpoint", str(run / "checkpoint-2"), *extra)
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", expected, "--accept_changed_settings")
    assert snapshot(run) == before


def _zero_second_half(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = bytes(b ^ 0xFF for b in data[:8])
    path.write_bytes(bytes(data))


def _edit_state(checkpoint: Path, **changes) -> None:
    values = json.loads((checkpoint / "trainer_state.json").read_text())
    values.update(changes)
    (checkpoint / "trainer_state.json").write_text(json.dumps(values))


def _as_deepspeed(checkpoint: Path) -> None:
    settings = json.loads((checkpoint / "trainer_state.json").read_text())["settings"]
    _edit_state(checkpoint, settings={**settings, "checkpoint_format": "DeepSpeed"})


DAMAGE = {
    "truncated weights": (lambda c: (c / "model.safetensors").write_bytes(b"\0" * 16), "model.safetensors holds 16"),
    "missing optimizer state": (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "corrupt trainer state": (lambda c: (c / "trainer_state.json").write_text('{"completed'), "trainer_state.json"),
    "trainer state of another tool": (lambda c: (c / "trainer_state.json").write_text("{}"), "not a vit_accel trainer"),
    "missing model config": (lambda c: (c / "model_config.json").unlink(), "model_config.json is missing"),
    "weights half zeroed, same size": (lambda c: _zero_second_half(c / "model.safetensors"), "content of model.safe"),
    "weights header flipped": (lambda c: _flip_header(c / "model.safetensors"), "content of model.safetensors"),
    "optimizer state zero-filled": (
        lambda c: (c / "optimizer.bin").write_bytes(bytes((c / "optimizer.bin").stat().st_size)),
        "content of optimizer.bin",
    ),
    "a step that is not a number": (lambda c: _edit_state(c, completed_steps="4"), "completed_steps is '4'"),
    "settings that are not a mapping": (lambda c: _edit_state(c, settings="x"), "settings is 'x'"),
    "written under DeepSpeed": (_as_deepspeed, "holds its states in DeepSpeed's format"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_before_loading(name, finished, world, tmp_path, run_train):
    damage, expected = DAMAGE[name]
    run = copy_run(finished, tmp_path)
    damage(run / "checkpoint-4")
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run, "--resume_from_checkpoint", "latest"))
    assert code == 2
    assert_one_line(stderr, "train.py", expected)
    assert snapshot(run) == before


def test_a_renamed_checkpoint_is_refused_not_deleted(finished, world, tmp_path, run_train):
    run = copy_run(finished, tmp_path)
    (run / "checkpoint-2").rename(run / "checkpoint-10")
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run, "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "records step 2, not the 10 of its name")
    assert snapshot(run) == before


def test_a_full_disk_while_saving_keeps_the_earlier_checkpoint(world, tmp_path, run_train, monkeypatch):
    import errno

    from accelerate import Accelerator

    save_state, calls = Accelerator.save_state, []

    def save_state_on_a_disk_that_fills(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_on_a_disk_that_fills)
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out"))
    assert code == 2
    assert_one_line(stderr, "train.py", "No space left", "checkpoint-4", "checkpoint-2, is intact")
    from vit_accel.training.checkpointing import list_checkpoints, verify_checkpoint

    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2"]
    assert verify_checkpoint(tmp_path / "out" / "checkpoint-2").completed_steps == 2
    assert not (tmp_path / "out" / "checkpoint-4.tmp").exists()


def test_a_torn_log_line_does_not_block_a_resume(finished, world, tmp_path, run_train, caplog):
    run = copy_run(finished, tmp_path)
    with (run / "log.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # a disk that filled up during an append
    argv = tiny(world / "digits", run, "--resume_from_checkpoint", str(run / "checkpoint-2"))
    code, stderr = run_train(argv)
    assert code == 0, stderr[-3000:]
    assert "dropping its torn last line" in caplog.text
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4


def test_the_hub_is_checked_before_the_data(world, tmp_path, run_train):
    # HF_HUB_OFFLINE is set for the tests, as on a machine without a network; the dataset does not even exist.
    argv = tiny(world / "nowhere", tmp_path / "out", "--push_to_hub", "--hub_model_id", "someone/model")
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "--push_to_hub someone/model", "before training")


def test_an_offline_hub_is_named_as_the_cause_when_a_token_is_set(world, tmp_path, run_train, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    argv = tiny(world / "nowhere", tmp_path / "out", "--push_to_hub", "--hub_model_id", "someone/model")
    code, stderr = run_train(argv)
    line = assert_one_line(stderr, "train.py", "HF_HUB_OFFLINE is set")
    assert code == 2 and "set HF_TOKEN" not in line and FAKE_TOKEN not in stderr
    assert not (tmp_path / "out").exists()  # checked before the output directory is made


@pytest.mark.parametrize(
    "identity, message",
    [
        (
            {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}},
            "cannot write to 'someone'",
        ),
        ({"name": "someone", "orgs": [], "auth": {"accessToken": {"role": "read"}}}, "token is read-only"),
    ],
)
def test_a_token_that_cannot_write_the_repository(identity, message, world, tmp_path, run_train, monkeypatch):
    class FakeApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return identity

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    argv = tiny(world / "nowhere", tmp_path / "out", "--push_to_hub", "--hub_model_id", "someone/model")
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", message)


# --- processes and signals (real processes) ---------------------------------------------------------------------


def test_processes_without_a_process_group_are_refused(world, tmp_path):
    # multi_cpu.yaml without ACCELERATE_USE_CPU: accelerate starts two processes that each train alone.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_cpu.yaml",
        "--num_cpu_threads_per_process", "1", "train.py", *tiny(world / "digits", tmp_path / "out"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    result = subprocess.run(
        command, cwd=ROOT, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    lines = {line for line in result.stderr.splitlines() if line.startswith("train.py: error:")}
    assert len(lines) == 1, result.stderr[-3000:]
    assert "started 2 processes, but they run without a process group" in lines.pop()
    assert not (tmp_path / "out").exists()


def test_a_data_mistake_with_two_processes_is_one_line(world, tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_cpu.yaml",
        "--num_cpu_threads_per_process", "1", "train.py", *tiny(world / "one_class", tmp_path / "out"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(lines) == 1 and "single class" in lines[0], result.stderr[-3000:]
    assert "[rank1]: Traceback" not in result.stderr and "Connection closed by peer" not in result.stderr


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_a_save_leaves_no_checkpoint_that_looks_whole(signal_name, world, tmp_path):
    from vit_accel.training.checkpointing import list_checkpoints, verify_checkpoint

    out = tmp_path / "out"
    command = [sys.executable, "tests/fault_injection.py", *tiny(world / "digits", out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIT_ACCEL_TEST_FAULT": f"during_save:4:{signal_name}"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert verify_checkpoint(out / "checkpoint-2").completed_steps == 2
    assert (out / "checkpoint-4.tmp").is_dir() and not (out / "all_results.json").exists()
    if signal_name == "SIGINT":  # Ctrl-C: where the run stands and how to resume it, not a traceback
        assert "train.py: interrupted at step 4; the last complete checkpoint is checkpoint-2" in result.stderr
        assert "Traceback" not in result.stderr and result.returncode == 130


# --- vit-accel ------------------------------------------------------------------------------------------------------


def cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = vit_accel(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def test_predict_and_evaluate_mistakes(trained_run, digit_images, tmp_path, capsys):
    image = str(digit_images[0])
    broken_config = tmp_path / "broken_config"
    shutil.copytree(trained_run, broken_config, ignore=shutil.ignore_patterns("checkpoint-*"))
    (broken_config / "config.json").write_text('{"model_type": "vit_accel",')
    no_processor = tmp_path / "no_processor"
    shutil.copytree(
        trained_run, no_processor, ignore=shutil.ignore_patterns("checkpoint-*", "preprocessor_config.json")
    )
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"x")
    digits = str(trained_run.parent / "digits")
    cases = [
        (["predict", "--model", str(trained_run), "--top_k", "0", image], "predict", ["--top_k must be at least 1"]),
        (["predict", "--model", str(trained_run), "--top_k", "-3", image], "predict", ["--top_k", "-3"]),
        (["predict", "--model", str(trained_run), "--top_k", "many", image], "predict", ["--top_k", "'many'"]),
        (["predict", "--model", str(trained_run), "--batch_size", "0", image], "predict", ["--batch_size", "got 0"]),
        (["predict", "--model", str(trained_run), str(tmp_path / "nope.png")], "predict", ["nope.png"]),
        (
            ["predict", "--model", "outputs/digits-dta", image],
            "predict",
            ["outputs/digits-dta", "no such local", "Hub"],
        ),
        (
            ["predict", "--model", "./outputs/digits-dta", image],
            "predict",
            ["./outputs/digits-dta", "no such directory"],
        ),
        (["predict", "--model", "someone/digits-vit", image], "predict", ["someone/digits-vit", "Hub"]),
        (["predict", "--model", str(broken_config), image], "predict", [str(broken_config / "config.json")]),
        (["predict", "--model", str(no_processor), image], "predict", ["preprocessor_config.json is missing"]),
        (["predict", "--model", str(a_file), image], "predict", [str(a_file), "a file"]),
        (["evaluate", "--model", str(trained_run)], "evaluate", ["--dataset_name or --validation_dir"]),
        (
            ["evaluate", "--model", str(trained_run), "--dataset_name", digits, "--batch_size", "0"],
            "evaluate",
            ["--batch_size"],
        ),
        (["evaluate", "--model", str(trained_run), "--validation_dir", str(tmp_path / "none")], "evaluate", ["none"]),
        (["evaluate", "--model", str(trained_run), "--bad_images", "maybe"], "evaluate", ["--bad_images", "'maybe'"]),
        (["export", str(tmp_path / "missing"), str(tmp_path / "x")], "export", ["missing"]),
        (["export", str(trained_run), str(a_file)], "export", [str(a_file)]),
        (["export", str(trained_run), str(tmp_path / "x"), "--to", "keras"], "export", ["--to", "'keras'"]),
        (["convert", str(tmp_path / "missing.npz"), str(tmp_path / "y")], "convert", ["missing.npz"]),
        (["convert", "vit-bse-p16-224", str(tmp_path / "y")], "convert", ["vit-bse-p16-224", "vit-base-p16-224"]),
        (["convert", str(a_file), str(tmp_path / "y")], "convert", [str(a_file)]),
        (["variants", "--num_labels", "many"], "variants", ["--num_labels", "'many'"]),
        (["frobnicate"], "", ["frobnicate"]),
    ]
    before = snapshot(trained_run)
    for argv, command, expected in cases:
        code, stderr = cli(argv, capsys)
        assert code == 2, (argv, stderr)
        program = f"vit-accel {command}".strip()
        lines = [line for line in stderr.splitlines() if ": error:" in line]
        assert len(lines) == 1 and lines[0].startswith(program), (argv, stderr)
        for text in expected:
            assert text in lines[0], (argv, text, lines[0])
        assert "Traceback" not in stderr
    assert snapshot(trained_run) == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_evaluate_on_a_dataset_of_other_labels(trained_run, world, tmp_path, capsys):
    argv = ["evaluate", "--model", str(trained_run), "--train_dir", "x"]
    code, stderr = cli(argv, capsys)  # an unknown flag of evaluate
    assert code == 2 and "--train_dir" in stderr
    argv = ["evaluate", "--model", str(trained_run), "--validation_dir", str(world / "folder" / "train")]
    code, stderr = cli([*argv, "--dataloader_num_workers", "0", "--output_dir", str(tmp_path / "e")], capsys)
    assert code == 2 and "not among the model's labels" in stderr and "'cat'" in stderr


# --- the Python API ----------------------------------------------------------------------------------------------


def test_api_mistakes_raise_user_errors_naming_the_culprit(world):
    from vit_accel import ViTAccelConfig
    from vit_accel.data import DataArguments, load_image_dataset

    with pytest.raises(ValueError, match="Unknown ViT variant 'vit-bse-p16-224'"):
        ViTAccelConfig.from_variant("vit-bse-p16-224")
    with pytest.raises(UserError, match="single class"):
        load_image_dataset(DataArguments(dataset_name=str(world / "one_class")), seed=0)
    with pytest.raises(UserError, match="--max_eval_samples"):
        DataArguments(dataset_name="x", max_eval_samples=-2)


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


# --- vit-accel: directories that are not what they seem, flags no model can take, outputs that would lose files ----


@pytest.fixture(scope="module")
def odd_models(trained_run, tmp_path_factory):
    """Copies of the trained run, each with one defect, plus files and folders that are no image or checkpoint."""
    import PIL.Image
    import torch

    root = tmp_path_factory.mktemp("odd")
    keep = shutil.ignore_patterns("checkpoint-*")

    def variant(name: str) -> Path:
        shutil.copytree(trained_run, root / name, ignore=keep)
        return root / name

    assert vit_accel(["export", str(trained_run), str(root / "timm_export"), "--to", "timm"]) == 0
    mixed = variant("mixed")  # timm-named weights beside our config.json: every weight of the model missing
    shutil.copy(root / "timm_export" / "model.safetensors", mixed / "model.safetensors")
    labels = variant("labels")
    config = json.loads((labels / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "0"}, {"0": 0}  # one label for the 10-class head
    (labels / "config.json").write_text(json.dumps(config))
    width = variant("width_only")
    processor = json.loads((width / "preprocessor_config.json").read_text())
    (width / "preprocessor_config.json").write_text(json.dumps({**processor, "size": {"width": 16}}))
    no_record = variant("no_record")
    (no_record / "training_args.json").unlink()
    (root / "a_folder").mkdir()
    PIL.Image.new("RGB", (40, 40)).save(root / "big.png")
    (root / "junk.bin").write_bytes(b"\x80\x04garbage" * 8)
    torch.save({"a": 1}, root / "plain.pth")
    (root / "a_file").write_text("not a directory")
    return root


def _odd_cases(run: Path, image: str, odd: Path) -> dict:
    digits, split_less = str(run.parent / "digits"), str(run.parent / "digits" / "train")
    eval_dir = ["--dataloader_num_workers", "0", "--output_dir", str(odd / "eval")]
    return {
        "convert into a run": (["convert", str(run), str(odd / "mixed")], ["mixed: not empty", "README.md"], []),
        "export into a run": (
            ["export", str(run), str(odd / "mixed"), "--to", "timm"],
            ["mixed: not empty", "Choose a new directory"],
            [],
        ),
        "weights that do not match the config": (
            ["predict", "--model", str(odd / "mixed"), image],
            ["mixed: its weights do not match config.json", "missing (e.g. classifier.bias", "unexpected (e.g. "],
            [],
        ),
        "id2label of the wrong length": (
            ["predict", "--model", str(odd / "labels"), image],
            ["config.json's id2label has 1 label, but the weights' classifier has 10 outputs"],
            ["LOAD REPORT"],
        ),
        "processor size without height": (
            ["predict", "--model", str(odd / "width_only"), image],
            [str(odd / "width_only" / "preprocessor_config.json"), "size"],
            [],
        ),
        "predict on a timm export": (
            ["predict", "--model", str(odd / "timm_export"), image],
            ["is a timm export", "vit-accel convert"],
            ["Unrecognized model"],
        ),
        "evaluate a timm export": (
            ["evaluate", "--model", str(odd / "timm_export"), "--dataset_name", digits, *eval_dir],
            ["is a timm export"],
            [],
        ),
        "a directory as an image": (
            ["predict", "--model", str(run), str(odd / "a_folder")],
            ["a_folder: a directory, not an image file"],
            ["No such image file"],
        ),
        "an image over PIL's pixel limit": (
            ["predict", "--model", str(run), str(odd / "big.png")],
            [f"Cannot read image {odd / 'big.png'}", "decompression bomb"],
            [],
        ),
        "evaluate output that is a file": (
            ["evaluate", "--model", str(run), "--dataset_name", digits, "--output_dir", str(odd / "a_file")],
            ["--output_dir", "a_file is a file"],
            [],
        ),
        "evaluate output that cannot be created": (
            ["evaluate", "--model", str(run), "--dataset_name", digits, "--output_dir", str(odd / "a_file" / "x")],
            ["--output_dir", "cannot be written"],
            [],
        ),
        "hold-out settings unknown": (
            ["evaluate", "--model", str(odd / "no_record"), "--dataset_name", split_less, *eval_dir],
            ["has no validation or test split", "no_record has no training_args.json", "--seed and --train_val_split"],
            [],
        ),
        "evaluate seed -1": (
            ["evaluate", "--model", str(run), "--dataset_name", split_less, "--seed", "-1", *eval_dir],
            ["--seed must be in [0, 2**32 - 1], got -1"],
            [],
        ),
        "convert num_labels 0": (["convert", str(run), str(odd / "c"), "--num_labels", "0"], ["--num_labels"], []),
        "convert num_labels -1": (["convert", str(run), str(odd / "c"), "--num_labels", "-1"], ["--num_labels"], []),
        "variants num_labels -5": (["variants", "--num_labels", "-5"], ["--num_labels", "got -5"], []),
        "convert image_size 0": (["convert", str(run), str(odd / "c"), "--image_size", "0"], ["--image_size"], []),
        "convert image_size -16": (["convert", str(run), str(odd / "c"), "--image_size", "-16"], ["--image_size"], []),
        "convert image_size 18": (
            ["convert", str(run), str(odd / "c"), "--image_size", "18"],
            ["image_size 18 must be a multiple of patch_size 4"],
            [],
        ),
        "convert num_heads 5": (
            ["convert", str(run), str(odd / "c"), "--num_heads", "5"],
            ["hidden_size (32) must be divisible by num_attention_heads (5)"],
            [],
        ),
        "convert num_heads 0": (["convert", str(run), str(odd / "c"), "--num_heads", "0"], ["--num_heads"], []),
        "convert representation_size -3": (
            ["convert", str(run), str(odd / "c"), "--representation_size", "-3"],
            ["--representation_size", "-3"],
            [],
        ),
        "convert random bytes": (
            ["convert", str(odd / "junk.bin"), str(odd / "c")],
            ["junk.bin: not a readable torch checkpoint"],
            ["unpickle", "weights_only"],
        ),
        "convert a pickle without tensors": (
            ["convert", str(odd / "plain.pth"), str(odd / "c")],
            ["plain.pth: not a state dict", "'a': int"],
            [],
        ),
    }


ODD_CASES = list(_odd_cases(Path("run"), "image.png", Path("odd")))


@pytest.mark.parametrize("name", ODD_CASES)
def test_vit_accel_refuses_in_one_line_and_writes_nothing(name, trained_run, digit_images, odd_models, capsys,
                                                          monkeypatch):  # fmt: skip
    import PIL.Image

    from vit_accel import inference

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was found")

    if name.startswith(("evaluate output", "hold-out", "evaluate seed")):
        monkeypatch.setattr(inference, "load_classifier", no_loading)  # refused before any long work
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 40 * 40 // 3)  # big.png is over twice this limit
    argv, expected, unexpected = _odd_cases(trained_run, str(digit_images[0]), odd_models)[name]
    before = snapshot(trained_run, odd_models)
    code, stderr = cli(argv, capsys)
    assert code == 2, (argv, stderr)
    line = assert_one_line(stderr, f"vit-accel {argv[0]}", *expected)
    for text in unexpected:
        assert text not in stderr, (text, line)
    assert snapshot(trained_run, odd_models) == before
    assert not (odd_models / "c").exists()

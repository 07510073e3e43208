"""`vit-accel`'s commands: predict, evaluate, convert and export on mistakes and odd models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_line, cli, snapshot

from vit_accel.cli import main as vit_accel

# --- vit-accel ------------------------------------------------------------------------------------------------------


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
            ["--seed -1: a seed must be an integer from 0 to 4294967295"],  # the one seed check, as train.py's
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

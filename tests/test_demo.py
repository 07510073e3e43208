"""The offline demos on real data: scikit-learn's digits, through the recipes as a user runs them."""

import json
import subprocess

import pytest
from launching import ROOT, launch_command

from vit_accel.demo import export_mae_digits

# The README's measured gains of the pre-trained fine-tuning over the one from scratch (top-1 on the 360 test images):
# +5.0 points for the recipes' seed 0, -0.8, +4.7, +4.7 and +5.0 for seeds 1-4 (+3.7 on average). This run is seed 0's:
# it must stay ahead by at least a point; a run below that has lost what pre-training brings to that seed.
MIN_GAIN = 0.01


def test_export_mae_digits_writes_unlabelled_training_images_and_a_stratified_labelled_tenth(tmp_path):
    written = export_mae_digits(tmp_path / "digits", label_fraction=0.1, seed=0)
    unlabeled, labeled = written["unlabeled"], written["labeled"]
    assert list(unlabeled) == ["train"] and unlabeled["train"].column_names == ["image"]
    assert unlabeled["train"].num_rows == 1437
    assert labeled["train"].num_rows == 143 and labeled["test"].num_rows == 360
    counts = [labeled["train"]["label"].count(c) for c in range(10)]
    assert min(counts) >= 13 and max(counts) <= 16  # stratified: 10% of each class's 140-146 training images
    # The labelled tenth is part of the training images, never of the test split.
    as_bytes = lambda rows: {image.tobytes() for image in rows["image"]}  # noqa: E731
    assert as_bytes(labeled["train"]) <= as_bytes(unlabeled["train"])
    other = export_mae_digits(tmp_path / "other", label_fraction=0.1, seed=1)["labeled"]
    assert as_bytes(other["train"]) != as_bytes(labeled["train"])  # seeded
    assert as_bytes(other["test"]) == as_bytes(labeled["test"])


def _start(script: str, recipe: str, *flags: str) -> subprocess.Popen:
    command, env = launch_command("cpu.yaml", [f"recipes/{recipe}", *flags], script=script)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: int = 900) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-2000:] + err[-4000:]


def test_mae_pre_training_puts_the_fine_tuning_on_a_tenth_of_the_labels_ahead_of_scratch(tmp_path):
    """The README's MAE demo, as its recipes run it: pretrain.py on the 1,437 training images without labels, then
    train.py on 143 of them with labels, against train.py on the same 143 from scratch, both on the 360 test images."""
    data = tmp_path / "digits-mae"
    export_mae_digits(data, label_fraction=0.1, seed=0)
    pretrained, finetuned, scratch = tmp_path / "pretrain", tmp_path / "finetune", tmp_path / "scratch"
    # Launched as users run them, and so that the baseline, which needs no pre-training, runs beside it (one process
    # per core): about 3 minutes on 2 idle cores.
    baseline = _start("train.py", "digits_mae_scratch.yaml", "--dataset_name", str(data / "labeled"),
                      "--output_dir", str(scratch))  # fmt: skip
    pretraining = _start("pretrain.py", "digits_mae_pretrain.yaml", "--dataset_name", str(data / "unlabeled"),
                         "--output_dir", str(pretrained))  # fmt: skip
    _finish(pretraining)
    assert json.loads((pretrained / "config.json").read_text())["model_type"] == "vit_accel_mae"
    finetuning = _start("train.py", "digits_mae_finetune.yaml", "--model_name_or_path", str(pretrained),
                        "--dataset_name", str(data / "labeled"), "--output_dir", str(finetuned))  # fmt: skip
    _finish(baseline)
    _finish(finetuning)
    results = {name: json.loads((folder / "all_results.json").read_text()) for name, folder in (
        ("pretrained", finetuned), ("scratch", scratch))}  # fmt: skip
    for result in results.values():
        assert result["eval_split"] == "test" and result["eval_num_examples"] == 360
        assert result["train_steps"] == 50 * 5  # 50 epochs of 143 images in batches of 32
    assert json.loads((finetuned / "config.json").read_text())["pooling"] == "mean"
    gain = results["pretrained"]["eval_top1"] - results["scratch"]["eval_top1"]
    assert gain >= MIN_GAIN, {name: result["eval_top1"] for name, result in results.items()}


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_a_label_fraction_outside_zero_one_is_refused(tmp_path, fraction):
    with pytest.raises(ValueError, match="label_fraction"):
        export_mae_digits(tmp_path / "digits", label_fraction=fraction)

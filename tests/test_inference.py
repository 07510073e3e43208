"""Downstream use of a trained model: the three ways users load it (each in a fresh process), predict and evaluate."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from factories import ROOT, write_exif_rotated_pair
from launching import LEAVES_GROUP

from vit_accel.cli import main as cli


def run_python(script: str, cwd, env: dict | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def pipeline_predictions(model_dir, images, trust_remote_code: bool, block_vit_accel: bool, cwd, env=None) -> dict:
    block = 'sys.modules["vit_accel"] = None  # vit_accel cannot be imported\n' if block_vit_accel else ""
    script = f"""
import json, sys
{block}from transformers import pipeline
classifier = pipeline("image-classification", model={str(model_dir)!r}, trust_remote_code={trust_remote_code})
out = {{p: classifier(p, top_k=5) for p in {[str(i) for i in images]!r}}}
print(json.dumps({{"module": type(classifier.model).__module__, "out": out}}))
"""
    return run_python(script, cwd, env)


def test_three_ways_to_load_give_the_same_predictions(trained_run, digit_images, tmp_path, capsys):
    assert cli(["predict", "--model", str(trained_run), "--json", *map(str, digit_images)]) == 0
    reference = {item["image"]: item["predictions"] for item in json.loads(capsys.readouterr().out)}
    assert len(reference) == 6 and all(len(top) == 5 for top in reference.values())

    def assert_same(predictions: dict):
        for image, top in reference.items():
            got = predictions[image]
            assert [p["label"] for p in got] == [p["label"] for p in top], image
            assert [p["score"] for p in got] == pytest.approx([p["score"] for p in top], abs=1e-4), image

    # 1. With vit_accel installed: our class and the Auto class, no remote code.
    script = f"""
import json, torch, vit_accel
from transformers import AutoModelForImageClassification
from vit_accel import ViTAccelForImageClassification
a = ViTAccelForImageClassification.from_pretrained({str(trained_run)!r}).eval()
b = AutoModelForImageClassification.from_pretrained({str(trained_run)!r}).eval()
x = torch.randn(2, 3, 16, 16)
with torch.no_grad():
    diff = (a(x).logits - b(x).logits).abs().max().item()
print(json.dumps({{"type": type(b).__name__, "diff": diff}}))
"""
    first = run_python(script, tmp_path)
    assert first == {"type": "ViTAccelForImageClassification", "diff": 0.0}

    # 2. Without vit_accel: the saved modeling code travels with the directory (trust_remote_code).
    modules = {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    second = pipeline_predictions(trained_run, digit_images, True, True, tmp_path, modules)
    assert second["module"].startswith("transformers_modules")
    assert_same(second["out"])

    # 3. Plain transformers, no remote code: the exported transformers-native ViT directory.
    exported = tmp_path / "exported"
    assert cli(["export", str(trained_run), str(exported)]) == 0
    assert json.loads((exported / "config.json").read_text())["model_type"] == "vit"
    third = pipeline_predictions(exported, digit_images, False, True, tmp_path)
    assert third["module"] == "transformers.models.vit.modeling_vit"
    assert_same(third["out"])


def test_evaluate_reproduces_the_training_run_and_writes_the_confusion_matrix(trained_run, tmp_path, capsys):
    results = json.loads((trained_run / "all_results.json").read_text())
    digits = trained_run.parent / "digits"
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(trained_run), "--dataset_name", str(digits), "--max_eval_samples", "64"]
    assert cli([*argv, "--dataloader_num_workers", "0", "--output_dir", str(out)]) == 0
    summary = json.loads((out / "eval_results.json").read_text())
    assert summary["num_examples"] == 64
    assert summary["top1"] == pytest.approx(results["eval_top1"], abs=1e-9)
    assert summary["top5"] == pytest.approx(results["eval_top5"], abs=1e-9)
    assert summary["loss"] == pytest.approx(results["eval_loss"], abs=1e-4)
    assert set(summary["per_class_accuracy"]) <= {str(i) for i in range(10)}
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert summary["images_per_second"] > 0

    # The report: top-k for the k asked, per-class and macro scores, the worst misclassified as PNG and HTML.
    out3 = tmp_path / "eval_top3"
    assert cli([*argv, "--dataloader_num_workers", "0", "--output_dir", str(out3), "--top_k", "3"]) == 0
    report = json.loads((out3 / "eval_results.json").read_text())
    assert report["top1"] <= report["top3"] <= report["top5"]
    per_class = report["per_class"]
    assert sum(v["support"] for v in per_class.values()) == 64
    present = [v for v in per_class.values() if v["support"]]
    assert report["macro_f1"] == pytest.approx(sum(v["f1"] for v in present) / len(present))
    wrong = round(64 * (1 - report["top1"]))
    assert len(report["worst_misclassified"]) == min(16, wrong)
    losses = [w["loss"] for w in report["worst_misclassified"]]
    assert losses == sorted(losses, reverse=True)
    assert all(w["true"] != w["predicted"] for w in report["worst_misclassified"])
    page = (out3 / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(losses)
    for worst in report["worst_misclassified"]:
        assert f"<td>{worst['true']}</td><td>{worst['predicted']}</td><td>{worst['row']}</td>" in page
    if losses:
        assert (out3 / "worst_misclassified.png").stat().st_size > 1000


def test_evaluate_with_two_processes_counts_each_example_once(trained_run, tmp_path):
    results = json.loads((trained_run / "all_results.json").read_text())
    out = tmp_path / "eval2"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/multi_cpu.yaml",
        "--num_cpu_threads_per_process", "1", LEAVES_GROUP, "vit_accel.cli", "evaluate", "--model", str(trained_run),
        "--dataset_name", str(trained_run.parent / "digits"), "--max_eval_samples", "64",
        "--dataloader_num_workers", "0", "--batch_size", "24", "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out / "eval_results.json").read_text())
    assert summary["num_examples"] == 64
    assert summary["top1"] == pytest.approx(results["eval_top1"], abs=1e-9)
    # Gathering restores the split's order: the same worst rows as one process finds.
    one = tmp_path / "eval1"
    assert cli([*command[command.index("evaluate") :][:-1], str(one)]) == 0
    assert summary["worst_misclassified"] == json.loads((one / "eval_results.json").read_text())["worst_misclassified"]


def test_bad_input_names_the_file(trained_run, digit_images, tmp_path, capsys):
    import shutil

    no_weights = tmp_path / "no_weights"
    shutil.copytree(trained_run, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "checkpoint-*"))
    no_config = tmp_path / "no_config"
    shutil.copytree(trained_run, no_config, ignore=shutil.ignore_patterns("config.json", "checkpoint-*"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    # A model of another task: the bare encoder, without a classification head.
    from vit_accel import ViTAccelConfig, ViTAccelModel

    encoder = tmp_path / "encoder"
    ViTAccelModel(ViTAccelConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=16,
                                 patch_size=4, intermediate_size=64)).save_pretrained(encoder)  # fmt: skip
    shutil.copy(trained_run / "preprocessor_config.json", encoder)

    cases = [
        ([str(no_weights)], f"--model {no_weights}: no weights"),
        ([str(no_config)], f"--model {no_config}: config.json is missing"),
        ([str(encoder)], "holds a ViTAccelModel model, not an image classifier"),
    ]
    for model, message in cases:
        assert cli(["predict", "--model", *model, str(digit_images[0])]) == 2
        assert message in capsys.readouterr().err
    assert cli(["predict", "--model", str(trained_run), str(digit_images[0]), str(broken)]) == 2
    assert f"Cannot read image {broken}" in capsys.readouterr().err


def test_evaluate_draws_the_training_runs_own_hold_out_of_a_dataset_without_an_evaluation_split(
    trained_run, tmp_path, capsys
):
    import shutil

    from vit_accel.data import DataArguments, load_image_dataset

    # A run trained with --seed 3 --train_val_split 0.3 on a dataset of one split (its record says so).
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoint-*"))
    record = json.loads((run / "training_args.json").read_text())
    record["TrainingArguments"]["seed"], record["DataArguments"]["train_val_split"] = 3, 0.3
    (run / "training_args.json").write_text(json.dumps(record))
    split_less = str(trained_run.parent / "digits" / "train")

    def evaluate(*flags: str) -> tuple[dict, str]:
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        argv = ["evaluate", "--model", str(run), "--dataset_name", split_less, "--dataloader_num_workers", "0"]
        assert cli([*argv, "--output_dir", str(out), *flags]) == 0
        results = json.loads((out / "eval_results.json").read_text())
        assert results.pop("images_per_second") > 0  # a measurement: differs from run to run
        return results, capsys.readouterr().err

    recorded, err = evaluate()
    source = f"(from {run / 'training_args.json'})"
    assert f"--train_val_split 0.3 {source}, --seed 3 {source}" in err
    held_out = load_image_dataset(DataArguments(dataset_name=split_less, train_val_split=0.3), 3, for_training=False)
    assert recorded["num_examples"] == len(held_out.validation) == 431  # 30% of the 1437 training rows, stratified
    given, err = evaluate("--seed", "3", "--train_val_split", "0.3")
    assert given == recorded and "--train_val_split 0.3 (given), --seed 3 (given)" in err
    other, _ = evaluate("--seed", "4")  # another draw of the same size: other images, another loss
    assert other["num_examples"] == 431 and other["loss"] != recorded["loss"]


def test_a_photo_with_exif_orientation_is_seen_upright_by_predict_evaluate_and_the_pipeline(
    trained_run, tmp_path, capsys
):
    from transformers import pipeline

    jpeg, png = write_exif_rotated_pair(tmp_path / "files")  # 16x16: the model's size, so no resampling differs
    assert cli(["predict", "--model", str(trained_run), "--json", "--top_k", "10", str(jpeg), str(png)]) == 0
    photo, upright = (item["predictions"] for item in json.loads(capsys.readouterr().out))
    assert [p["label"] for p in photo] == [p["label"] for p in upright]
    assert [p["score"] for p in photo] == pytest.approx([p["score"] for p in upright], abs=1e-6)
    # transformers' pipeline with the saved image processor, on the photo itself.
    served = pipeline("image-classification", model=str(trained_run))(str(jpeg), top_k=10)
    assert [p["label"] for p in served] == [p["label"] for p in upright]
    assert [p["score"] for p in served] == pytest.approx([p["score"] for p in upright], abs=1e-4)
    # vit-accel evaluate (the training run's evaluation reads the same way): the same loss for either file.
    losses = []
    for name, path in (("photo", jpeg), ("upright", png)):
        for label in ("3", "5"):  # two of the model's classes, one image each
            (tmp_path / name / label).mkdir(parents=True)
            (tmp_path / name / label / path.name).write_bytes(path.read_bytes())
        out = tmp_path / f"eval_{name}"
        argv = ["evaluate", "--model", str(trained_run), "--validation_dir", str(tmp_path / name)]
        assert cli([*argv, "--output_dir", str(out), "--dataloader_num_workers", "0"]) == 0, capsys.readouterr().err
        losses.append(json.loads((out / "eval_results.json").read_text())["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_evaluation_report_scores_match_scikit_learn_and_render(tmp_path, num_classes):
    import numpy as np
    from PIL import Image
    from sklearn.metrics import precision_recall_fscore_support

    from vit_accel.inference import EvaluationResult, write_evaluation

    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 2000)
    predicted = np.where(rng.random(2000) < 0.7, labels, rng.integers(0, num_classes, 2000))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    names = [f"class_{i}" for i in range(num_classes)]
    worst = [
        {"row": int(i), "true": names[labels[i]], "predicted": names[predicted[i]], "loss": 3.0 - i / 100,
         "image": Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))}
        for i in np.flatnonzero(labels != predicted)[:5]
    ]  # fmt: skip
    result = EvaluationResult(
        top1=float((labels == predicted).mean()), top5=1.0, loss=1.0, num_examples=2000, per_class_accuracy={},
        confusion=confusion, labels=names, images_per_second=100.0, k=5, top_k=1.0, worst=worst,
    )  # fmt: skip
    scores = result.per_class_scores()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(num_classes), zero_division=0
    )
    for i, name in enumerate(names):
        assert scores[name]["precision"] == pytest.approx(precision[i])
        assert scores[name]["recall"] == pytest.approx(recall[i]) and scores[name]["f1"] == pytest.approx(f1[i])
        assert scores[name]["support"] == support[i]
    macro = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    assert [scores["macro"][k] for k in ("precision", "recall", "f1")] == pytest.approx(list(macro[:3]))
    off = confusion - np.diag(np.diag(confusion))
    largest = result.largest_confusions(3)
    assert [c["count"] for c in largest] == sorted(off.ravel().tolist(), reverse=True)[:3]

    summary = write_evaluation(result, tmp_path)
    assert summary["macro_f1"] == pytest.approx(macro[2])
    for name in ("confusion_matrix.png", "worst_misclassified.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 1000, name
    with Image.open(tmp_path / "confusion_matrix.png") as png:
        assert max(png.size) <= 2000  # bounded at 100 classes too

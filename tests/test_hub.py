import json
from pathlib import Path

from factories import FAKE_TOKEN

import vit_accel.hub
from vit_accel.hub import push_to_hub


def test_model_card_renders_the_real_numbers_of_the_run(trained_run):
    card = (trained_run / "README.md").read_text()
    results = json.loads((trained_run / "all_results.json").read_text())
    header = card.split("---")[1]
    for line in ("pipeline_tag: image-classification", "library_name: transformers", "license: apache-2.0"):
        assert line in header
    assert f"| eval_top1 | {results['eval_top1']:.4f} |" in card
    assert f"| eval_top5 | {results['eval_top5']:.4f} |" in card
    assert f"after {results['train_steps']} optimizer steps" in card
    assert "![Training curves](training_curves.png)" in card and (trained_run / "training_curves.png").is_file()
    assert "| learning_rate | 0.003 |" in card and "| optimizer | adamw |" in card
    assert "train.py --model_name_or_path vit-tiny-p16-224 --from_scratch" in card
    assert "transformers 5." in card and "torch 2." in card


def test_no_token_in_any_file_written(trained_run):
    files = [p for p in trained_run.rglob("*") if p.is_file()]
    assert len(files) >= 10  # model, code, configs, logs, card, curves
    for path in files:
        assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_push_uploads_the_model_without_checkpoints(trained_run, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr(vit_accel.hub, "HfApi", FakeApi)
    url = push_to_hub(trained_run, "someone/digits-vit", private=True)
    assert url == "https://huggingface.co/someone/digits-vit"
    (_, token), (_, repo_id, repo_kwargs), (_, upload) = calls
    assert token is None  # huggingface_hub's own: HF_TOKEN or `hf auth login`
    assert repo_id == "someone/digits-vit" and repo_kwargs["private"] is True and repo_kwargs["exist_ok"]
    assert upload["folder_path"] == str(trained_run) and upload["repo_id"] == "someone/digits-vit"
    assert "checkpoint-*" in upload["ignore_patterns"] and "*.tmp" in upload["ignore_patterns"]


def test_an_adapter_push_leaves_the_merged_copy_and_checkpoints_out(tmp_path, monkeypatch):
    from huggingface_hub.utils import filter_repo_objects

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            uploads.append(kwargs)

    monkeypatch.setattr(vit_accel.hub, "HfApi", FakeApi)
    push_to_hub(tmp_path, "someone/digits-lora", exclude=["merged/*"])
    files = [
        "adapter_model.safetensors", "adapter_config.json", "classifier_config.json", "preprocessor_config.json",
        "README.md", "merged/model.safetensors", "merged/config.json", "checkpoint-4/model.safetensors",
    ]  # fmt: skip
    kept = list(filter_repo_objects(files, ignore_patterns=uploads[0]["ignore_patterns"]))
    assert kept == files[:5]


def test_model_card_metadata_is_what_the_hub_parses(trained_run):
    from huggingface_hub import ModelCard

    results = json.loads((trained_run / "all_results.json").read_text())
    card = ModelCard.load(trained_run / "README.md")
    parsed = {result.metric_type: result for result in card.data.eval_results}
    assert parsed["accuracy"].metric_value == results["eval_top1"]
    assert parsed["top_5_accuracy"].metric_value == results["eval_top5"]
    assert parsed["loss"].metric_value == results["eval_loss"]
    record = json.loads((trained_run / "training_args.json").read_text())
    dataset = record["DataArguments"]["dataset_name"]
    for result in parsed.values():
        assert result.task_type == "image-classification" and result.dataset_split == results["eval_split"]
        assert result.dataset_name == Path(dataset).name  # a local dataset: named, not claimed as a Hub id
    assert card.data.library_name == "transformers" and card.data.base_model is None  # trained from scratch
    # The images the results are on, a usage snippet with the model's real path, the resolved settings.
    text = card.text
    assert f"`{results['eval_split']}` split of `{dataset}` ({results['eval_num_examples']} images)" in text
    assert f'model="{trained_run.resolve()}"' in text
    assert '"learning_rate": 0.003' in text and '"per_device_train_batch_size"' in text


def test_model_card_names_a_hub_base_model_and_dataset(tmp_path):
    from huggingface_hub import ModelCard

    from vit_accel.hub import write_model_card

    results = {"eval_top1": 0.91, "eval_top5": 0.99, "eval_loss": 0.3, "train_steps": 10, "eval_split": "test"}
    results["eval_num_examples"] = 10000
    record = {
        "command": ["train.py", "recipes/cifar100_google.yaml"],
        "ModelArguments": {"model_name_or_path": "google/vit-base-patch16-224-in21k", "from_scratch": False},
        "DataArguments": {"dataset_name": "uoft-cs/cifar100", "dataset_config_name": None},
        "TrainingArguments": {"learning_rate": 0.03, "optimizer": "sgd", "hub_model_id": "someone/vit-cifar100"},
    }
    (tmp_path / "all_results.json").write_text(json.dumps(results))
    (tmp_path / "training_args.json").write_text(json.dumps(record))
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "apple"}, "hidden_size": 768}))
    card = ModelCard.load(write_model_card(tmp_path))
    assert card.data.base_model == "google/vit-base-patch16-224-in21k"
    assert card.data.datasets == ["uoft-cs/cifar100"]
    (top1,) = [result for result in card.data.eval_results if result.metric_type == "accuracy"]
    assert (top1.dataset_type, top1.dataset_split, top1.metric_value) == ("uoft-cs/cifar100", "test", 0.91)
    assert 'model="someone/vit-cifar100"' in card.text

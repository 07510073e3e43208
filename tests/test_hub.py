import json

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

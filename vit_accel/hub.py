"""Sharing a trained model: the model card, and the upload to the Hugging Face Hub.

The card is written from what the run left in its output directory (`all_results.json`, `training_args.json`,
`training_curves.png`), so it always shows the real numbers of that run. Tokens come from huggingface_hub's usual
places (`HF_TOKEN`, `hf auth login`) and are never printed nor written anywhere.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

CARD_FILE = "README.md"
_LIBRARIES = ("vit_accel", "torch", "transformers", "accelerate", "datasets", "deepspeed", "safetensors")
# Hyperparameters shown in the card, in this order.
_HYPERPARAMETERS = (
    "optimizer",
    "learning_rate",
    "weight_decay",
    "momentum",
    "lr_scheduler_type",
    "num_warmup_steps",
    "num_train_epochs",
    "max_train_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "label_smoothing",
    "metric_for_best_model",
    "early_stopping_patience",
    "seed",
)


def _versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def write_model_card(output_dir: str | Path, results: dict | None = None) -> Path:
    """Write `README.md` (Hub metadata + a human summary) into a finished run's `output_dir`; `results`: the run's
    final results, read from its `all_results.json` when not given (train.py writes that file after the card)."""
    root = Path(output_dir)
    if results is None:
        results = json.loads((root / "all_results.json").read_text())
    record = json.loads((root / "training_args.json").read_text())
    config = json.loads((root / "config.json").read_text())
    model_args, data_args, train_args = (
        record["ModelArguments"],
        record["DataArguments"],
        record["TrainingArguments"],
    )
    dataset = data_args.get("dataset_name") or data_args.get("train_dir")
    is_hub_dataset = bool(data_args.get("dataset_name")) and not Path(data_args["dataset_name"]).exists()
    base = model_args["model_name_or_path"]
    weights = "random initialisation (--from_scratch)" if model_args.get("from_scratch") else f"`{base}`"
    name = train_args.get("hub_model_id") or root.name
    # Where the model is loaded from: its Hub repo, else the directory itself (by absolute path).
    location = train_args.get("hub_model_id") or str(root.resolve())

    metrics = {k: results[k] for k in ("eval_top1", "eval_top5", "eval_loss") if k in results}
    split = results.get("eval_split") or "validation"
    num_eval = results.get("eval_num_examples")
    # model-index: the Hub's results widget and leaderboards read these (task, dataset, split, metric values).
    dataset_id = dataset if is_hub_dataset else Path(str(dataset or "local")).name
    eval_results = [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset_id,
            dataset_name=dataset_id,
            dataset_config=data_args.get("dataset_config_name"),
            dataset_split=split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=float(results[key]),
        )
        for key, metric_type, metric_name in (
            ("eval_top1", "accuracy", "top-1 accuracy"),
            ("eval_top5", "top_5_accuracy", "top-5 accuracy"),
            ("eval_loss", "loss", "cross-entropy loss"),
        )
        if key in results
    ]
    # base_model must be a Hub id: a Hub checkpoint the run started from (not a local path, a named variant whose
    # weights are Google's .npz files, or a model trained from scratch).
    on_hub = not model_args.get("from_scratch") and not Path(base).expanduser().exists() and "/" in base
    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["vit_accel", "vision-transformer", "image-classification"],
        datasets=[dataset] if is_hub_dataset else None,
        metrics=["accuracy"],
        base_model=base if on_hub else None,
        model_name=name,
        eval_results=eval_results or None,
    )
    sgd = train_args.get("optimizer") == "sgd"
    shown = [k for k in _HYPERPARAMETERS if train_args.get(k) is not None and (k != "momentum" or sgd)]
    rows = "\n".join(f"| {key} | {train_args[key]} |" for key in shown)
    metric_rows = "\n".join(f"| {key} | {value:.4f} |" for key, value in metrics.items())
    labels = list(config.get("id2label", {}).values())
    shown_labels = ", ".join(labels[:20]) + (f", … ({len(labels)} in all)" if len(labels) > 20 else "")
    example = f"{labels[0]}.png".replace(" ", "_") if labels else "image.png"
    skipped = (results.get("train_unreadable_images", 0), results.get("eval_unreadable_images", 0))
    unreadable = (
        f" {skipped[0]} training and {skipped[1]} evaluation images could not be decoded and were replaced by the "
        "next readable ones (`--bad_images skip`)."
        if any(skipped)
        else ""
    )
    stopped = results.get("early_stopped_at")
    if stopped is not None:
        unreadable += (
            f" The run stopped early at step {stopped}: {train_args.get('early_stopping_patience')} evaluations in a "
            f"row without improvement of {results.get('metric_for_best_model')} (best {results.get('best_metric')} "
            f"at step {results.get('best_step')})."
        )
    versions = ", ".join(f"{lib} {version}" for lib, version in _versions().items())
    curves = "![Training curves](training_curves.png)\n" if (root / "training_curves.png").is_file() else ""
    command = " ".join(record.get("command", []))
    settings = json.dumps({key: value for key, value in record.items() if key != "command"}, indent=2)
    shape = (
        f"{config.get('num_hidden_layers')} layers, width {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads, patch {config.get('patch_size')}, {config.get('image_size')} px"
    )
    content = f"""---
{data.to_yaml()}
---

# {name}

A Vision Transformer ({shape}) fine-tuned with vit_accel on {f"`{dataset}`" if dataset else "a local dataset"},
starting from {weights}.

## Results

| metric | value |
|---|---|
{metric_rows}

Measured on the `{split}` split of {f"`{dataset}`" if dataset else "the dataset"}{
        f" ({num_eval} images)" if num_eval is not None else ""
    } after {results.get("train_steps")} optimizer steps.{unreadable}

{curves}
## Use

```python
from transformers import pipeline
classifier = pipeline("image-classification", model="{location}", trust_remote_code=True)
classifier("{example}")  # an image of one of the labels below
```

With vit_accel installed, `trust_remote_code` is not needed: `import vit_accel` registers the model type.

Labels: {shown_labels}.

## Training

| hyperparameter | value |
|---|---|
{rows}

The exact arguments (run under `accelerate launch --config_file <mode>.yaml`):

```bash
{command}
```

<details><summary>Every setting of the run, as resolved from the recipe and flags</summary>

```json
{settings}
```

</details>

Library versions: {versions}.
"""
    path = root / CARD_FILE
    ModelCard(content).save(path)
    return path


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    path_in_repo: str | None = None,
    token: str | None = None,
    exclude: Sequence[str] = (),
) -> str:
    """Upload `folder` (without checkpoints, temporary files or the `exclude` patterns) to the model repository
    `repo_id`; returns its URL.

    `token` defaults to huggingface_hub's own (HF_TOKEN, `hf auth login`).
    """
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        path_in_repo=path_in_repo,
        ignore_patterns=["checkpoint-*", "*.tmp", "*.tmp/*", ".vit_accel.lock", ".write-test-*", *exclude],
        commit_message="Upload model trained with vit_accel",
    )
    return str(url)

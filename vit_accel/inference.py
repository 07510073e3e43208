"""Using a trained model: `vit-accel predict` (top-k labels of images) and `vit-accel evaluate` (a whole dataset).

Both load any image-classification directory or Hub id that transformers can load (ours, transformers' ViT, ...)
together with its saved image processor, so predictions see exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from .adapters import is_adapter_dir, load_adapter_classifier
from .data import DataArguments, ImageClassificationDataset, build_pipeline, load_image_dataset, make_dataloader
from .data.sources import is_url
from .errors import UserError
from .evaluation import evaluate_classifier
from .training.preflight import make_writable_dir
from .weights.kinds import other_kind

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _looks_local(name: str) -> bool:
    # A Hub id is `name` or `owner/name`; anything absolute, relative-dotted, home-based or deeper is a path.
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def load_classifier(model: str, allow_changed_base: bool = False) -> tuple[torch.nn.Module, dict]:
    """An image classifier in eval mode and its preprocessing (`size`, `image_mean`, `image_std`).

    An adapter directory is merged into its base, refused if that base's weights changed since the adapter was
    trained unless `allow_changed_base` (`vit_accel.adapters.check_base`).

    Raises:
        UserError: no such directory or Hub model, a directory without config, weights or image processor, a corrupt
            config.json or preprocessor_config.json, a timm export, a model that is not an image classifier, or
            weights that do not fit the config (a missing, unexpected or differently shaped tensor).
    """
    import vit_accel  # noqa: F401  (registers our model type, so no remote code is needed for our directories)

    path = Path(model).expanduser()
    if path.is_dir() and is_adapter_dir(path):
        # A LoRA adapter directory: its base, rebuilt with the adapter's head, with the adapter merged in.
        if not (path / "preprocessor_config.json").is_file():
            raise UserError(f"--model {model}: preprocessor_config.json is missing, so the preprocessing is unknown.")
        preprocessing = _preprocessing(str(path), path / "preprocessor_config.json")
        return load_adapter_classifier(path, allow_changed_base=allow_changed_base).eval(), preprocessing
    if path.exists():
        kind = other_kind(path)
        if kind is not None:
            raise UserError(f"--model {model}: {kind}.")
        if not path.is_dir():
            raise UserError(f"--model {model}: a file, not a saved model directory.")
        files = {}
        for name in ("config.json", "preprocessor_config.json"):
            if not (path / name).is_file():
                if name == "preprocessor_config.json":
                    raise UserError(
                        f"--model {model}: preprocessor_config.json is missing, so the preprocessing (input size, "
                        "mean/std) is unknown. Write the one the weights were trained with, e.g. transformers."
                        f"ViTImageProcessor(size={{'height': H, 'width': W}}, image_mean=..., image_std=...)"
                        f".save_pretrained({model!r})."
                    )
                raise UserError(f"--model {model}: {name} is missing, so this is not a saved image classifier.")
            try:
                files[name] = json.loads((path / name).read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise UserError(f"{path / name} is not valid JSON ({error}).") from error
            if not isinstance(files[name], dict):
                raise UserError(f"{path / name}: expected a JSON object, found {type(files[name]).__name__}.")
        _check_model_type(model, path / "config.json", files["config.json"])
        if not any((path / name).is_file() for name in _WEIGHT_FILES):
            raise UserError(f"--model {model}: no weights ({' or '.join(_WEIGHT_FILES)}).")
    elif _looks_local(model):
        raise UserError(f"--model {model}: no such directory.")
    try:
        config = AutoConfig.from_pretrained(model)
    except OSError as error:
        raise UserError(
            f"--model {model}: no such local directory, and the Hub has no such model or cannot be reached "
            f"({str(error).strip().splitlines()[0]})."
        ) from error
    architectures = config.architectures or []
    if not any(name.endswith("ForImageClassification") for name in architectures):
        raise UserError(
            f"--model {model} holds a {', '.join(architectures) or config.model_type} model, not an image classifier."
        )
    where = path / "preprocessor_config.json" if path.exists() else f"{model}/preprocessor_config.json"
    preprocessing = _preprocessing(model, where)
    return _load_weights(model, config), preprocessing


def _check_model_type(model: str, config_file: Path, config: dict) -> None:
    """A config.json transformers cannot route to a model class, named for what it is."""
    if config.get("model_type"):
        return
    if "architecture" in config:  # timm's Hub layout (`vit-accel export --to timm` writes it)
        raise UserError(
            f"--model {model} is a timm export ({config_file} names timm architecture {config['architecture']!r}), "
            "which transformers cannot load: load it with timm (VisionTransformer(**model_args of its config.json), "
            f"then its model.safetensors), or make it a directory of ours again with `vit-accel convert {model} "
            "<new directory>`."
        )
    raise UserError(f"{config_file}: no model_type, so transformers cannot tell which model it describes.")


def _load_weights(model: str, config) -> torch.nn.Module:
    """The classifier, refused unless every weight of the checkpoint fits the model its config describes.

    transformers initialises missing or differently shaped weights at random and only logs a table about it; a model
    that predicts from random weights is refused here instead, naming the directory and the keys."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report's table; its facts are in the error below
    try:
        classifier, info = AutoModelForImageClassification.from_pretrained(
            model, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, RuntimeError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        raise UserError(f"--model {model}: cannot load its weights ({str(error).strip().splitlines()[0]}).") from error
    finally:
        hf_logging.set_verbosity(verbosity)
    mismatched = sorted(info.get("mismatched_keys") or [])
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if mismatched:
        key, saved, built = next((item for item in mismatched if item[0].endswith(".weight")), mismatched[0])
        if key.startswith("classifier."):
            labels = len(config.id2label)
            raise UserError(
                f"--model {model}: config.json's id2label has {labels} label{'s' * (labels != 1)}, but the weights' "
                f"classifier has {tuple(saved)[0]} outputs ({key} {tuple(saved)} in the weights, {tuple(built)} for "
                "the config)."
            )
        raise UserError(
            f"--model {model}: the weights do not fit config.json: {key} is {tuple(saved)} in the weights but "
            f"{tuple(built)} for the config" + (f" ({len(mismatched)} such tensors)." if len(mismatched) > 1 else ".")
        )
    if missing or unexpected:
        parts = [f"{len(found)} {what} (e.g. {', '.join(found[:3])})" for what, found in (
            ("missing", missing), ("unexpected", unexpected)) if found]  # fmt: skip
        raise UserError(
            f"--model {model}: its weights do not match config.json: {'; '.join(parts)}, so the model would predict "
            "from randomly initialised weights."
        )
    return classifier.eval()


def _preprocessing(model: str, where: Path | str) -> dict:
    """`size`, `image_mean`, `image_std` from the saved image processor; what it cannot give names the file."""
    try:
        processor = AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{where}: not a usable image processor ({str(error).strip().splitlines()[0]}).") from error
    size = {key: value for key, value in dict(getattr(processor, "size", None) or {}).items() if value is not None}
    if "height" in size and "width" in size and size["height"] == size["width"]:
        side = size["height"]
    elif "shortest_edge" in size and "height" not in size:
        side = size["shortest_edge"]
    else:
        raise UserError(
            f"{where}: size {size} is not a square size ({{'height': N, 'width': N}} or {{'shortest_edge': N}}), "
            "which predict and evaluate resize to."
        )
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None or len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise UserError(f"{where}: image_mean {mean} and image_std {std} must hold 3 values each, std > 0.")
    return {"size": int(side), "image_mean": list(mean), "image_std": list(std)}


def _open_image(path: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image.copy()  # still with its EXIF orientation, which the pipeline applies (prepare_image)
    except PIL.Image.DecompressionBombError as error:
        # PIL refuses images over twice MAX_IMAGE_PIXELS, which could exhaust memory while decoding.
        raise UserError(f"Cannot read image {path}: {error} Downscale it first.") from error
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise UserError(f"Cannot read image {path}: {error}") from error


def predict(
    model: str, images: list[str], top_k: int = 5, batch_size: int = 32, allow_changed_base: bool = False
) -> list[dict]:
    """Top-k labels with softmax scores for each image path, batched (k is capped at the number of labels)."""
    if top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {top_k}.")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    folders = [image for image in images if Path(image).is_dir()]
    if folders:
        raise UserError(f"{folders[0]}: a directory, not an image file; give the image files (e.g. {folders[0]}/*).")
    if remote := [image for image in images if is_url(str(image))]:
        raise UserError(f"{remote[0]}: a URL; images are not fetched from the network: download it and give the file.")
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise UserError(
            f"No such image file: {missing[0]}" + (f" (and {len(missing) - 1} more)." if missing[1:] else ".")
        )
    classifier, preprocessing = load_classifier(model, allow_changed_base)
    pipeline = build_pipeline(
        "none", preprocessing["size"], preprocessing["image_mean"], preprocessing["image_std"], False
    )
    id2label = classifier.config.id2label
    k = min(top_k, classifier.config.num_labels)
    predictions = []
    generator = torch.Generator()
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        batch = torch.stack([pipeline(_open_image(path), generator) for path in paths])
        with torch.no_grad():
            probabilities = classifier(pixel_values=pipeline.on_device(batch)).logits.float().softmax(-1)
        scores, indices = probabilities.topk(k, dim=-1)
        for path, row_scores, row_indices in zip(paths, scores.tolist(), indices.tolist()):
            top = [{"label": id2label[i], "score": s} for i, s in zip(row_indices, row_scores)]
            predictions.append({"image": path, "predictions": top})
    return predictions


@dataclass
class EvaluationResult:
    top1: float
    top5: float
    loss: float
    num_examples: int
    per_class_accuracy: dict[str, float]
    confusion: np.ndarray  # rows: true class, columns: predicted class
    labels: list[str]
    unreadable_images: int = 0

    def summary(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "num_examples": self.num_examples,
            "unreadable_images": self.unreadable_images,
            "per_class_accuracy": self.per_class_accuracy,
        }


def evaluate(
    model: str,
    data_args: DataArguments,
    batch_size: int = 64,
    seed: int = 0,
    accelerator=None,
    allow_changed_base: bool = False,
) -> EvaluationResult:
    """Top-1/top-5, loss, per-class accuracy and the confusion matrix over the dataset's evaluation split.

    With an `accelerate.Accelerator` the split is sharded over its processes and gathered (each example once).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    accelerator = accelerator or Accelerator()
    classifier, preprocessing = load_classifier(model, allow_changed_base)
    with accelerator.main_process_first():
        data = load_image_dataset(data_args, seed=seed, for_training=False)
    label2id = {str(name): int(i) for name, i in classifier.config.label2id.items()}
    missing = [name for name in data.labels if name not in label2id]
    if missing:
        raise UserError(
            f"The dataset's labels {missing[:10]} are not among the model's labels ({len(label2id)} classes): "
            "this model was not trained for this dataset."
        )
    pipeline = build_pipeline(
        "none", preprocessing["size"], preprocessing["image_mean"], preprocessing["image_std"], False
    )
    dataset = ImageClassificationDataset(data.validation, pipeline, seed=seed, bad_images=data_args.bad_images)
    loader = make_dataloader(
        dataset, batch_size, shuffle=False, seed=seed, num_workers=data_args.dataloader_num_workers
    )
    classifier, loader = accelerator.prepare(classifier, loader)
    num_classes = accelerator.unwrap_model(classifier).config.num_labels
    # The dataset numbers its classes its own way; map them to the model's ids.
    to_model = torch.tensor([label2id[name] for name in data.labels])
    result = evaluate_classifier(accelerator, classifier, loader, pipeline.on_device, num_classes, to_model)
    id2label = {int(i): str(name) for i, name in accelerator.unwrap_model(classifier).config.id2label.items()}
    confusion = result.confusion
    per_class = {
        id2label[c]: float(confusion[c, c] / confusion[c].sum()) for c in range(num_classes) if confusion[c].sum()
    }
    return EvaluationResult(
        top1=result.top1,
        top5=result.top5,
        loss=result.loss,
        num_examples=result.num_examples,
        per_class_accuracy=per_class,
        confusion=confusion,
        labels=[id2label[c] for c in range(num_classes)],
        unreadable_images=len(set(gather_object(dataset.bad_rows))),
    )


def evaluation_split(data_args: DataArguments) -> str | None:
    """The split `evaluate` reads: the dataset's validation or test split, picked as `load_image_dataset` picks it,
    or None when it has none, so that a hold-out of its training split is drawn (`train_val_split`, seed)."""
    if data_args.validation_dir is not None:
        return "validation"
    from datasets import DatasetDict

    from .data.sources import EVAL_SPLITS, _load

    raw = _load(data_args)  # what load_image_dataset reads next (from 🤗 datasets' cache)
    if not isinstance(raw, DatasetDict):
        return None
    names = list(raw)
    train = "train" if "train" in raw else names[0] if len(names) == 1 else None
    if train is None:
        raise UserError(f"No 'train' split; the dataset has splits: {', '.join(names)}.")
    return next((name for name in EVAL_SPLITS if name in raw and name != train), None)


def recorded_split_settings(model: str) -> tuple[dict, str | None]:
    """`{"seed": ..., "train_val_split": ...}` of the training run that wrote `model` (its training_args.json), and
    that file's path; ({}, None) when the model has no such record (a model trained elsewhere)."""
    path = Path(model).expanduser()
    if path.is_dir():
        record_file = path / "training_args.json"
        if not record_file.is_file():
            return {}, None
    elif _looks_local(model):
        return {}, None
    else:
        from huggingface_hub import hf_hub_download

        try:
            record_file = Path(hf_hub_download(model, "training_args.json"))
        except Exception:  # not on the Hub, no such file, or offline: no record either way
            return {}, None
    try:
        record = json.loads(record_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{record_file} is not valid JSON ({error}).") from error
    if not isinstance(record, dict):
        raise UserError(f"{record_file}: expected a JSON object, found {type(record).__name__}.")
    seed = (record.get("TrainingArguments") or {}).get("seed")
    fraction = (record.get("DataArguments") or {}).get("train_val_split")
    settings = {}
    if isinstance(seed, int) and not isinstance(seed, bool):
        settings["seed"] = seed
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
        settings["train_val_split"] = float(fraction)
    return settings, str(record_file)


def prepare_output_dir(output_dir: str | Path) -> Path:
    """`output_dir` created and checked writable now, so that an evaluation never ends in a failed write."""
    if not str(output_dir).strip():
        raise UserError("--output_dir is empty; name the directory for eval_results.json.")
    root = Path(output_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a directory.")
    make_writable_dir(root)
    return root


def plot_confusion(result: EvaluationResult, path: str | Path) -> Path:
    """The confusion matrix (row-normalised) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = result.confusion.astype(float)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(result.labels)
    fig, ax = plt.subplots(figsize=(max(4, n * 0.35 + 2), max(4, n * 0.35 + 1.5)))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:  # beyond that, tick labels are unreadable anyway
        ax.set_xticks(range(n), result.labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), result.labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (top-1 {100 * result.top1:.2f}%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_evaluation(result: EvaluationResult, output_dir: str | Path) -> dict:
    """`eval_results.json` and `confusion_matrix.png` in `output_dir`."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "eval_results.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    plot_confusion(result, root / "confusion_matrix.png")
    return result.summary()

"""Using a trained model: `vit-accel predict` (top-k labels of images) and `vit-accel evaluate` (a whole dataset).

Both load any image-classification directory or Hub id that transformers can load (ours, transformers' ViT, ...)
together with its saved image processor, so predictions see exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
import numpy as np
import PIL.Image
import torch
from datasets import DatasetDict
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.utils import logging as hf_logging

from .adapters import is_adapter_dir, load_adapter_classifier
from .data.arguments import DataArguments
from .data.folders import is_url
from .data.loading import ImageClassificationDataset, make_dataloader
from .data.sources import EVAL_SPLITS, _load, load_image_dataset
from .data.transforms import Pipeline, build_pipeline, to_rgb
from .errors import UserError
from .eval_loop import evaluate_classifier
from .paths import looks_local
from .training.preflight import make_writable_dir
from .weights.kinds import other_kind
from .weights.transformers_vit import WEIGHT_FILES


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
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise UserError(f"--model {model}: no weights ({' or '.join(WEIGHT_FILES)}).")
    elif looks_local(model):
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
            f"which transformers cannot load: load it with timm (timm.create_model('local-dir:{model}', "
            f"pretrained=True)), or make it a directory of ours again with `vit-accel convert {model} "
            "<new directory>`."
        )
    raise UserError(f"{config_file}: no model_type, so transformers cannot tell which model it describes.")


def _load_weights(model: str, config) -> torch.nn.Module:
    """The classifier, refused unless every weight of the checkpoint fits the model its config describes.

    transformers initialises missing or differently shaped weights at random and only logs a table about it; a model
    that predicts from random weights is refused here instead, naming the directory and the keys."""

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


def check_image_files(images: list[str]) -> None:
    """Every path an image file on this machine, checked before any model is loaded (one line for the first fault)."""
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


def image_pipeline(preprocessing: dict) -> Pipeline:
    """The evaluation pipeline of a model's saved preprocessing (`size`, `image_mean`, `image_std`)."""
    return build_pipeline("none", preprocessing["size"], preprocessing["image_mean"], preprocessing["image_std"], False)


def prepare_images(paths: list[str], pipeline: Pipeline) -> torch.Tensor:
    """The model input `(batch, 3, size, size)` of these image files: read, turned by their EXIF orientation, made
    RGB, resized and normalised by `pipeline`, as every command that reads image files prepares them."""
    generator = torch.Generator()  # the evaluation pipeline draws nothing from it
    return pipeline.on_device(torch.stack([pipeline(_open_image(path), generator) for path in paths]))


def predict(
    model: str, images: list[str], top_k: int = 5, batch_size: int = 32, allow_changed_base: bool = False
) -> list[dict]:
    """Top-k labels with softmax scores for each image path, batched (k is capped at the number of labels)."""
    if top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {top_k}.")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    check_image_files(images)
    classifier, preprocessing = load_classifier(model, allow_changed_base)
    pipeline = image_pipeline(preprocessing)
    id2label = classifier.config.id2label
    k = min(top_k, classifier.config.num_labels)
    predictions = []
    for start in range(0, len(images), batch_size):
        paths = images[start : start + batch_size]
        with torch.no_grad():
            probabilities = classifier(pixel_values=prepare_images(paths, pipeline)).logits.float().softmax(-1)
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
    images_per_second: float = 0.0  # over the evaluation loop (reading, preparing and classifying), not loading
    k: int = 5
    top_k: float | None = None
    # The misclassified examples of highest loss: row, true and predicted label, loss, and the image itself.
    worst: list[dict] = field(default_factory=list)

    def per_class_scores(self) -> dict[str, dict[str, float]]:
        """Precision, recall and F1 of each class, from the confusion matrix (0 where undefined, as scikit-learn's
        `zero_division=0`), and their macro averages over the classes the evaluation set holds."""
        counts = self.confusion.astype(float)
        hits, predicted, actual = np.diag(counts), counts.sum(axis=0), counts.sum(axis=1)
        precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
        recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
        scores = {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for label, p, r, f, n in zip(self.labels, precision, recall, f1, actual)
        }
        present = actual > 0
        scores["macro"] = {
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
            "support": int(actual.sum()),
        }
        return scores

    def largest_confusions(self, n: int = 10) -> list[dict]:
        """The `n` (true, predicted) pairs of other classes with the most examples, largest first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(off, axis=None)[::-1][:n]
        pairs = [np.unravel_index(i, off.shape) for i in order]
        return [
            {
                "true": self.labels[t],
                "predicted": self.labels[p],
                "count": int(off[t, p]),
                "of": int(self.confusion[t].sum()),
            }
            for t, p in pairs
            if off[t, p] > 0
        ]

    def summary(self) -> dict:
        scores = self.per_class_scores()
        return {
            "top1": self.top1,
            "top5": self.top5,
            f"top{self.k}": self.top_k if self.top_k is not None else None,
            "loss": self.loss,
            "num_examples": self.num_examples,
            "images_per_second": self.images_per_second,
            "unreadable_images": self.unreadable_images,
            "macro_precision": scores["macro"]["precision"],
            "macro_recall": scores["macro"]["recall"],
            "macro_f1": scores["macro"]["f1"],
            "per_class_accuracy": self.per_class_accuracy,
            "per_class": {label: value for label, value in scores.items() if label != "macro"},
            "largest_confusions": self.largest_confusions(),
            "worst_misclassified": [{k: v for k, v in w.items() if k != "image"} for w in self.worst],
        }


def evaluate(
    model: str,
    data_args: DataArguments,
    batch_size: int = 64,
    seed: int = 0,
    accelerator=None,
    allow_changed_base: bool = False,
    top_k: int = 5,
    num_worst: int = 16,
) -> EvaluationResult:
    """Top-1/top-5, loss, per-class accuracy and the confusion matrix over the dataset's evaluation split.

    With an `accelerate.Accelerator` the split is sharded over its processes and gathered (each example once).
    """
    # Deferred: accelerate (slow to import) serves `evaluate` only, not `predict`.
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    # 🤗 datasets only here: `predict` does not wait for it.

    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    if top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {top_k}.")
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
    start = time.perf_counter()
    k = min(top_k, len(label2id))
    result = evaluate_classifier(accelerator, classifier, loader, pipeline.on_device, num_classes, to_model, k=k)
    seconds = time.perf_counter() - start
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
        images_per_second=result.num_examples / seconds if seconds > 0 else 0.0,
        k=k,
        top_k=result.top_k,
        worst=_worst_misclassified(result, data.validation, id2label, num_worst) if accelerator.is_main_process else [],
    )


def _worst_misclassified(result, rows, id2label: dict[int, str], n: int) -> list[dict]:
    """The `n` misclassified examples of highest loss, with their images (the loader keeps the split's order, and
    gathering across processes restores it)."""
    wrong = np.flatnonzero(result.ranked[:, 0] != result.labels)
    worst = wrong[np.argsort(result.losses[wrong])[::-1][:n]]
    return [
        {
            "row": int(i),
            "true": id2label[int(result.labels[i])],
            "predicted": id2label[int(result.ranked[i, 0])],
            "loss": float(result.losses[i]),
            "image": _image_of(rows, int(i)),
        }
        for i in worst
    ]


def _image_of(rows, index: int) -> PIL.Image.Image | None:
    try:
        return to_rgb(rows[index]["image"])
    except (OSError, ValueError, PIL.UnidentifiedImageError):  # an unreadable row (--bad_images skip)
        return None


def evaluation_split(data_args: DataArguments) -> str | None:
    """The split `evaluate` reads: the dataset's validation or test split, picked as `load_image_dataset` picks it,
    or None when it has none, so that a hold-out of its training split is drawn (`train_val_split`, seed)."""
    if data_args.validation_dir is not None:
        return "validation"

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
    elif looks_local(model):
        return {}, None
    else:
        try:
            record_file = Path(huggingface_hub.hf_hub_download(model, "training_args.json"))
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
    """The confusion matrix as a PNG: colour is the row-normalised fraction (colour bar beside it), each cell
    carries its count up to 20 classes; beyond 40 classes tick labels are dropped and the largest confusions are
    listed under the matrix instead."""
    # Deferred: matplotlib costs about half a second to import, paid only when the matrix is drawn.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend (no display), which pyplot fixes on import

    counts = result.confusion
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(result.labels)
    side = min(max(5.0, n * 0.45 + 2.5), 16.0)
    confusions = result.largest_confusions(10)
    fig, ax = plt.subplots(figsize=(side + 1.5, side + (0.25 * len(confusions) + 0.6 if confusions else 0)))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 20:
        for t in range(n):
            for p in range(n):
                if counts[t, p]:
                    colour = "white" if normalised[t, p] > 0.5 else "black"
                    ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=8, color=colour)
    if n <= 40:
        ax.set_xticks(range(n), result.labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), result.labels, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    ax.set_title(f"Confusion matrix: {result.num_examples} images, top-1 {100 * result.top1:.2f}%")
    if confusions:
        lines = [f"{c['true']} -> {c['predicted']}: {c['count']} of {c['of']}" for c in confusions]
        fig.text(0.02, 0.01, "Largest confusions (true -> predicted):\n" + "\n".join(lines), fontsize=9, va="bottom")
        fig.tight_layout(rect=(0, (0.25 * len(lines) + 0.6) / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_worst(result: EvaluationResult, path: str | Path, columns: int = 4) -> Path | None:
    """A grid of the misclassified images of highest loss, each titled with its true and predicted label."""
    if not result.worst:
        return None
    # Deferred: matplotlib costs about half a second to import, paid only when a figure is drawn.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the backend, which pyplot fixes on import

    rows = -(-len(result.worst) // columns)
    height = 3.7 * rows + 0.6
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, result.worst):
        if item["image"] is not None:
            ax.imshow(item["image"])
        ax.set_title(
            f"true: {item['true']}\npredicted: {item['predicted']}\nrow {item['row']}, loss {item['loss']:.2f}",
            fontsize=9,
        )
    fig.suptitle(f"The {len(result.worst)} misclassified images of highest loss")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report_html(result: EvaluationResult, root: Path, files: dict[str, str]) -> Path:
    """`report.html`: the numbers, the confusion matrix, per-class scores and the worst misclassified images (each
    embedded, with its true and predicted label), readable without anything but a browser."""

    summary = result.summary()
    scores = result.per_class_scores()

    def thumbnail(image: PIL.Image.Image | None) -> str:
        if image is None:
            return "(unreadable)"
        copy = image.copy()
        copy.thumbnail((160, 160))
        buffer = io.BytesIO()
        copy.save(buffer, format="PNG")
        return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'

    e = html.escape
    headline = (
        f"top-1 {100 * result.top1:.2f}%, top-5 {100 * result.top5:.2f}%, top-{result.k} "
        f"{100 * (result.top_k or 0):.2f}%, loss {result.loss:.4f}, macro F1 {scores['macro']['f1']:.4f}; "
        f"{result.num_examples} images at {result.images_per_second:.1f} images/s"
    )
    class_rows = "".join(
        f"<tr><td>{e(name)}</td><td>{v['precision']:.4f}</td><td>{v['recall']:.4f}</td><td>{v['f1']:.4f}</td>"
        f"<td>{v['support']}</td></tr>"
        for name, v in scores.items()
    )
    confusion_rows = "".join(
        f"<tr><td>{e(c['true'])}</td><td>{e(c['predicted'])}</td><td>{c['count']} of {c['of']}</td></tr>"
        for c in summary["largest_confusions"]
    )
    worst_rows = "".join(
        f"<tr><td>{thumbnail(w['image'])}</td><td>{e(w['true'])}</td><td>{e(w['predicted'])}</td>"
        f"<td>{w['row']}</td><td>{w['loss']:.3f}</td></tr>"
        for w in result.worst
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Evaluation report</h1>
<p id="headline">{e(headline)}</p>
<h2>Confusion matrix</h2>
<img id="confusion" src="{e(files["confusion"])}" alt="confusion matrix">
<h2>Largest confusions</h2>
<table id="confusions"><tr><th>true</th><th>predicted</th><th>images</th></tr>{confusion_rows}</table>
<h2>Precision, recall and F1 per class</h2>
<table id="per-class"><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>
{class_rows}</table>
<h2>Worst misclassified images</h2>
{f'<img id="worst-grid" src="{e(files["worst"])}" alt="worst misclassified">' if files.get("worst") else ""}
<table id="worst"><tr><th>image</th><th>true</th><th>predicted</th><th>row</th><th>loss</th></tr>{worst_rows}</table>
</body></html>
"""
    path = root / "report.html"
    path.write_text(page)
    return path


def write_evaluation(result: EvaluationResult, output_dir: str | Path) -> dict:
    """`eval_results.json`, `confusion_matrix.png`, `worst_misclassified.png` and `report.html` in `output_dir`."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    (root / "eval_results.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = {"confusion": plot_confusion(result, root / "confusion_matrix.png").name}
    worst = plot_worst(result, root / "worst_misclassified.png")
    if worst is not None:
        files["worst"] = worst.name
    write_report_html(result, root, files)
    return summary

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

from .data import DataArguments, ImageClassificationDataset, build_pipeline, load_image_dataset, make_dataloader
from .data.transforms import to_rgb
from .errors import UserError
from .evaluation import evaluate_classifier

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _looks_local(name: str) -> bool:
    # A Hub id is `name` or `owner/name`; anything absolute, relative-dotted, home-based or deeper is a path.
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def load_classifier(model: str) -> tuple[torch.nn.Module, dict]:
    """An image classifier in eval mode and its preprocessing (`size`, `image_mean`, `image_std`).

    Raises:
        UserError: no such directory or Hub model, a directory without config, weights or image processor, a corrupt
            config.json, or a model that is not an image classifier.
    """
    import vit_accel  # noqa: F401  (registers our model type, so no remote code is needed for our directories)

    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model {model}: a file, not a saved model directory.")
        for name in ("config.json", "preprocessor_config.json"):
            if not (path / name).is_file():
                raise UserError(f"--model {model}: {name} is missing, so this is not a saved image classifier.")
            try:
                json.loads((path / name).read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise UserError(f"{path / name} is not valid JSON ({error}).") from error
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
    classifier = AutoModelForImageClassification.from_pretrained(model).eval()
    processor = AutoImageProcessor.from_pretrained(model)
    size = processor.size.get("height") or processor.size.get("shortest_edge")
    return classifier, {"size": int(size), "image_mean": processor.image_mean, "image_std": processor.image_std}


def _open_image(path: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            return to_rgb(image.copy())
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise UserError(f"Cannot read image {path}: {error}") from error


def predict(model: str, images: list[str], top_k: int = 5, batch_size: int = 32) -> list[dict]:
    """Top-k labels with softmax scores for each image path, batched (k is capped at the number of labels)."""
    if top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {top_k}.")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    missing = [image for image in images if not Path(image).is_file()]
    if missing:
        raise UserError(
            f"No such image file: {missing[0]}" + (f" (and {len(missing) - 1} more)." if missing[1:] else ".")
        )
    classifier, preprocessing = load_classifier(model)
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
    model: str, data_args: DataArguments, batch_size: int = 64, seed: int = 0, accelerator=None
) -> EvaluationResult:
    """Top-1/top-5, loss, per-class accuracy and the confusion matrix over the dataset's evaluation split.

    With an `accelerate.Accelerator` the split is sharded over its processes and gathered (each example once).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    accelerator = accelerator or Accelerator()
    classifier, preprocessing = load_classifier(model)
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

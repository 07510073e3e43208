"""Using a trained model: `vit-accel predict` (top-k labels of images) and `vit-accel evaluate` (a whole dataset).

Both load any image-classification directory or Hub id that transformers can load (ours, transformers' ViT, ...)
together with its saved image processor, so predictions see exactly the preprocessing the model was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from .data import DataArguments, ImageClassificationDataset, build_pipeline, load_image_dataset, make_dataloader
from .data.transforms import to_rgb

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def load_classifier(model: str) -> tuple[torch.nn.Module, dict]:
    """An image classifier in eval mode and its preprocessing (`size`, `image_mean`, `image_std`).

    Raises:
        FileNotFoundError: a local directory without config.json, weights or preprocessor_config.json.
        ValueError: the model is not an image classifier.
    """
    import vit_accel  # noqa: F401  (registers our model type, so no remote code is needed for our directories)

    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path / 'config.json'} is missing: {path} is not a saved model directory.")
        if not any((path / name).is_file() for name in _WEIGHT_FILES):
            raise FileNotFoundError(f"{path} has no weights ({' or '.join(_WEIGHT_FILES)}).")
        if not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"{path / 'preprocessor_config.json'} is missing: the preprocessing is unknown.")
    config = AutoConfig.from_pretrained(model)
    architectures = config.architectures or []
    if not any(name.endswith("ForImageClassification") for name in architectures):
        raise ValueError(
            f"{model} holds a {', '.join(architectures) or config.model_type} model, not an image classifier."
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
        raise ValueError(f"Cannot read image {path}: {error}") from error


def predict(model: str, images: list[str], top_k: int = 5, batch_size: int = 32) -> list[dict]:
    """Top-k labels with softmax scores for each image path, batched."""
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

    def summary(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "num_examples": self.num_examples,
            "per_class_accuracy": self.per_class_accuracy,
        }


def evaluate(model: str, data_args: DataArguments, batch_size: int = 64, seed: int = 0, accelerator=None):
    """Top-1/top-5, loss, per-class accuracy and the confusion matrix over the dataset's evaluation split.

    With an `accelerate.Accelerator` the split is sharded over its processes and gathered (each example once).
    """
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator()
    classifier, preprocessing = load_classifier(model)
    with accelerator.main_process_first():
        data = load_image_dataset(data_args, seed=seed)
    label2id = {str(name): int(i) for name, i in classifier.config.label2id.items()}
    missing = [name for name in data.labels if name not in label2id]
    if missing:
        raise ValueError(
            f"The dataset's labels {missing[:10]} are not among the model's labels ({len(label2id)} classes): "
            "this model was not trained for this dataset."
        )
    # The dataset numbers its classes its own way; map them to the model's ids.
    to_model = torch.tensor([label2id[name] for name in data.labels])
    pipeline = build_pipeline(
        "none", preprocessing["size"], preprocessing["image_mean"], preprocessing["image_std"], False
    )
    dataset = ImageClassificationDataset(data.validation, pipeline, seed=seed, bad_images=data_args.bad_images)
    loader = make_dataloader(
        dataset, batch_size, shuffle=False, seed=seed, num_workers=data_args.dataloader_num_workers
    )
    classifier, loader = accelerator.prepare(classifier, loader)
    to_model = to_model.to(accelerator.device)

    ranked_all, labels_all, losses_all = [], [], []
    for batch in loader:
        labels = to_model[batch["labels"]]
        with torch.no_grad():
            logits = classifier(pixel_values=pipeline.on_device(batch["pixel_values"])).logits.float()
        k = min(5, logits.shape[-1])
        ranked, labels, losses = accelerator.gather_for_metrics(
            (logits.topk(k, -1).indices, labels, F.cross_entropy(logits, labels, reduction="none"))
        )
        ranked_all.append(ranked.cpu())
        labels_all.append(labels.cpu())
        losses_all.append(losses.cpu())
    ranked, labels, losses = torch.cat(ranked_all), torch.cat(labels_all), torch.cat(losses_all)
    hits = ranked == labels[:, None]
    num_classes = classifier.config.num_labels if hasattr(classifier, "config") else len(label2id)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), ranked[:, 0].numpy()), 1)
    id2label = {int(i): str(name) for i, name in accelerator.unwrap_model(classifier).config.id2label.items()}
    per_class = {
        id2label[c]: float(confusion[c, c] / confusion[c].sum()) for c in range(num_classes) if confusion[c].sum()
    }
    return EvaluationResult(
        top1=float(hits[:, 0].float().mean()),
        top5=float(hits.any(dim=1).float().mean()),
        loss=float(losses.mean()),
        num_examples=int(labels.numel()),
        per_class_accuracy=per_class,
        confusion=confusion,
        labels=[id2label[c] for c in range(num_classes)],
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


def _predict_command(args) -> int:
    results = predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            top = ", ".join(f"{p['label']} {p['score']:.4f}" for p in item["predictions"])
            print(f"{item['image']}: {top}")
    return 0


def _evaluate_command(args) -> int:
    from accelerate import Accelerator

    if args.dataset_name is None and args.validation_dir is None:
        raise ValueError("Give the data to evaluate on: --dataset_name or --validation_dir.")
    # An ImageFolder given alone is the evaluation set itself (as train_dir and validation_dir both).
    folder = args.validation_dir
    data_args = DataArguments(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_dir=folder,
        validation_dir=folder,
        image_column_name=args.image_column_name,
        label_column_name=args.label_column_name,
        max_eval_samples=args.max_eval_samples,
        augmentation="none",
        bad_images=args.bad_images,
        dataloader_num_workers=args.dataloader_num_workers,
    )
    accelerator = Accelerator()
    result = evaluate(args.model, data_args, batch_size=args.batch_size, seed=args.seed, accelerator=accelerator)
    if accelerator.is_main_process:
        summary = write_evaluation(result, args.output_dir)
        print(json.dumps({k: v for k, v in summary.items() if k != "per_class_accuracy"}))
    return 0


def add_commands(commands) -> None:
    """The `predict` and `evaluate` subcommands of `vit-accel`."""
    predict_parser = commands.add_parser("predict", help="top-k labels of images")
    predict_parser.add_argument("--model", required=True, help="a saved model directory or Hub id")
    predict_parser.add_argument("images", nargs="+", help="image files")
    predict_parser.add_argument("--top_k", type=int, default=5)
    predict_parser.add_argument("--batch_size", type=int, default=32)
    predict_parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    predict_parser.set_defaults(func=_predict_command)

    evaluate_parser = commands.add_parser(
        "evaluate",
        help="top-1/top-5, loss, per-class accuracy and a confusion matrix over a dataset",
        description="Runs under any accelerate config: accelerate launch --config_file <mode>.yaml -m vit_accel.cli "
        "evaluate ...",
    )
    evaluate_parser.add_argument("--model", required=True, help="a saved model directory or Hub id")
    evaluate_parser.add_argument("--dataset_name", help="Hub id or local dataset path (its validation/test split)")
    evaluate_parser.add_argument("--dataset_config_name")
    evaluate_parser.add_argument("--validation_dir", help="an ImageFolder directory to evaluate on")
    evaluate_parser.add_argument("--image_column_name")
    evaluate_parser.add_argument("--label_column_name")
    evaluate_parser.add_argument("--max_eval_samples", type=int)
    evaluate_parser.add_argument("--bad_images", choices=("error", "skip"), default="error")
    evaluate_parser.add_argument("--dataloader_num_workers", type=int, default=2)
    evaluate_parser.add_argument("--batch_size", type=int, default=64)
    evaluate_parser.add_argument("--seed", type=int, default=42, help="the seed the training run used (its split)")
    evaluate_parser.add_argument("--output_dir", default="outputs/eval", help="where eval_results.json and the PNG go")
    evaluate_parser.set_defaults(func=_evaluate_command)

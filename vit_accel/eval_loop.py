"""Evaluating a classifier over a data loader: the one loop behind train.py's evaluations and `vit-accel evaluate`.

Top-1/top-5 come from the `evaluate` metric script shipped in `vit_accel/metrics/` (loaded by path, so it works
offline); the loss is the mean cross-entropy and the confusion matrix counts top-1 predictions. Under accelerate each
example is counted once across processes (`gather_for_metrics`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

METRIC_SCRIPT = str(Path(__file__).parent / "metrics" / "top_k_accuracy.py")


@functools.cache
def _metric():
    # Deferred: the evaluate library takes about a second to import; `vit-accel predict` needs none.
    import evaluate

    return evaluate.load(METRIC_SCRIPT, keep_in_memory=True)


@dataclass
class Evaluation:
    loss: float
    top1: float
    top5: float
    num_examples: int
    confusion: np.ndarray  # rows: true class, columns: top-1 prediction
    # Per example, in the loader's order: the k best classes (best first), the true class, the loss.
    ranked: np.ndarray | None = None
    labels: np.ndarray | None = None
    losses: np.ndarray | None = None
    top_k: float | None = None  # accuracy within the `k` best, for the `k` asked for

    def metrics(self, prefix: str = "eval_") -> dict[str, float]:
        return {f"{prefix}loss": self.loss, f"{prefix}top1": self.top1, f"{prefix}top5": self.top5}


def evaluate_classifier(
    accelerator,
    model: torch.nn.Module,
    loader,
    on_device: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    label_map: torch.Tensor | None = None,
    k: int = 5,
) -> Evaluation:
    """Loss, top-1/top-5 and the confusion matrix of `model` over `loader` (prepared by `accelerator`).

    `on_device` turns a batch's uint8 pixels into the model's input; `label_map[i]` is the model's class id for the
    dataset's label `i`, when the two number their classes differently; `k` ranks that many classes per example
    (top-5 is reported from the first 5 in any case).
    """
    was_training = model.training
    model.eval()
    label_map = label_map.to(accelerator.device) if label_map is not None else None
    ranked_all, labels_all, losses_all, loss_sum, count = [], [], [], 0.0, 0
    for batch in loader:
        labels = batch["labels"] if label_map is None else label_map[batch["labels"]]
        with torch.no_grad():
            logits = model(pixel_values=on_device(batch["pixel_values"])).logits.float()
        ranked_k = min(max(5, k), logits.shape[-1])
        outputs = (logits.topk(ranked_k, dim=-1).indices, labels, F.cross_entropy(logits, labels, reduction="none"))
        if "valid" in batch:
            # A loader that pads its last batches itself (a stream split across processes) says which rows are real:
            # gathered whole, the padding then dropped, every example counts once.
            # (as uint8: not every collective backend gathers bool tensors)
            *outputs, valid = accelerator.gather((*outputs, batch["valid"].to(torch.uint8)))
            ranked, labels, losses = (tensor[valid.bool()] for tensor in outputs)
        else:
            ranked, labels, losses = accelerator.gather_for_metrics(outputs)
        ranked_all.append(ranked.cpu())
        labels_all.append(labels.cpu())
        losses_all.append(losses.float().cpu())
        loss_sum += float(losses.sum())
        count += losses.numel()
    if was_training:
        model.train()
    ranked, labels = torch.cat(ranked_all), torch.cat(labels_all)
    scores = _metric().compute(predictions=ranked[:, :5].numpy(), references=labels.numpy())
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), ranked[:, 0].numpy()), 1)
    return Evaluation(
        loss=loss_sum / max(count, 1),
        top1=scores["top1"],
        top5=scores["top5"],
        num_examples=int(labels.numel()),
        confusion=confusion,
        ranked=ranked.numpy(),
        labels=labels.numpy(),
        losses=torch.cat(losses_all).numpy(),
        top_k=float((ranked[:, :k] == labels[:, None]).any(dim=1).float().mean()),
    )

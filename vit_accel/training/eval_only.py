"""`train.py --eval_only`: evaluate a model or checkpoint with the run's own data, preprocessing and batching,
writing `eval_results.json` into `--output_dir`, without training."""

from __future__ import annotations

import json
from pathlib import Path

from ..eval_loop import evaluate_classifier

RESULTS_FILE = "eval_results.json"


def evaluate_only(accelerator, model, ema, eval_loader, on_device, data, output_dir: Path, step: int | None) -> dict:
    """The run's evaluation (raw and, with an EMA, EMA weights) of `model` as loaded: `step` is the checkpoint's
    optimizer step, or None for a model given by --model_name_or_path."""
    num_labels = len(data.labels)
    results = evaluate_classifier(accelerator, model, eval_loader, on_device, num_labels).metrics()
    if ema is not None:
        results |= evaluate_classifier(accelerator, ema.module, eval_loader, on_device, num_labels).metrics("ema_eval_")
    results |= {"eval_split": data.eval_split, "eval_num_examples": len(data.validation), "checkpoint_step": step}
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results))
    accelerator.wait_for_everyone()
    return results

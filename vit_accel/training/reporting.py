"""What a run leaves for people: a JSON-lines log and a PNG of its curves."""

from __future__ import annotations

import json
from pathlib import Path

LOG_FILE = "log.jsonl"
CURVES_FILE = "training_curves.png"


class JsonlLog:
    """Append-only log of dicts, one JSON object per line (main process only)."""

    def __init__(self, output_dir: str | Path, enabled: bool):
        self.path = Path(output_dir) / LOG_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Forget entries logged after `step` (all, for a fresh run): the log reads as one uninterrupted run."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_curves(records: list[dict], path: str | Path) -> Path:
    """Training loss and eval loss/top-1 against optimizer steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_top1" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
        ax_acc.plot([r["step"] for r in evals], [100 * r["eval_top1"] for r in evals], "o-", label="top-1")
        ax_acc.plot([r["step"] for r in evals], [100 * r["eval_top5"] for r in evals], "o-", label="top-5")
    ax_loss.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="optimizer step", ylabel="accuracy (%)", title="Evaluation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

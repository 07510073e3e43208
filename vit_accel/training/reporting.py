"""What a run leaves for people: a JSON-lines log, a PNG of its curves, and one readable progress bar."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import UserError

LOG_FILE = "log.jsonl"
CURVES_FILE = "training_curves.png"

logger = logging.getLogger(__name__)


class JsonlLog:
    """Append-only log of dicts, one JSON object per line (main process only).

    Each record is appended with one write of a whole line. A write cut short (a full disk, a kill) can still leave a
    torn last line; readers drop it, saying so, and `truncate_after` (at the start of every run) rewrites the file
    without it.
    """

    def __init__(self, output_dir: str | Path, enabled: bool):
        self.path = Path(output_dir) / LOG_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Forget entries logged after `step` (all, for a fresh run): the log reads as one uninterrupted run."""
        if not self.enabled or not self.path.is_file():
            return
        if step == 0:
            self.path.unlink()
            return
        kept = [record for record in self.records() if record.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        lines = self.path.read_text(errors="replace").split("\n")
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                if number == len(lines):  # the last line, with no newline after it: an append cut short
                    logger.warning(f"{self.path}: dropping its torn last line ({len(line)} characters).")
                    continue
                raise UserError(f"{self.path}, line {number}: not a JSON record ({error}).") from error
            if not isinstance(record, dict):
                raise UserError(f"{self.path}, line {number}: not a JSON object.")
            records.append(record)
        return records


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


def check_finite_loss(record: dict, output_dir: Path) -> None:
    """Stop a run whose training loss became NaN or infinite: every weight is then NaN or soon will be, and training
    on would save that model as if it had trained (its top-1 that of ties broken at random)."""
    import math

    from .checkpointing import list_checkpoints

    loss = record["loss"]
    if math.isfinite(loss):
        return
    checkpoints = [path.name for path in list_checkpoints(output_dir)]
    last = f"the last checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written"
    raise UserError(
        f"Step {record['step']}: the training loss is {loss} (learning rate {record['lr']:.3g}, gradient norm "
        f"{record.get('grad_norm', 'not measured')}): training diverged, so no model is saved ({last}). Lower "
        "--learning_rate, or keep --max_grad_norm above 0."
    )

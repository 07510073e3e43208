"""What a run leaves for people: a JSON-lines log, a PNG of its curves, and one readable progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from ..adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD, CLASSIFIER_CONFIG, MERGED_DIR
from ..errors import UserError
from .checkpointing import list_checkpoints, remove_stale_checkpoints

LOG_FILE = "log.jsonl"
CURVES_FILE = "training_curves.png"
# pretrain.py's figure of held-out images: original, masked, reconstructed.
RECONSTRUCTION_FILE = "reconstruction.png"

RESULTS_FILE = "all_results.json"
# What the final phase of a run writes (a model directory or an adapter directory, and the run's record): the files
# of the run a new one replaces, whatever kind of model it saved, so that the directory never holds two models.
FINAL_OUTPUTS = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "configuration_vit_accel.py",
    "modeling_vit_accel.py",
    "preprocessor_config.json",
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CLASSIFIER_CONFIG,
    BASE_RECORD,
    MERGED_DIR,
    "README.md",
    "training_args.json",
    CURVES_FILE,
    RECONSTRUCTION_FILE,
    RESULTS_FILE,
)

logger = logging.getLogger(__name__)
run_logger = get_logger(__name__, log_level="INFO")


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
    """Training loss, eval loss/top-1/top-5 and the learning rate against optimizer steps, as a PNG."""
    import matplotlib.pyplot as plt  # deferred, as in curves_figure (which chose the backend first)

    fig = curves_figure(records)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def curves_figure(records: list[dict]):
    """The figure `plot_curves` saves: loss, evaluation accuracy and learning rate, one panel each."""
    # Deferred: matplotlib costs about half a second to import, paid only by the run that draws its curves.
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt  # after choosing the backend, which pyplot fixes on import

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]  # a pre-training run evaluates its loss alone
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    if evals and "eval_top1" in evals[0]:
        ax_acc.plot([r["step"] for r in evals], [100 * r["eval_top1"] for r in evals], "o-", label="top-1")
        ax_acc.plot([r["step"] for r in evals], [100 * r["eval_top5"] for r in evals], "o-", label="top-5")
    with_lr = [r for r in train if "lr" in r]
    ax_lr.plot([r["step"] for r in with_lr], [r["lr"] for r in with_lr], label="learning rate")
    ax_loss.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="optimizer step", ylabel="accuracy (%)", title="Evaluation accuracy")
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate (base group)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a pre-training run has no accuracy to plot
            ax.legend()
    fig.tight_layout()
    return fig


def remove_final_outputs(output_dir: Path) -> list[str]:
    """Delete what a finished run saved at its end (`FINAL_OUTPUTS`, sharded weights included); the names removed."""
    removed = []
    for path in [*(output_dir / name for name in FINAL_OUTPUTS), *output_dir.glob("model-*-of-*.safetensors")]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path.name)
    return removed


class Reporter:
    """Where a run's numbers go: log.jsonl, the trackers, and one progress bar with messages printed above it.

    Step records (loss, lr, ...) go to the log file, the trackers and the bar; on a terminal they do not also print
    as lines, which would cut through the bar. Without a terminal (a log file) there is no bar, and they print.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, total_steps: int, initial_step: int):
        self.accelerator = accelerator
        self.output_dir, self.initial_step, self.claimed = output_dir, initial_step, False
        self.log = JsonlLog(output_dir, enabled=accelerator.is_main_process)
        show_bar = accelerator.is_local_main_process and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, initial=initial_step, disable=not show_bar, unit="step", dynamic_ncols=True)

    def claim(self) -> None:
        """Before the run's first write: make the directory hold this run alone, as it stands (no half-written
        checkpoints, no checkpoints or log lines from past the step it starts at: an overwritten run, or the abandoned
        future of an older checkpoint resumed; no model or results saved at the end of an earlier run, which the final
        save of this one replaces, whatever kind of model either saved). Done this late so that a run failing before
        its first step deletes nothing."""
        if self.claimed:
            return
        self.claimed = True
        if self.accelerator.is_main_process:
            removed = remove_stale_checkpoints(self.output_dir, self.initial_step)
            if removed:
                self.info(f"Removed {', '.join(removed)}: they come after the step this run started from.")
            if replaced := remove_final_outputs(self.output_dir):
                self.info(f"Removed {', '.join(replaced)}: the final save of the run this one replaces.")
            self.log.truncate_after(self.initial_step)

    def training(self, record: dict) -> None:
        self.claim()
        self.log.write(record)
        self.accelerator.log(record, step=record["step"])
        check_finite_loss(record, self.output_dir)
        if self.bar.disable:
            self.info(" ".join(f"{k}={v:.4g}" for k, v in record.items()))
        else:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    def evaluation(self, record: dict) -> None:
        self.claim()
        self.log.write(record)
        self.accelerator.log(record, step=record["step"])
        self.info(f"step {record['step']}: " + " ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "step"))

    def info(self, message: str) -> None:
        run_logger.info(message, main_process_only=True)


def check_finite_loss(record: dict, output_dir: Path) -> None:
    """Stop a run whose training loss became NaN or infinite: every weight is then NaN or soon will be, and training
    on would save that model as if it had trained (its top-1 that of ties broken at random)."""
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

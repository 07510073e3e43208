"""Linear probing and partial fine-tuning: which parameters of the model train.

`--freeze backbone` trains the classifier alone (linear probing); `--freeze_layers N` freezes the embeddings and the
first N blocks, so that the later blocks, the final norm and the head train. Frozen parameters get no gradients, no
optimizer state and no place in checkpoints.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError

FREEZE_CHOICES = ("backbone",)


def check_freezing(freeze: str | None, freeze_layers: int | None, num_layers: int, peft: str | None = None) -> None:
    if freeze is not None and freeze not in FREEZE_CHOICES:
        raise UserError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, got {freeze!r}.")
    if freeze is not None and freeze_layers is not None:
        raise UserError("--freeze backbone already freezes every block; drop --freeze_layers.")
    if freeze_layers is not None and not 0 <= freeze_layers <= num_layers:
        raise UserError(
            f"--freeze_layers must be in [0, {num_layers}] (the model has {num_layers} blocks), got {freeze_layers}."
        )
    if peft is not None and (freeze is not None or freeze_layers is not None):
        raise UserError(
            f"--freeze/--freeze_layers cannot be combined with --peft {peft}: LoRA leaves the base frozen anyway."
        )


def apply_freezing(model: nn.Module, freeze: str | None, freeze_layers: int | None) -> None:
    """Set `requires_grad` on a `ViTAccelForImageClassification` as the flags ask (no flag: everything trains)."""
    check_freezing(freeze, freeze_layers, model.config.num_hidden_layers)
    if freeze == "backbone":
        model.vit.requires_grad_(False)
    elif freeze_layers:
        model.vit.embeddings.requires_grad_(False)
        for layer in model.vit.layers[:freeze_layers]:
            layer.requires_grad_(False)

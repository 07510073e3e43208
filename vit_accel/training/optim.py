"""Optimizer and learning-rate schedule."""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import get_scheduler

from .arguments import TrainingArguments

# Parameters that are not weights of a linear map: decaying them hurts (Google, timm and transformers all exempt them).
_NO_DECAY_NAMES = ("position_embeddings", "cls_token")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices/kernels with `weight_decay`; biases, norms, position embeddings and CLS without."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in _NO_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW (fused) or SGD with momentum, as chosen by `--optimizer`, over the trainable parameters; with
    `--layer_decay`, one group per layer and decay class, each at its scaled rate."""
    if args.layer_decay is not None:
        from .layer_decay import layer_decay_parameter_groups

        num_layers = _unwrapped_config(model).num_hidden_layers
        groups = layer_decay_parameter_groups(
            model, args.learning_rate, args.weight_decay, args.layer_decay, num_layers
        )
    else:
        groups = parameter_groups(model, args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate, momentum=args.momentum)
    # The fused kernel (CUDA and CPU) is several times faster than the per-parameter loop; same update.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), fused=fused or None
    )


def _unwrapped_config(model: nn.Module):
    """The ViT configuration of the model, also when peft wraps it."""
    get_base_model = getattr(model, "get_base_model", None)
    return (get_base_model() if get_base_model is not None else model).config


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, total_steps: int):
    """A transformers schedule counted in optimizer steps (the loop steps it once per optimizer step)."""
    if args.num_warmup_steps > total_steps:
        logging.getLogger(__name__).warning(
            f"--num_warmup_steps {args.num_warmup_steps} is longer than the run's {total_steps} optimizer steps: the "
            "learning rate rises over the whole run and reaches --learning_rate only at its last step."
        )
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=min(args.num_warmup_steps, total_steps),
        num_training_steps=total_steps,
    )

"""Linear probing and partial fine-tuning: which parameters of the model train.

`--freeze backbone` trains the classifier alone (linear probing); `--freeze_layers N` freezes the embeddings (with
CLIP's LayerNorm on them) and the first N blocks, so that the later blocks, the final norm and the head train. Frozen
parameters get no gradients, no optimizer state and no place in checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from ..errors import UserError
from ..weights import CheckpointError

FREEZE_CHOICES = ("backbone",)


def check_freezing(
    freeze: str | None, freeze_layers: int | None, num_layers: int | None, peft: str | None = None
) -> None:
    """The flags alone and together; the range of `--freeze_layers` once the model's depth is known."""
    if freeze is not None and freeze not in FREEZE_CHOICES:
        raise UserError(f"--freeze must be one of {', '.join(FREEZE_CHOICES)}, got {freeze!r}.")
    if freeze is not None and freeze_layers is not None:
        raise UserError("--freeze backbone already freezes every block; drop --freeze_layers.")
    if freeze_layers is not None and num_layers is not None and not 0 <= freeze_layers <= num_layers:
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
        # CLIP's LayerNorm on the embeddings feeds the first block: frozen with the embeddings (layer 0 to layer decay).
        if model.vit.pre_layernorm is not None:
            model.vit.pre_layernorm.requires_grad_(False)
        for layer in model.vit.layers[:freeze_layers]:
            layer.requires_grad_(False)


def has_frozen_parameters(model: nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def register_trainable_only_checkpointing(accelerator) -> None:
    """Make `save_state` keep only the trainable weights (plus optimizer and RNG states) and `load_state` put them
    back, checking that nothing but frozen weights is missing.

    The frozen weights are rebuilt at resume from the same `--model_name_or_path` (or the same seed), so a LoRA or
    linear-probe checkpoint is the size of what trains. Under DeepSpeed the engine does the same given
    `state_kwargs` (`exclude_frozen_parameters` when saving, non-strict module loading).
    """

    def trainable_names(model: nn.Module) -> set[str]:
        return {name for name, param in model.named_parameters() if param.requires_grad}

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models[: len(weights)]):
            keep = trainable_names(model)
            weights[i] = {key: value for key, value in weights[i].items() if key in keep}

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            path = Path(input_dir) / f"model{'' if i == 0 else f'_{i}'}.safetensors"
            state = load_file(str(path))
            missing, unexpected = model.load_state_dict(state, strict=False)
            frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
            frozen |= {name for name, _ in model.named_buffers()}
            lacking = sorted(set(missing) - frozen)
            if unexpected or lacking:
                raise CheckpointError(
                    f"{path} does not fit this run's trainable weights (missing {lacking[:4]}, unexpected "
                    f"{sorted(unexpected)[:4]}): it was written with other --peft/--freeze settings."
                )
        models.clear()  # loaded here: accelerate must not load them again (strictly, expecting every weight)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def state_kwargs(accelerator, saving: bool) -> dict:
    """Keyword arguments of `save_state`/`load_state` for a run with frozen weights under DeepSpeed (else none)."""
    if accelerator.state.deepspeed_plugin is None:
        return {}
    return {"exclude_frozen_parameters": True} if saving else {"load_module_strict": False}

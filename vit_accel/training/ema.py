"""An exponential moving average of the weights, through `torch.optim.swa_utils` (`AveragedModel` + EMA update).

After each optimizer step `W_ema <- d * W_ema + (1 - d) * W`, starting from the weights after the first step (as
`AveragedModel` does). With warm-up the decay of update t (1, 2, ...) is `min(d, 1 - (1 + t) ** -2/3)`, timm's
`ModelEmaV3` warm-up with its defaults, so that early averages are not dominated by the random or pretrained start.

The average is saved in every checkpoint as `ema.safetensors` (plain tensors, nothing pickled) through accelerate's
save/load hooks, so `save_state`/`load_state` carry it and a resumed run continues the same average. Frozen weights
(LoRA's base, a frozen backbone) never change, so their average is the weight itself: it is left out of checkpoints
and rebuilt from the model at resume, like the frozen weights themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import UserError

EMA_FILE = "ema.safetensors"
# timm ModelEmaV3's warm-up defaults (gamma 1, power 2/3): decay 0.999 after about 31k updates, 0.9999 after 1M.
WARMUP_POWER = 2 / 3


def check_ema(decay: float | None) -> None:
    """Refuse an EMA decay outside (0, 1). (Modes where a process holds a shard of each weight, which an EMA needs
    whole, are refused with the other such flags by `methods.check_accelerator`.)"""
    if decay is not None and not 0.0 < decay < 1.0:
        raise UserError(f"--ema_decay must be in (0, 1), got {decay}.")


class WeightEMA:
    """The moving average of a model's parameters (all of them, trainable or not) and buffers, on `device`."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False, device=None) -> None:
        check_ema(decay)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.averaged = AveragedModel(model, device=device, use_buffers=True)
        # State-dict keys of what changes during training (and so what a checkpoint must hold).
        self._saved_keys = {"n_averaged"} | {f"module.{n}" for n, p in model.named_parameters() if p.requires_grad}
        self._saved_keys |= {f"module.{n}" for n, _ in model.named_buffers()}
        self.averaged.requires_grad_(False)
        self.averaged.eval()

    @property
    def module(self) -> nn.Module:
        """The averaged model (a copy of the trained one), for evaluation and saving."""
        return self.averaged.module

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)

    def decay_at(self, update: int) -> float:
        """The decay applied by the `update`-th call of `update` (1-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + update) ** -WARMUP_POWER)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` (unwrapped: the same structure as the copy) into the average."""
        # The decay can change with every update (warm-up): hand AveragedModel the EMA function of this update.
        self.averaged.multi_avg_fn = get_ema_multi_avg_fn(self.decay_at(self.num_updates))
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The update count and the average of every trainable parameter and buffer."""
        return {
            key: value.detach().contiguous()
            for key, value in self.averaged.state_dict().items()
            if key in self._saved_keys
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.averaged.load_state_dict(state, strict=False)
        lacking = sorted(set(missing) & self._saved_keys)
        if unexpected or lacking:
            raise UserError(
                f"The EMA state does not fit this model (missing {lacking[:4]}, unexpected {sorted(unexpected)[:4]}): "
                "it was written by a run with other --peft/--freeze settings."
            )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / EMA_FILE
        # Tied or shared tensors would be refused by safetensors; the copies here are separate by construction.
        save_file({k: v.cpu().clone() for k, v in self.state_dict().items()}, str(path))
        return path

    def load(self, directory: str | Path) -> None:
        path = Path(directory) / EMA_FILE
        if not path.is_file():
            raise UserError(
                f"{path} is missing: the checkpoint was written without --ema_decay; resume without it or start anew."
            )
        device = self.averaged.n_averaged.device
        self.load_state_dict(load_file(str(path), device=str(device)))

    def register_checkpointing(self, accelerator: Accelerator) -> None:
        """Make `accelerator.save_state`/`load_state` write and read `ema.safetensors` next to the other states.

        Every process holds the same average (it follows replicas that agree), so the main process writes it and
        every process reads it.
        """

        def save_hook(models, weights, output_dir):
            if accelerator.is_main_process:
                self.save(output_dir)

        def load_hook(models, input_dir):
            self.load(input_dir)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

"""Mixup and CutMix on whole batches, through torchvision's v2 `MixUp`/`CutMix`, with label smoothing folded into the
soft targets they produce.

The loop calls the mixer on the batch after the accelerator-side resize and normalisation. torchvision draws its
random numbers (the Beta sample, the box, the MixUp-or-CutMix choice, whether to mix at all) from the global torch
RNG; the mixer forks that RNG and seeds it from (seed, epoch, batch index, process), so the result is a function of
where the batch sits in the run. A resumed run, which restores those counters, mixes exactly as the uninterrupted one.

Targets become probabilities: one-hot labels (or multi-hot rows, which torchvision mixes as they are) mixed as the
images are, then smoothed `t * (1 - eps) + eps / num_classes` for single-label data. Smoothing is affine, so this
equals mixing smoothed one-hot labels, which is timm's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..errors import UserError


@dataclass(frozen=True)
class MixingConfig:
    """The flags: `mixup_alpha`/`cutmix_alpha` (0 disables each), `mix_prob` (chance a batch is mixed at all),
    `switch_prob` (chance of CutMix rather than Mixup when both are on), `label_smoothing`."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def check_mixing(config: MixingConfig, multi_label: bool = False) -> None:
    """Refuse values out of range and smoothing of multi-label targets, naming the flag."""
    for flag, value in (("--mixup_alpha", config.mixup_alpha), ("--cutmix_alpha", config.cutmix_alpha)):
        if value < 0:
            raise UserError(f"{flag} must be >= 0 (0 disables it), got {value}.")
    for flag, value in (("--mix_prob", config.mix_prob), ("--mix_switch_prob", config.switch_prob)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} must be in [0, 1], got {value}.")
    if config.enabled and multi_label and config.label_smoothing > 0:
        raise UserError(
            "--label_smoothing cannot be combined with --mixup_alpha/--cutmix_alpha on a multi-label dataset: "
            "smoothing spreads one class's probability over the others, which multi-hot targets do not have."
        )


def mixing_seed(seed: int, epoch: int, batch_index: int, process_index: int) -> int:
    """A 63-bit seed mixed from the batch's position in the run by numpy's SeedSequence."""
    words = [seed & 0xFFFFFFFFFFFFFFFF, epoch, batch_index, process_index, 0x6D6978]  # last: a tag, "mix"
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class BatchMixer:
    """`mixer(pixel_values, labels, seed)` -> (mixed pixel values, soft targets `(B, num_classes)` float32)."""

    def __init__(self, config: MixingConfig, num_classes: int, multi_label: bool = False) -> None:
        check_mixing(config, multi_label)
        if not config.enabled:
            raise ValueError("BatchMixer needs --mixup_alpha or --cutmix_alpha above 0.")
        self.config = config
        self.num_classes = int(num_classes)
        self.multi_label = multi_label
        choices = []
        if config.mixup_alpha > 0:
            choices.append((v2.MixUp(alpha=config.mixup_alpha, num_classes=num_classes), 1.0 - config.switch_prob))
        if config.cutmix_alpha > 0:
            choices.append((v2.CutMix(alpha=config.cutmix_alpha, num_classes=num_classes), config.switch_prob))
        if len(choices) == 1:
            mix = choices[0][0]
        else:
            mix = v2.RandomChoice([t for t, _ in choices], p=[p for _, p in choices])
        self.transform = v2.RandomApply([mix], p=config.mix_prob) if config.mix_prob < 1.0 else mix

    def __call__(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            pixels, targets = self.transform(pixel_values, labels)
        if not targets.dtype.is_floating_point:  # not mixed this time (mix_prob < 1): labels as they came
            targets = F.one_hot(targets, self.num_classes)
        targets = targets.float()
        if self.config.label_smoothing > 0:
            eps = self.config.label_smoothing
            targets = targets * (1.0 - eps) + eps / self.num_classes
        return pixels, targets


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against probability targets (F.cross_entropy's class-probability form), in float32."""
    return F.cross_entropy(logits.float(), targets, reduction=reduction)

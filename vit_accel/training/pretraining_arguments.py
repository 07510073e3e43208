"""Arguments of `pretrain.py` (MAE pre-training): train.py's three dataclasses, extended by the decoder, the mask
and the base learning rate, with MAE's defaults where they differ (AdamW betas (0.9, 0.95), weight decay 0.05, the
`mae` augmentation, the reconstruction loss as the metric), and the options that need labels refused by name."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..data import AUGMENTATIONS, DataArguments
from ..errors import UserError
from .arguments import ModelArguments, TrainingArguments

# MAE's base learning rate for pre-training (lr = blr x global batch / 256).
DEFAULT_BASE_LEARNING_RATE = 1.5e-4
# The decoder of MAE's released models: 8 blocks of width 512 with 16 heads (MLP 4x the width).
DECODER_DEFAULTS = {"decoder_hidden_size": 512, "decoder_num_hidden_layers": 8, "decoder_num_attention_heads": 16}
DECODER_FIELDS = (*DECODER_DEFAULTS, "decoder_intermediate_size")
_LABEL_FIELDS = ("num_labels", "id2label", "label2id")


@dataclass
class PretrainingModelArguments(ModelArguments):
    decoder_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Width of a new MAE decoder (default 512; an MAE checkpoint's decoder keeps its own)."},
    )
    decoder_num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Blocks of a new MAE decoder (default 8)."}
    )
    decoder_num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of the MAE decoder (default 16); must divide its width."}
    )
    decoder_intermediate_size: int | None = field(
        default=None, metadata={"help": "MLP width of a new MAE decoder (default 4 x --decoder_hidden_size)."}
    )
    mask_ratio: float = field(
        default=0.75, metadata={"help": "Share of each image's patches hidden from the encoder, in (0, 1)."}
    )
    norm_pix_loss: bool = field(
        default=True,
        metadata={"help": "Reconstruct each patch normalised by its own mean and variance (MAE's setting)."},
    )

    def __post_init__(self) -> None:
        given = self.config_overrides
        items = given.split(",") if isinstance(given, str) else list(given or ())
        for item in items:
            key = str(item).partition("=")[0].strip()
            if key in _LABEL_FIELDS:
                raise UserError(
                    f"--config_overrides {key}: pre-training has no classes (the model reconstructs images, it has no "
                    "head); give the classes when fine-tuning with train.py."
                )
        super().__post_init__()
        ratio = self.mask_ratio
        # `not a < x < b` rather than comparisons that NaN would pass.
        if not 0.0 < ratio < 1.0:
            raise UserError(
                f"--mask_ratio must be in (0, 1), got {ratio}: the share of patches hidden (0 leaves nothing to "
                "reconstruct, 1 nothing to see; MAE: 0.75)."
            )
        check_decoder(self.decoder_fields(new=True))

    def decoder_fields(self, new: bool) -> dict:
        """The decoder's sizes given by the flags; with MAE's defaults filled in for a `new` decoder."""
        fields = {name: getattr(self, name) for name in DECODER_FIELDS if getattr(self, name) is not None}
        if new:
            fields = {**DECODER_DEFAULTS, **fields}
            fields.setdefault("decoder_intermediate_size", 4 * fields["decoder_hidden_size"])
        return fields


def check_decoder(fields: dict) -> None:
    """Refuse decoder sizes the MAE model cannot be built with, naming the flags: the model's own check, on a valid
    encoder, its field names shown as the flags."""
    # Deferred: these import torch, which `pretrain.py --help` answers without.
    from ..configuration_vit_accel import ViTAccelMAEConfig
    from ..modeling_vit_accel import _pretraining_problems

    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"--{name} must be a positive integer, got {value!r}.")
    problems = _pretraining_problems(ViTAccelMAEConfig(**fields))
    if problems:
        pattern = re.compile(r"\b(" + "|".join(DECODER_FIELDS) + r")\b")
        raise UserError(pattern.sub(r"--\1", problems[0]) + ".")


@dataclass
class PretrainingDataArguments(DataArguments):
    augmentation: str = field(
        default="mae",
        metadata={
            "help": "Training augmentation preset: `mae` (default: bicubic random resized crop of 20 to 100 percent of "
            "the area + flip, as MAE pre-trains) or one of train.py's: `cifar`, `inception`, `randaugment`, `none`.",
            "choices": list(AUGMENTATIONS),
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.streaming:
            raise UserError("--streaming: pre-training loads its images whole; drop --streaming.")
        if self.label_column_name is not None:
            raise UserError(
                f"--label_column_name {self.label_column_name!r}: pre-training reads no labels (any label column is "
                "ignored); drop the flag."
            )


# What only a classifier has: each flag is refused away from its default, since pre-training has no labels to use it.
LABELLED_ONLY = {
    "label_smoothing": "label smoothing softens class targets",
    "mixup_alpha": "Mixup mixes class targets",
    "cutmix_alpha": "CutMix mixes class targets",
    "eval_only": "use train.py --eval_only on a fine-tuned classifier",
    "peft": "LoRA adapts a classifier; fine-tune the pre-trained encoder with train.py --peft lora",
    "freeze": "freezing trains a classifier's head",
    "freeze_layers": "freezing trains a classifier's head",
    "layer_decay": "layer decay is MAE's fine-tuning setting (train.py)",
    "ema_decay": "the EMA is evaluated as a classifier",
}


@dataclass
class PretrainingTrainingArguments(TrainingArguments):
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate, as given; default: --base_learning_rate scaled by the global batch."},
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "MAE's base rate: the peak rate is blr x global batch / 256 (global batch = per-device batch x "
            f"processes x accumulation); default {DEFAULT_BASE_LEARNING_RATE} unless --learning_rate is given."
        },
    )
    weight_decay: float = field(
        default=0.05,
        metadata={"help": "Weight decay (MAE: 0.05); never applied to biases, norms, position embeddings, tokens."},
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (MAE: 0.95)."})
    metric_for_best_model: str = field(
        default="eval_loss",
        metadata={"help": "The evaluation result that picks the best checkpoint: eval_loss, the held-out loss."},
    )
    output_dir: str = field(default="outputs/mae", metadata={"help": "Where checkpoints, logs and the model go."})

    def __post_init__(self) -> None:
        defaults = TrainingArguments.__dataclass_fields__
        for name, reason in LABELLED_ONLY.items():
            value = getattr(self, name)
            if value != defaults[name].default:
                shown = "" if isinstance(value, bool) else f" {value}"
                raise UserError(f"--{name}{shown}: pre-training has no labels ({reason}).")
        # Deferred: it imports torch, which `pretrain.py --help` answers without.
        from .best import metric_name

        if metric_name(self.metric_for_best_model) != "eval_loss":
            raise UserError(
                f"--metric_for_best_model {self.metric_for_best_model}: pre-training evaluates the held-out "
                "reconstruction loss only (eval_loss); accuracy needs labels."
            )
        if self.learning_rate is not None and self.base_learning_rate is not None:
            raise UserError(
                "--base_learning_rate and --learning_rate: give one (the peak rate is blr x global batch / 256, or the "
                "rate itself)."
            )
        if self.base_learning_rate is not None and (
            not self.base_learning_rate > 0 or math.isinf(self.base_learning_rate)
        ):
            raise UserError(f"--base_learning_rate must be a positive number, got {self.base_learning_rate}.")
        self.scaled_learning_rate = self.learning_rate is None
        if self.scaled_learning_rate:
            self.base_learning_rate = self.base_learning_rate or DEFAULT_BASE_LEARNING_RATE
            self.learning_rate = self.base_learning_rate  # checked as a rate now; scaled once the processes are known
        super().__post_init__()

    def scale_learning_rate(self, num_processes: int) -> None:
        """The peak rate from --base_learning_rate and the global batch, as MAE: blr x batch / 256."""
        if self.scaled_learning_rate:
            batch = self.per_device_train_batch_size * num_processes * self.gradient_accumulation_steps
            self.learning_rate = self.base_learning_rate * batch / 256


PRETRAINING_ARGUMENT_CLASSES = (PretrainingModelArguments, PretrainingDataArguments, PretrainingTrainingArguments)

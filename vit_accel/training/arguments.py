"""Arguments of `train.py`: three dataclasses parsed by `transformers.HfArgumentParser`.

Names follow transformers' `run_image_classification_no_trainer.py` where it has them, so users can reuse their
commands. A YAML recipe may come first on the command line; flags after it override its values.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AttentionInterface, HfArgumentParser

from ..data import DataArguments
from ..errors import UserError, redact
from . import habits

if TYPE_CHECKING:  # annotations only: the module imports torch
    from .mixing import MixingConfig


def config_override_fields() -> tuple[str, ...]:
    """What --config_overrides may set: the model's own fields (not transformers' bookkeeping such as model_type).
    Read when needed: the configuration module imports torch, which `train.py --help` should not wait for."""
    # Deferred: it imports torch, which `train.py --help` answers without.
    from ..configuration_vit_accel import ViTAccelConfig

    return (*ViTAccelConfig.__annotations__, "problem_type")


LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw", "sgd")
FINAL_MODELS = ("raw", "ema", "best")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="vit-base-p16-224",
        metadata={
            "help": "A named variant (e.g. vit-base-p16-224, pretrained on ImageNet-21k), a directory of ours or of "
            "transformers' ViT, a Hub id, a Google .npz or a timm checkpoint."
        },
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "Random initialisation: build the variant's shape without pretrained weights."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config fields to override, 'key=value,key=value' (e.g. 'image_size=32,patch_size=4'); in a "
            "recipe also a mapping or a list."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train at this resolution; pretrained position embeddings are resampled at load time."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise checkpoint weights whose shapes differ (e.g. a head for other classes)."},
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention backend: sdpa (the default), eager, flex_attention, flash_attention_2, "
            "flash_attention_3, a kernel registered in transformers' AttentionInterface, or a Hub kernel 'org/repo'."
        },
    )

    def __post_init__(self) -> None:
        # A typo in a field name or a value the model cannot take stops the run here, before anything is loaded.
        overrides = self.parsed_overrides()
        _check_override_values(overrides, "--image_size" if self.image_size is not None else None)
        if (conflict := self.image_size_conflict()) is not None:
            logging.getLogger(__name__).warning(conflict)
        # Deferred: it imports torch, which `train.py --help` answers without.
        from ..configuration_vit_accel import VIT_VARIANTS, ViTAccelConfig

        if self.from_scratch and self.model_name_or_path in VIT_VARIANTS:
            # Deferred: the model file imports torch, which `train.py --help` answers without.
            from ..modeling_vit_accel import check_config

            try:
                check_config(ViTAccelConfig.from_variant(self.model_name_or_path, **overrides))
            except ValueError as error:
                given = [f"--config_overrides {self.config_overrides!r}"] if self.config_overrides else []
                given += [f"--image_size {self.image_size}"] if self.image_size is not None else []
                raise UserError(f"{' with '.join(given) or self.model_name_or_path}: {error}") from error
        if self.attn_implementation is not None:
            known = ["eager", *AttentionInterface().valid_keys()]
            # "org/repo[:function]" names a kernel on the Hub, which transformers fetches when the model is built.
            if self.attn_implementation not in known and "/" not in self.attn_implementation:
                raise UserError(
                    f"--attn_implementation must be one of {', '.join(known)} or a Hub kernel 'org/repo', "
                    f"got {self.attn_implementation!r}."
                )

    def parsed_overrides(self) -> dict:
        """`config_overrides` as a dict with int/float/bool/None values where they parse as such, with
        `--image_size` (which wins over an `image_size` among them; see `image_size_conflict`)."""
        overrides = self._given_overrides()
        if self.image_size is not None:
            overrides["image_size"] = self.image_size
        return overrides

    def _given_overrides(self) -> dict:
        overrides: dict = {}
        given = self.config_overrides
        if isinstance(given, dict):  # from Python: the mapping itself
            given = [f"{key}={value}" for key, value in given.items()]
        if given:
            for item in given.split(",") if isinstance(given, str) else map(str, given):
                key, sep, value = item.partition("=")
                key = key.strip()
                if not sep or not key:
                    raise UserError(f"--config_overrides: expected 'key=value', got {item!r}.")
                if key in ("num_labels", "id2label", "label2id"):
                    raise UserError(f"--config_overrides: {key} comes from the dataset's labels; it cannot be set.")
                fields = config_override_fields()
                if key not in fields:
                    close = difflib.get_close_matches(key, fields, n=1)
                    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(fields)}."
                    raise UserError(f"--config_overrides: {key!r} is not a ViTAccelConfig field; {hint}")
                if key in overrides:
                    raise UserError(
                        f"--config_overrides: {key!r} is given twice ({key}={overrides[key]} and {item.strip()}); "
                        "give it once."
                    )
                if value.strip().startswith(("[", "(")):
                    raise UserError(
                        f"--config_overrides {key}={value.strip()}...: a list is not a value here (the items are "
                        "separated by commas); give one number (image_size and patch_size: square)."
                    )
                overrides[key] = _parse_scalar(value.strip())
        return overrides

    def image_size_conflict(self) -> str | None:
        """The warning when --image_size and image_size in --config_overrides disagree: the flag wins, as a flag
        typed after a recipe wins over the recipe's value."""
        given = self._given_overrides().get("image_size")
        if self.image_size is None or given is None or given == self.image_size:
            return None
        return (
            f"--image_size {self.image_size} replaces image_size={given} of --config_overrides: the model is built "
            f"for {self.image_size}."
        )


@dataclass
class TrainingArguments:
    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints, logs and the model go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow starting a new run in a directory that already holds one."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, shuffling and augmentation."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per process for training."})
    per_device_eval_batch_size: int = field(default=128, metadata={"help": "Batch size per process for evaluation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    optimizer: str = field(default="adamw", metadata={"help": f"One of {', '.join(OPTIMIZERS)} (SGD with momentum)."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(
        default=0.0, metadata={"help": "Weight decay; never applied to biases, norms, position embeddings, CLS."}
    )
    momentum: float = field(default=0.9, metadata={"help": "Momentum of SGD."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Global-norm gradient clipping (0 disables)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the cross-entropy."})
    num_train_epochs: int = field(default=3, metadata={"help": "Epochs, unless --max_train_steps is given."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Optimizer steps; overrides the epochs."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": f"One of {', '.join(LR_SCHEDULERS)}."})
    num_warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up, in optimizer steps."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, lr, grad norm and images/s every N steps."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N optimizer steps (default: at the end of each epoch)."}
    )
    checkpointing_steps: str | None = field(
        default=None,
        metadata={"help": "Save the training state every N optimizer steps, or 'epoch' at each epoch's end."},
    )
    save_total_limit: int | None = field(
        default=2,
        metadata={"help": "Keep the last N checkpoints (plus the best by --metric_for_best_model); None keeps all."},
    )
    metric_for_best_model: str = field(
        default="eval_top1",
        metadata={
            "help": "The evaluation result that picks the best checkpoint: eval_top1, eval_top5, eval_loss (or "
            "ema_eval_* with --ema_decay); greater is better unless it ends in 'loss'."
        },
    )
    eval_only: bool = field(
        default=False,
        metadata={
            "help": "Evaluate --model_name_or_path (or the --resume_from_checkpoint checkpoint) with these settings, "
            "writing eval_results.json into --output_dir, without training."
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "End the run after N evaluations in a row without improvement of the metric."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'latest' (in --output_dir) or the path of a checkpoint-N directory, which must lie in "
            "--output_dir (or --output_dir must be empty or new)."
        },
    )
    accept_changed_settings: bool = field(
        default=False,
        metadata={
            "help": "Resume even though settings the checkpoint recorded (seed, batch size, dataset, "
            "augmentation, ...) differ: the run then no longer continues exactly as it would have."
        },
    )
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (inductor)."})
    with_tracking: bool = field(default=False, metadata={"help": "Send logs to trackers through accelerate."})
    report_to: str | None = field(
        default=None,
        metadata={
            "help": "Trackers, comma-separated (in a recipe also a list): tensorboard, wandb, ... or 'all' (the "
            "default of --with_tracking). "
            "Naming one turns tracking on."
        },
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the final model to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository on the Hub, 'user/name'."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    hub_token: str | None = field(
        default=None,
        metadata={
            "help": "Deprecated (kept for transformers' example commands): use HF_TOKEN or `hf auth login`. "
            "Used for the upload only, never printed or written."
        },
    )
    hub_strategy: str = field(
        default="end",
        metadata={"help": "'end': push the final model; 'checkpoint': also push each checkpoint as last-checkpoint/."},
    )

    # Fine-tuning methods (README "Fine-tuning methods").
    peft: str | None = field(
        default=None, metadata={"help": "'lora': train LoRA adapters (peft) and the classifier; the base stays frozen."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator (updates scaled by alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated linear layer names to adapt (in a recipe also a list), or 'all-linear' "
            "(default: q_proj,v_proj)."
        },
    )
    use_dora: bool = field(default=False, metadata={"help": "DoRA: weight-decomposed LoRA (magnitude + direction)."})
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "Also write merged/: the base with the adapter folded in, loadable without peft."},
    )
    freeze: str | None = field(default=None, metadata={"help": "'backbone': train the classifier only (linear probe)."})
    freeze_layers: int | None = field(default=None, metadata={"help": "Freeze the embeddings and the first N blocks."})
    layer_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise lr decay in (0, 1] (BEiT/MAE: 0.65 for ViT-B, 0.75 for ViT-L)."}
    )
    ema_decay: float | None = field(
        default=None, metadata={"help": "Keep an EMA of the weights with this decay (e.g. 0.9998); evaluated too."}
    )
    ema_warmup: bool = field(
        default=False, metadata={"help": "EMA decay warm-up: min(decay, 1 - (1 + t) ** -2/3) at update t."}
    )
    final_model: str = field(
        default="raw",
        metadata={"help": "What is saved at the end with --ema_decay: 'raw', 'ema', or 'best' (higher final top-1)."},
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup's Beta(alpha, alpha) (0 disables; DeiT: 0.8)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix's Beta(alpha, alpha) (0 disables; DeiT: 1.0)."})
    mix_prob: float = field(default=1.0, metadata={"help": "Probability that a batch is mixed at all."})
    mix_switch_prob: float = field(
        default=0.5, metadata={"help": "Probability of CutMix rather than Mixup when both are on."}
    )

    def __post_init__(self):
        if self.hub_token is not None and not self.hub_token.strip():
            raise UserError("--hub_token is empty; set HF_TOKEN or run `hf auth login` instead.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        # Deferred: it imports torch, which `train.py --help` answers without.
        from .best import check_metric

        check_metric(self.metric_for_best_model, ema=self.ema_decay is not None)
        names = ("logging_steps", "eval_steps", "max_train_steps", "save_total_limit", "num_train_epochs")
        for name in (*names, "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name} must be at least 1, got {value}.")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            raise UserError(
                f"--lr_scheduler_type must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler_type!r}."
            )
        # `not x > 0` rather than `x <= 0`: NaN fails every comparison and must be refused too.
        if not self.learning_rate > 0 or math.isinf(self.learning_rate):
            raise UserError(f"--learning_rate must be a positive number, got {self.learning_rate}.")
        for name, low, high in (
            ("label_smoothing", 0.0, 1.0),
            ("adam_beta1", 0.0, 1.0),
            ("adam_beta2", 0.0, 1.0),
            ("momentum", 0.0, math.inf),
            ("weight_decay", 0.0, math.inf),
            ("max_grad_norm", 0.0, math.inf),
        ):
            value = getattr(self, name)
            if not low <= value < high:
                raise UserError(f"--{name} must be in [{low:g}, {high:g}), got {value}.")
        if self.num_warmup_steps < 0:
            raise UserError(f"--num_warmup_steps must be >= 0, got {self.num_warmup_steps}.")
        # Deferred: the data sources import datasets and torch, which `train.py --help` answers without.
        from ..data.sources import check_seed

        check_seed(self.seed)  # numpy, torch and Python's random are all seeded from it
        steps = self.checkpointing_steps
        if steps not in (None, "epoch") and not (str(steps).isdigit() and int(steps) >= 1):
            raise UserError(f"--checkpointing_steps must be a number of steps (at least 1) or 'epoch', got {steps!r}.")
        if self.report_to is not None:
            self.with_tracking = True  # naming trackers asks for tracking, as transformers' report_to does
        if self.hub_strategy not in ("end", "checkpoint"):
            raise UserError(f"--hub_strategy must be 'end' or 'checkpoint', got {self.hub_strategy!r}.")
        if self.push_to_hub and not self.hub_model_id:
            raise UserError("--push_to_hub needs --hub_model_id user/name.")
        if self.hub_model_id is not None:
            try:
                validate_repo_id(self.hub_model_id)
            except HFValidationError as error:
                raise UserError(
                    f"--hub_model_id {self.hub_model_id!r} is not a valid repository id: {error}"
                ) from error
        if not self.output_dir.strip():
            raise UserError("--output_dir is empty; name the directory the run writes to.")
        self.output_dir = os.path.expanduser(self.output_dir)
        if self.resume_from_checkpoint:
            self.resume_from_checkpoint = os.path.expanduser(self.resume_from_checkpoint)
        self._check_methods()

    def _check_methods(self) -> None:
        """The fine-tuning method flags, alone and together (those needing the model or the accelerate config are
        checked once these exist, still before any training)."""
        # Deferred: these import torch, which `train.py --help` answers without.
        from ..adapters import PEFT_METHODS, check_lora
        from .ema import check_ema
        from .freezing import check_freezing
        from .layer_decay import check_layer_decay
        from .mixing import check_mixing

        if self.peft is not None and self.peft not in PEFT_METHODS:
            raise UserError(f"--peft must be one of {', '.join(PEFT_METHODS)}, got {self.peft!r}.")
        check_lora(self.lora_r, self.lora_alpha, self.lora_dropout)
        check_freezing(self.freeze, self.freeze_layers, None, self.peft)
        if self.freeze_layers is not None and self.freeze_layers < 0:
            raise UserError(f"--freeze_layers must be >= 0, got {self.freeze_layers}.")
        check_layer_decay(self.layer_decay)
        check_ema(self.ema_decay)
        if self.final_model not in FINAL_MODELS:
            raise UserError(f"--final_model must be one of {', '.join(FINAL_MODELS)}, got {self.final_model!r}.")
        check_mixing(self.mixing_config())

    def mixing_config(self) -> MixingConfig:
        # Deferred: these import torch, which `train.py --help` answers without.
        from .mixing import MixingConfig

        return MixingConfig(
            mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha,
            mix_prob=self.mix_prob,
            switch_prob=self.mix_switch_prob,
            label_smoothing=self.label_smoothing,
        )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)


def _check_override_values(overrides: dict, image_size_flag: str | None) -> None:
    """Refuse a --config_overrides value the model cannot be built with (the model's own `field_problem`), or that
    train.py cannot train, naming it, whatever the source model."""

    def refuse(key: str, value, expected: str):
        flag = image_size_flag if key == "image_size" and image_size_flag else "--config_overrides"
        shown = f"{key}={value}" if flag == "--config_overrides" else str(value)
        raise UserError(f"{flag} {shown}: {expected}.")

    # Deferred: the model file imports torch, which `train.py --help` answers without.
    from ..modeling_vit_accel import field_problem

    for key, value in overrides.items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (problem := field_problem(key, value)) is not None:
            refuse(key, value, problem)
        if key in ("hidden_act", "pooler_act") and not isinstance(value, str):
            refuse(key, value, "is not an activation transformers knows (transformers.activations.ACT2FN)")
        if key in ("layer_norm_eps", "initializer_range") and not (is_number and value > 0):
            refuse(key, value, "must be a positive number")
        if key == "qkv_bias" and not isinstance(value, bool):
            refuse(key, value, "must be true or false")
        if key == "num_channels" and value != 3:
            # Every image is converted to RGB on the way in (grayscale, palette, CMYK, alpha), so the model sees 3.
            refuse(key, value, "train.py feeds RGB images, so the model takes 3 channels")
        if key == "pooler_output_size":
            # The width of the bare model's pooler: a classifier has a pooler only as representation_size's pre_logits.
            refuse(key, value, "sets the bare model's pooler, which the classifier train.py trains does not have "
                   "(representation_size adds a pre_logits layer before the head)")  # fmt: skip
        if key == "problem_type" and value != "single_label_classification":
            refuse(key, value, "train.py trains single-label classification (one class per image) only")


def _parse_scalar(value: str):
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# Flags whose value is a comma-separated list, which a recipe may also give as a YAML list.
LIST_FLAGS: tuple[str, ...] = ("config_overrides", "lora_target_modules", "report_to")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML itself keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _recipe_argv(recipe: Path, parser: HfArgumentParser, classes: tuple = ARGUMENT_CLASSES) -> list[str]:
    """A recipe's values as command-line arguments, each checked by the same parser as a typed flag."""
    if recipe.is_dir():
        raise UserError(f"Recipe {recipe} is a directory, not a YAML file.")
    if not recipe.is_file():
        raise UserError(f"Recipe file not found: {recipe}")
    try:
        values = yaml.load(recipe.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as error:
        raise UserError(f"Recipe {recipe} is not UTF-8 text (byte {error.start}: {error.reason}).") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"Recipe {recipe} is not valid YAML{where}: {problem}.") from error
    if not isinstance(values, dict):
        raise UserError(f"Recipe {recipe} must be a mapping of argument names to values.")
    known = [f.name for cls in classes for f in dataclasses.fields(cls)]
    argv: list[str] = []
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"Recipe {recipe} has an unknown key {key!r}{hint}.")
        if value is None:
            continue
        if key == "config_overrides" and isinstance(value, dict):  # the natural YAML form of 'k=v,k=v'
            value = ",".join(f"{name}={item}" for name, item in value.items())
        if isinstance(value, list) and key in LIST_FLAGS:  # YAML's list, for a flag that takes 'a,b,c'
            value = ",".join(str(item).lower() if isinstance(item, bool) else str(item) for item in value)
        if isinstance(value, (list, dict)):
            what = "a list" if isinstance(value, list) else "a mapping"
            raise UserError(
                f"Recipe {recipe}, key {key!r}: {what} where one value is expected (the keys that take lists: "
                f"{', '.join(LIST_FLAGS)}; a mapping: config_overrides)."
            )
        pair = [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        try:
            parser.parse_known_args(pair)
        except UserError as error:
            raise UserError(f"Recipe {recipe}, key {key!r}: {error}") from error
        argv += pair
    return argv


def _parser(classes: tuple = ARGUMENT_CLASSES, program: str = "train.py") -> HfArgumentParser:
    # No abbreviations: a typo such as --learning_rat must be an error, not silently --learning_rate.
    parser = HfArgumentParser(classes, allow_abbrev=False)

    def raise_user_error(message: str) -> None:
        # argparse's handler prints the whole usage and exits; one line naming the flag is what users need.
        raise UserError(redact(message) + f" (see `python {program} --help`)")

    parser.error = raise_user_error
    return parser


def exit_if_help(argv: list[str] | None = None, classes: tuple = ARGUMENT_CLASSES, program: str = "train.py") -> None:
    """`train.py --help` (or `-h`): print every argument and exit, before train.py imports torch and accelerate.
    `classes`, `program`: another script's argument dataclasses and name (pretrain.py's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _parser(classes, program).print_help()
        sys.exit(0)


def parse_args(
    argv: list[str] | None = None, classes: tuple = ARGUMENT_CLASSES, program: str = "train.py"
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse `[recipe.yaml] [--flag value ...]`: the recipe's values come first, so that flags override them.
    `classes`: the (model, data, training) argument dataclasses, train.py's unless another script (`program`) has
    its own subclasses of them.

    Raises:
        UserError: a missing or malformed recipe, an unknown flag or recipe key, or a value that fails its check;
            the message names it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(classes, program)
    if argv and argv[0].lower().endswith((".yaml", ".yml")):
        recipe = Path(argv.pop(0))
        argv = _recipe_argv(recipe, parser, classes) + argv
    model_args, data_args, training_args, remaining = parser.parse_args_into_dataclasses(
        args=habits.apply_aliases(argv), return_remaining_strings=True
    )
    if recipes := [item for item in remaining if item.lower().endswith((".yaml", ".yml"))]:
        raise UserError(f"{recipes[0]}: a recipe is read only as the first argument, and only one (flags follow it).")
    if any(item.startswith("-") for item in remaining):
        raise UserError(habits.unknown_arguments_message(remaining, parser._option_string_actions))
    if remaining:
        raise UserError(redact(f"Unknown arguments: {' '.join(remaining)} (see `python {program} --help`)."))
    check_flags_without_effect(model_args, training_args)
    return model_args, data_args, training_args


def _mixing(args: TrainingArguments) -> bool:
    return args.mixup_alpha > 0 or args.cutmix_alpha > 0


# A flag that only acts together with another: (flag, what it needs, whether that is given). The flag is refused when
# it differs from its default while what it needs is not given, since it would then change nothing.
_NEEDS: tuple[tuple[str, str, Callable[[ModelArguments, TrainingArguments], bool]], ...] = (
    *(
        (name, "--peft lora", lambda m, t: t.peft is not None)
        for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_dora", "merge_adapter")
    ),
    ("ema_warmup", "--ema_decay", lambda m, t: t.ema_decay is not None),
    ("final_model", "--ema_decay", lambda m, t: t.ema_decay is not None),
    ("mix_prob", "--mixup_alpha or --cutmix_alpha", lambda m, t: _mixing(t)),
    *(
        (name, "--mix_prob above 0 (0 mixes no batch)", lambda m, t: t.mix_prob > 0)
        for name in ("mixup_alpha", "cutmix_alpha")
    ),
    # With one of them only, every mixed batch uses it: the choice between the two never arises.
    ("mix_switch_prob", "both --mixup_alpha and --cutmix_alpha", lambda m, t: t.mixup_alpha > 0 and t.cutmix_alpha > 0),
    ("momentum", "--optimizer sgd", lambda m, t: t.optimizer == "sgd"),
    *((name, "--optimizer adamw", lambda m, t: t.optimizer == "adamw") for name in ("adam_beta1", "adam_beta2")),
    # transformers' constant schedule has no warm-up (constant_with_warmup has).
    (
        "num_warmup_steps",
        "a schedule with warm-up (not --lr_scheduler_type constant)",
        lambda m, t: t.lr_scheduler_type != "constant",
    ),  # fmt: skip
    *((name, "--push_to_hub", lambda m, t: t.push_to_hub) for name in ("hub_private_repo", "hub_strategy")),
    ("accept_changed_settings", "--resume_from_checkpoint", lambda m, t: t.resume_from_checkpoint is not None),
    ("save_total_limit", "--checkpointing_steps", lambda m, t: t.checkpointing_steps is not None),
    # With the backbone frozen only the classifier trains, at the peak rate whatever the decay.
    ("layer_decay", "blocks that train (not --freeze backbone)", lambda m, t: t.freeze is None),
    # From scratch, the backbone is random: training the head alone on it is a linear probe of random features.
    *(
        (name, "pretrained weights (not --from_scratch)", lambda m, t: not m.from_scratch)
        for name in ("freeze", "freeze_layers", "ignore_mismatched_sizes")
    ),
)


def check_flags_without_effect(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Refuse a flag set (away from its default) while the flag it works with is not: it would change nothing, and a
    run that silently ignores a setting is not the run its command describes."""
    for name, needs, given in _NEEDS:
        arguments = model_args if hasattr(model_args, name) else training_args
        value = getattr(arguments, name)
        default = next(f.default for f in dataclasses.fields(arguments) if f.name == name)
        if value != default and not given(model_args, training_args):
            shown = "" if isinstance(value, bool) else f" {value}"
            raise UserError(f"--{name}{shown} needs {needs}; without it the flag changes nothing.")


def argument_class_name(arguments) -> str:
    """The name of the train.py dataclass `arguments` is (or subclasses: another script's arguments), under which
    records and resume settings file it."""
    names = {cls.__name__ for cls in ARGUMENT_CLASSES}
    return next(cls.__name__ for cls in type(arguments).__mro__ if cls.__name__ in names)


def recorded_arguments(*arguments) -> dict:
    """The arguments as JSON-ready dicts for training_args.json and trackers, with the token left out."""
    record = {argument_class_name(a): dataclasses.asdict(a) for a in arguments}
    for values in record.values():
        if values.get("hub_token") is not None:
            values["hub_token"] = "<redacted>"
    return record


# Every spelling the parser accepts for the token flag (HfArgumentParser also takes dashes for underscores).
_TOKEN_FLAGS = ("--hub_token", "--hub-token")


def recorded_command(argv: list[str]) -> list[str]:
    """The command line as typed, with the value of --hub_token (and anything shaped like a token) replaced."""
    command, hide_next = [], False
    for item in argv:
        if hide_next:
            command.append("<redacted>")
            hide_next = False
            continue
        flag, equals, _ = item.partition("=")
        if flag in _TOKEN_FLAGS:
            if equals:
                command.append(f"{flag}=<redacted>")
            else:
                command.append(item)
                hide_next = True
            continue
        command.append(redact(item))
    return command

"""Building the model for a run (its final save: `finish.py`)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..configuration_vit_accel import VIT_VARIANTS, ViTAccelConfig
from ..errors import UserError
from ..modeling_vit_accel import ViTAccelForImageClassification
from ..weights.conversion import GOOGLE_MEAN_STD, PROCESSOR_FILE, source_processor
from ..weights.sources import locate
from .arguments import ModelArguments

# Without an image processor of its own, a source is taken to expect Google's pixels in [-1, 1].
DEFAULT_MEAN = DEFAULT_STD = GOOGLE_MEAN_STD


def source_normalisation(
    source: str, default: tuple = (DEFAULT_MEAN, DEFAULT_STD), from_scratch: bool = False
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the source's images were prepared with, as `source_processor` reads them (its image processor,
    a timm Hub layout's `pretrained_cfg`, a family's published values, Google's npz), else `default` (Google's
    [-1, 1]) where the source does not say (a bare state dict). The model was loaded from it already: it is found
    again without reading the weights. `from_scratch`: only the image processor of a directory, if any (nothing
    else is read or downloaded)."""
    processor = Path(source) / PROCESSOR_FILE
    if from_scratch:
        settings = json.loads(processor.read_text()) if processor.is_file() else None
    else:
        settings = source_processor(locate(source, lazy=True))
    if settings is None or "image_mean" not in settings or "image_std" not in settings:
        return tuple(default[0]), tuple(default[1])
    return tuple(settings["image_mean"]), tuple(settings["image_std"])


def refused_shape(args: ModelArguments, error: Exception) -> UserError:
    """What the configuration or the model refused of a new model (--from_scratch), as the flags that asked for it."""
    first = str(error).splitlines()[0]
    return UserError(
        f"--model_name_or_path {args.model_name_or_path} with --config_overrides {args.config_overrides!r}: {first}"
    )


def refused_source(source: str, error: Exception) -> UserError:
    """A checkpoint that would not load, named by the flag."""
    return UserError(f"Could not load --model_name_or_path {source}: {str(error).splitlines()[0]}")


def build_model(args: ModelArguments, labels: list[str]) -> tuple[ViTAccelForImageClassification, tuple, tuple]:
    """The model to train, with a head for `labels`, and the normalisation its inputs need.

    Raises:
        UserError: unknown variant, bad override, or a checkpoint that does not fit (named in the message).
    """
    label_fields = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    overrides = args.parsed_overrides()
    source = args.model_name_or_path
    if args.from_scratch:
        try:
            # A variant name or a directory with config.json (preflight.check_model_source refused anything else).
            if source in VIT_VARIANTS:
                config = ViTAccelConfig.from_variant(source, **overrides, **label_fields)
            else:
                config = ViTAccelConfig.from_pretrained(source, **overrides, **label_fields)
            # The plain constructor, not `_from_config`: under ZeRO-3 the latter creates the weights inside zero.Init,
            # drawing them in another order, so the same seed would not give the same model as in a DDP run.
            model = ViTAccelForImageClassification(config)
        except (OSError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            # The configuration and the model check their fields; what they refuse came from these flags.
            raise refused_shape(args, error) from error
    else:
        if args.ignore_mismatched_sizes:
            overrides["ignore_mismatched_sizes"] = True
        try:
            model = ViTAccelForImageClassification.from_pretrained(source, **overrides, **label_fields)
        except (RuntimeError, OSError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            raise refused_source(source, error) from error
    if args.attn_implementation is not None:
        # transformers checks the backend against the model and the machine (e.g. flash_attn installed).
        try:
            model.set_attn_implementation(args.attn_implementation)
        except (ImportError, ValueError) as error:
            reason = str(error).splitlines()[0]
            raise UserError(f"--attn_implementation {args.attn_implementation}: {reason}") from error
    if model.config.num_channels != 3:
        # Every image is converted to RGB on the way in (grayscale, palette, CMYK, alpha), so the model sees 3.
        raise UserError(
            f"--model_name_or_path {source} takes {model.config.num_channels}-channel images, but train.py feeds RGB."
        )
    mean, std = source_normalisation(source, from_scratch=args.from_scratch)
    return model, mean, std


def base_config(model: nn.Module):
    """The ViT configuration of `model`, also when peft wraps it."""
    get_base_model = getattr(model, "get_base_model", None)
    return (get_base_model() if get_base_model is not None else model).config

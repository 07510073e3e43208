"""Building the model for a run, and saving the finished one as a Hub-ready directory."""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Iterator
from pathlib import Path

from accelerate import Accelerator

from ..configuration_vit_accel import VIT_VARIANTS, ViTAccelConfig
from ..errors import UserError
from ..modeling_vit_accel import ViTAccelForImageClassification
from .arguments import ModelArguments

# Google's checkpoints were trained on pixels scaled to [-1, 1]: mean 0.5, std 0.5 per channel.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of the source's image processor when it has one, else Google's [-1, 1]."""
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        processor = json.loads(path.read_text())
        return tuple(processor.get("image_mean", DEFAULT_MEAN)), tuple(processor.get("image_std", DEFAULT_STD))
    return DEFAULT_MEAN, DEFAULT_STD


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
            if source in VIT_VARIANTS:
                config = ViTAccelConfig.from_variant(source, **overrides, **label_fields)
            elif (Path(source) / "config.json").is_file():
                config = ViTAccelConfig.from_pretrained(source, **overrides, **label_fields)
            else:
                close = difflib.get_close_matches(source, VIT_VARIANTS, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"variants: {', '.join(VIT_VARIANTS)}."
                raise UserError(
                    f"--model_name_or_path {source!r}: --from_scratch needs a variant name or a directory with "
                    f"config.json; {hint}"
                )
            # The plain constructor, not `_from_config`: under ZeRO-3 the latter creates the weights inside zero.Init,
            # drawing them in another order, so the same seed would not give the same model as in a DDP run.
            model = ViTAccelForImageClassification(config)
        except (OSError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            # The configuration and the model check their fields; what they refuse came from these flags.
            raise UserError(
                f"--model_name_or_path {source} with --config_overrides {args.config_overrides!r}: "
                f"{str(error).splitlines()[0]}"
            ) from error
    else:
        if args.ignore_mismatched_sizes:
            overrides["ignore_mismatched_sizes"] = True
        try:
            model = ViTAccelForImageClassification.from_pretrained(source, **overrides, **label_fields)
        except (RuntimeError, OSError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            raise UserError(f"Could not load --model_name_or_path {source}: {str(error).splitlines()[0]}") from error
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
    mean, std = _normalisation(source)
    return model, mean, std


@contextlib.contextmanager
def _unsharded_class(model) -> Iterator[None]:
    """Present an FSDP2-sharded model under its own class while it is saved.

    `fully_shard` replaces the model's class by a generated subclass (`FSDPViTAccelForImageClassification`) that
    lives in torch's FSDP module; `save_pretrained` would then copy torch's FSDP source files as the remote code and
    point `auto_map` at them instead of writing modeling_vit_accel.py.
    """
    from torch.distributed.fsdp import FSDPModule

    generated = type(model)
    if not isinstance(model, FSDPModule):
        yield
        return
    model.__class__ = next(cls for cls in generated.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = generated


def full_precision_state_dict(accelerator: Accelerator, model) -> dict:
    """The trained weights, whole (gathered under ZeRO-3 and FSDP) and in the precision they were trained in; on
    the main process (the others may get an empty dict).

    DeepSpeed with bf16 or fp16 trains a 16-bit copy of the module against fp32 master weights held by its
    optimizer: the masters are the trained model, and the 16-bit module (what `get_state_dict` returns) is only their
    rounding. Parameters without a master (frozen ones) keep the module's value, in fp32 like the rest.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.mixed_precision == "no":
        return accelerator.get_state_dict(model)
    from deepspeed import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_fp32_param

    if not isinstance(model, DeepSpeedEngine):  # the EMA copy: a plain fp32 module
        return accelerator.get_state_dict(model)

    module = accelerator.unwrap_model(model)
    parameters = dict(module.named_parameters())
    state_dict = {}
    for key, value in module.state_dict().items():
        # A collective under ZeRO (the masters are sharded): each process asks for the same keys in the same order.
        master = safe_get_full_fp32_param(parameters[key]) if key in parameters else None
        if not accelerator.is_main_process:  # only the main process writes: the others need no copy
            continue
        if master is None and value.is_floating_point():
            master = value.float()
        state_dict[key] = (master if master is not None else value).detach().cpu()
    return state_dict


def save_final_model(
    accelerator: Accelerator,
    model,
    output_dir: Path,
    mean,
    std,
    results: dict,
    record: dict,
) -> None:
    """`save_pretrained` from the full state dict (gathered under ZeRO-3 and FSDP), the image processor,
    `all_results.json` and `training_args.json` (`record`: the command and the arguments)."""
    from transformers import ViTImageProcessor

    accelerator.wait_for_everyone()
    state_dict = full_precision_state_dict(accelerator, model)  # a collective: every process must call it
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with _unsharded_class(unwrapped):
            unwrapped.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        saved = str(next(v.dtype for v in state_dict.values() if v.is_floating_point())).removeprefix("torch.")
        if unwrapped.config.dtype != saved:
            # save_pretrained records the module's dtype (DeepSpeed's 16-bit copy), not that of the weights it wrote;
            # from_pretrained's default dtype="auto" would load them in it.
            unwrapped.config.dtype = saved
            unwrapped.config.save_pretrained(output_dir)
        size = unwrapped.config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        ViTImageProcessor(
            size={"height": height, "width": width}, image_mean=list(mean), image_std=list(std)
        ).save_pretrained(output_dir)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
        (output_dir / "training_args.json").write_text(json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()

"""The fine-tuning methods as the training loop uses them: what trains (LoRA, freezing), the EMA, batch mixing, the
loss, and what is saved at the end. Each check of a flag that needs the model or the accelerate config runs here,
before any training, and raises `UserError` naming the flag.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from ..adapters import (
    MERGED_DIR,
    apply_lora,
    base_identity,
    base_model_reference,
    check_lora_rank,
    check_target_modules,
    count_parameters,  # noqa: F401  (re-exported for the loop)
    parse_target_modules,
    save_adapter,
    save_merged,
    write_adapter_card,
)
from ..errors import UserError
from ..weights.sources import check_architecture_overrides, saved_architecture
from .arguments import ModelArguments, TrainingArguments
from .ema import WeightEMA, check_ema
from .freezing import (  # noqa: F401  (has_frozen_parameters re-exported for the loop)
    apply_freezing,
    check_freezing,
    has_frozen_parameters,
    register_trainable_only_checkpointing,
)
from .mixing import BatchMixer, mixing_seed, soft_target_cross_entropy


def check_run(model_args: ModelArguments, args: TrainingArguments) -> None:
    """Combinations decidable from the flags alone, before the data or the model are loaded.

    LoRA targets are matched against the architecture's layer names (the same for every size, so a model built on
    the meta device, costing nothing, stands for the real one).
    """
    if args.peft is not None and model_args.from_scratch:
        raise UserError(f"--peft {args.peft} adapts pretrained weights; it cannot be combined with --from_scratch.")
    check_freezing(args.freeze, args.freeze_layers, None, args.peft)
    if args.peft is not None:
        from ..configuration_vit_accel import ViTAccelConfig
        from ..modeling_vit_accel import ViTAccelForImageClassification

        with torch.device("meta"):
            shape = ViTAccelForImageClassification(ViTAccelConfig(num_hidden_layers=1, representation_size=8))
        check_target_modules(shape, parse_target_modules(args.lora_target_modules))
    if not model_args.from_scratch:
        check_architecture_overrides(
            model_args.model_name_or_path,
            model_args.parsed_overrides(),
            lambda key, value: f"--config_overrides {key}={value}",
            "pass --from_scratch for a new model of that shape",
        )
        if args.peft is not None:
            check_lora_rank_of_source(model_args, args)


def check_lora_rank_of_source(model_args: ModelArguments, args: TrainingArguments) -> None:
    """`--lora_r` against the widths of the layers it adapts, where the source's shape is known without loading it
    (a named variant, a local directory); `apply_lora` checks the loaded model in any case."""
    from ..configuration_vit_accel import ViTAccelConfig
    from ..modeling_vit_accel import ViTAccelForImageClassification

    saved = saved_architecture(model_args.model_name_or_path)
    if saved is None:
        return
    with torch.device("meta"):
        shape = ViTAccelForImageClassification(ViTAccelConfig(**{**saved, "num_hidden_layers": 1}))
    check_lora_rank(shape, args.lora_r, parse_target_modules(args.lora_target_modules))


def check_accelerator(accelerator: Accelerator, args: TrainingArguments) -> None:
    """Combinations with the accelerate config: ZeRO-3 and FSDP shard every weight, which the EMA and the adapter and
    frozen-weight checkpoints need whole; all such flags are named in one line."""
    from accelerate.utils import DistributedType

    plugin = accelerator.state.deepspeed_plugin
    mode = "DeepSpeed ZeRO-3" if plugin is not None and plugin.zero_stage == 3 else None
    if accelerator.distributed_type == DistributedType.FSDP:
        mode = "FSDP"
    if mode is not None:
        flags = ("ema_decay", "peft", "freeze", "freeze_layers")
        given = [f"--{name}" for name in flags if getattr(args, name) is not None]
        if given:
            raise UserError(
                f"{', '.join(given)}: not supported under {mode}, where each process holds a shard of every "
                "weight. Use DeepSpeed ZeRO-2 (optimizer state and gradients sharded), DDP or one process."
            )
    check_ema(args.ema_decay, accelerator)


def setup_model(model: nn.Module, model_args: ModelArguments, args: TrainingArguments) -> nn.Module:
    """The model to train: wrapped by peft for `--peft lora`, partly frozen for `--freeze*`, else as it is."""
    if args.peft == "lora":
        adapted = apply_lora(
            model,
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            target_modules=parse_target_modules(args.lora_target_modules),
            use_dora=args.use_dora,
            base_model_name_or_path=base_model_reference(model_args.model_name_or_path),
        )
        # Taken now, from the files the base was just read from: save_adapter_outputs records it with the adapter.
        adapted.vit_accel_base_identity = base_identity(model_args.model_name_or_path)
        return adapted
    check_freezing(args.freeze, args.freeze_layers, model.config.num_hidden_layers)
    apply_freezing(model, args.freeze, args.freeze_layers)
    return model


def parameter_summary(model: nn.Module) -> str:
    trainable, total = count_parameters(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def register_checkpointing(accelerator: Accelerator, frozen: bool, ema: WeightEMA | None) -> None:
    """Checkpoints of runs with frozen weights keep the trainable ones only; the EMA goes into every checkpoint."""
    if frozen:
        register_trainable_only_checkpointing(accelerator)
    if ema is not None:
        ema.register_checkpointing(accelerator)


def build_ema(model: nn.Module, args: TrainingArguments, accelerator: Accelerator) -> WeightEMA | None:
    """The EMA of `model` (not yet prepared: a plain copy), on the accelerator's device."""
    if args.ema_decay is None:
        return None
    return WeightEMA(model, args.ema_decay, warmup=args.ema_warmup, device=accelerator.device)


def build_mixer(args: TrainingArguments, num_classes: int) -> BatchMixer | None:
    config = args.mixing_config()
    return BatchMixer(config, num_classes) if config.enabled else None


def training_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    args: TrainingArguments,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example cross-entropy: against the mixer's soft targets (label smoothing folded in) when the batch was
    mixed, else against the labels with `--label_smoothing`."""
    if targets is not None:
        return soft_target_cross_entropy(logits, targets, reduction="none")
    return F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing, reduction="none")


def mix_batch(
    mixer: BatchMixer | None,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    args: TrainingArguments,
    epoch: int,
    batch_index: int,
    process_index: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pixels, soft targets) mixed as the run's position dictates; (pixels, None) without mixing."""
    if mixer is None:
        return pixel_values, None
    return mixer(pixel_values, labels, mixing_seed(args.seed, epoch, batch_index, process_index))


def choose_final(args: TrainingArguments, results: dict) -> str:
    """'raw' or 'ema' as `--final_model` asks; 'best' is the one with the higher top-1 at the last evaluation (raw
    on ties). `results` holds the raw `eval_*` and the EMA's `ema_eval_*` metrics."""
    if args.ema_decay is None or args.final_model == "raw":
        return "raw"
    if args.final_model == "ema":
        return "ema"
    return "ema" if results.get("ema_eval_top1", -1.0) > results.get("eval_top1", -1.0) else "raw"


def ema_checksums(accelerator: Accelerator, ema: WeightEMA | None) -> dict:
    """Each process's sum of its EMA weights (replicas must agree), or nothing without an EMA."""
    if ema is None:
        return {}
    checksum = torch.stack([p.detach().float().sum() for p in ema.module.parameters()]).sum().reshape(1)
    return {"ema_replica_checksums": accelerator.gather(checksum).tolist()}


def save_adapter_outputs(
    accelerator: Accelerator,
    model: nn.Module,
    output_dir: Path,
    args: TrainingArguments,
    write_processor,
    results: dict,
    record: dict,
) -> None:
    """The adapter directory: adapter, `classifier_config.json`, image processor, `all_results.json`,
    `training_args.json` (`record`), the card; `merged/` with `--merge_adapter`. `model` is the peft model as
    trained (prepared or not) or its EMA copy."""
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        save_adapter(model, output_dir, base=getattr(model, "vit_accel_base_identity", None))
        write_processor(output_dir)
        if args.merge_adapter:
            save_merged(model, output_dir / MERGED_DIR)
            write_processor(output_dir / MERGED_DIR)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")
        (output_dir / "training_args.json").write_text(json.dumps(record, indent=2) + "\n")
        trainable, total = count_parameters(model)
        write_adapter_card(output_dir, results, trainable, total, record["command"])
    accelerator.wait_for_everyone()


def base_config(model: nn.Module):
    """The ViT configuration, also of a peft-wrapped model."""
    get_base_model = getattr(model, "get_base_model", None)
    return (get_base_model() if get_base_model is not None else model).config


def state_kwargs(accelerator: Accelerator, frozen: bool, saving: bool) -> dict:
    """Extra `save_state`/`load_state` arguments for runs with frozen weights (DeepSpeed only; hooks do the rest)."""
    from .freezing import state_kwargs as frozen_state_kwargs

    return frozen_state_kwargs(accelerator, saving) if frozen else {}


def processor_writer(size, mean, std):
    """A function writing the run's image processor (`size` px, `mean`/`std`) into a directory."""
    from transformers import ViTImageProcessor

    height, width = (size, size) if isinstance(size, int) else size

    def write(directory: Path) -> None:
        ViTImageProcessor(
            size={"height": height, "width": width}, image_mean=list(mean), image_std=list(std)
        ).save_pretrained(directory)

    return write

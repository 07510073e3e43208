"""LoRA and DoRA adapters through peft: building, checking, saving, merging and loading them.

A LoRA run trains low-rank updates of the attention's query and value projections (`q_proj`, `v_proj`, the
published ViT setting) plus the whole classifier (peft's `modules_to_save`); every other weight stays as the base
model has it. What a run leaves:

- `adapter_model.safetensors` + `adapter_config.json` (peft's format; `base_model_name_or_path` names the base: an
  absolute path for a local base, else the Hub id or variant name given);
- `classifier_config.json`: the configuration of the model the adapter was trained on (labels, image size), so the
  base can be rebuilt with the right head whatever head the base itself has;
- `adapter_base.json`: what identifies the base's weights (an xxh3-64 digest of a local base's weight files, taken
  when training started), so that loading refuses a base retrained or replaced since;
- the image processor and a model card saying how to load it;
- with `--merge_adapter`, `merged/`: the base with the adapter folded in, a plain model directory.

Not `config.json`: transformers takes a directory holding both `config.json` and `adapter_config.json` for a full
model with an embedded adapter, and would look for the base weights there.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
CLASSIFIER_CONFIG = "classifier_config.json"
BASE_RECORD = "adapter_base.json"
# The files a base's weights are read from, in a local directory (a local file is its own weights).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")
MERGED_DIR = "merged"
DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")
PEFT_METHODS = ("lora",)


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def parse_target_modules(value: str | list[str] | tuple[str, ...] | None) -> list[str] | str:
    """`--lora_target_modules`: comma-separated module names (or a list of them), `all-linear`, or None for query
    and value."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    if value is None or not value.strip():
        return list(DEFAULT_TARGET_MODULES)
    if value.strip() == "all-linear":
        return "all-linear"
    return [name.strip() for name in value.split(",") if name.strip()]


def check_target_modules(model: nn.Module, target_modules: list[str] | str) -> None:
    """Every requested name must match at least one linear layer (by its last name component, as peft matches)."""
    if target_modules == "all-linear":
        return
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    available = sorted({name.rsplit(".", 1)[-1] for name in linear if name != "classifier"})
    # The classifier is peft's `modules_to_save` (trained in full); peft finds no layer left to adapt under that name.
    head = [t for t in target_modules if t == "classifier" or t.endswith(".classifier")]
    if head:
        raise UserError(
            f"--lora_target_modules {head[0]}: the classifier always trains in full with --peft lora, so it takes no "
            f"LoRA update; the linear layers that can be targets are {', '.join(available)} (or all-linear)."
        )
    unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in linear)]
    if unmatched:
        raise UserError(
            f"--lora_target_modules: {', '.join(map(repr, unmatched))} matches no linear layer of this model; "
            f"its linear layers are {', '.join(available)} (plus the classifier, which always trains)."
        )


def check_lora_rank(model: nn.Module, r: int, target_modules: list[str] | str) -> None:
    """Refuse a rank above what the adapted layers can use: the update of an `out x in` weight has rank at most
    `min(in, out)`, so a larger `r` adds parameters and nothing else."""
    linear = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    adapted = [
        (name, module)
        for name, module in linear.items()
        if name.rsplit(".", 1)[-1] != "classifier"
        and (target_modules == "all-linear" or any(name == t or name.endswith("." + t) for t in target_modules))
    ]
    if not adapted:
        return
    name, narrowest = min(adapted, key=lambda item: min(item[1].in_features, item[1].out_features))
    width = min(narrowest.in_features, narrowest.out_features)
    if r > width:
        raise UserError(
            f"--lora_r {r} is larger than the layers it adapts can use: {name.rsplit('.', 1)[-1]} maps "
            f"{narrowest.in_features} to {narrowest.out_features} features, so its update has rank at most {width}; "
            f"use --lora_r {width} or less."
        )


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: list[str] | str | None = None,
    use_dora: bool = False,
    base_model_name_or_path: str | None = None,
) -> nn.Module:
    """`model` wrapped by `peft.get_peft_model`: LoRA (or DoRA) on `target_modules`, the classifier fully trained."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise UserError(f"--lora_r must be at least 1, got {r}.")
    if alpha <= 0:
        raise UserError(f"--lora_alpha must be positive, got {alpha}.")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"--lora_dropout must be in [0, 1), got {dropout}.")
    targets = list(DEFAULT_TARGET_MODULES) if target_modules is None else target_modules
    check_target_modules(model, targets)
    check_lora_rank(model, r, targets)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        use_dora=use_dora,
        bias="none",
        modules_to_save=["classifier"],
        base_model_name_or_path=base_model_name_or_path,
    )
    adapted = get_peft_model(model, config)
    if getattr(model, "_require_grads_hook", None) is not None and not _reentrant_checkpointing(model):
        # peft makes the embeddings' output require grad, which reentrant checkpointing needs to reach the adapters
        # behind frozen layers. Non-reentrant checkpointing (train.py's, and transformers' default) does not, and
        # the hook's requires_grad_() on an intermediate tensor breaks torch.compile's graph.
        model.disable_input_require_grads()
    return adapted


def _reentrant_checkpointing(model: nn.Module) -> bool:
    """Whether some layer of `model` checkpoints its activations with torch's reentrant variant."""
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            function = getattr(module, "_gradient_checkpointing_func", None)
            if getattr(function, "keywords", {}).get("use_reentrant", True):
                return True
    return False


def base_model_reference(source: str) -> str:
    """What `adapter_config.json` should name: an absolute path for a local base (loadable from any directory),
    the Hub id or variant name otherwise."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def base_identity(source: str) -> dict | None:
    """What identifies a local base's weights: `{"base": <absolute path>, "weights_xxh3_64": <digest>}`, the digest
    over the names and contents of its weight files (the file itself, or a directory's top-level `*.safetensors`,
    `*.bin`, `*.pth`, `*.pt`, `*.npz`). None for a Hub id or named variant, which are not rewritten in place."""
    import xxhash

    path = Path(source).expanduser()
    if not path.exists():
        return None
    path = path.resolve()
    files = (
        [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    digest = xxhash.xxh3_64()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 24):  # 16 MiB: about memory speed
                digest.update(chunk)
    return {"base": str(path), "weights_xxh3_64": digest.hexdigest()}


def check_base(adapter_dir: str | Path, base: str, allow_changed_base: bool = False) -> None:
    """Refuse a base whose weights are not those the adapter was trained on (`adapter_base.json`), naming both.

    Refused rather than warned about: an adapter's low-rank updates are deltas of particular weights, and on others
    its outputs look plausible and are wrong. `allow_changed_base=True` (`--allow_changed_base`) uses it anyway, with
    a warning. An adapter without the record (written before it existed) is not checked."""
    record_file = Path(adapter_dir) / BASE_RECORD
    if not record_file.is_file():
        return
    try:
        recorded = json.loads(record_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{record_file} is not valid JSON ({error}).") from error
    if not isinstance(recorded, dict) or not recorded.get("weights_xxh3_64"):
        return
    now = base_identity(base)
    if now is not None and now["weights_xxh3_64"] == recorded["weights_xxh3_64"]:
        return
    if now is None:
        message = (
            f"{adapter_dir}: its base {base} (named in {ADAPTER_CONFIG}) no longer exists; the adapter was trained on "
            f"weights of xxh3-64 {recorded['weights_xxh3_64']} ({record_file})"
        )
    else:
        message = (
            f"{adapter_dir}: its base {base} has other weights than the ones the adapter was trained on (xxh3-64 "
            f"{recorded['weights_xxh3_64']} in {record_file}, now {now['weights_xxh3_64']}): retrained or replaced "
            "since"
        )
    if not allow_changed_base:
        raise UserError(f"{message}. Restore that base, or pass --allow_changed_base (allow_changed_base=True).")
    import warnings

    warnings.warn(f"{message}; used anyway (allow_changed_base).", stacklevel=3)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; peft's copy of the classifier counts once, as the trained one."""
    trainable = total = 0
    for name, param in model.named_parameters():
        if ".original_module." in name:  # peft keeps the base's classifier beside its trained copy
            continue
        # Under ZeRO-3 a parameter is an empty shard on each process; DeepSpeed records its full size as ds_numel.
        count = getattr(param, "ds_numel", param.numel())
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def save_adapter(
    model: nn.Module,
    output_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    base: dict | None = None,
) -> Path:
    """Write the adapter (`adapter_model.safetensors`, `adapter_config.json`), `classifier_config.json` and, for a
    local base, `adapter_base.json` (`base`: its `base_identity`, taken when the base was loaded).

    `model` is the peft model (unwrapped); `state_dict` the full state dict where it had to be gathered (ZeRO-3).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), state_dict=state_dict, safe_serialization=True)
    config = model.get_base_model().config
    (output_dir / CLASSIFIER_CONFIG).write_text(config.to_json_string())
    if base is not None:
        (output_dir / BASE_RECORD).write_text(json.dumps(base, indent=2) + "\n")
    return output_dir


def merged_copy(model: nn.Module) -> nn.Module:
    """The base model with the adapter folded into its weights (peft's `merge_and_unload`), leaving `model` as is."""
    return copy.deepcopy(model).merge_and_unload()


def save_merged(model: nn.Module, output_dir: str | Path) -> Path:
    """`save_pretrained` of the merged model: a plain model directory that loads without peft."""
    merged = merged_copy(model)
    merged.config.architectures = [type(merged).__name__]
    merged.save_pretrained(str(output_dir), safe_serialization=True)
    return Path(output_dir)


def adapter_base(adapter_dir: str | Path) -> str:
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{Path(adapter_dir) / ADAPTER_CONFIG} names no base model (base_model_name_or_path).")
    return base


def load_adapter_classifier(adapter_dir: str | Path, merge: bool = True, allow_changed_base: bool = False) -> nn.Module:
    """The classifier an adapter directory describes: its base, rebuilt with the adapter's head, plus the adapter.

    With `merge` the adapter is folded in (faster inference, a plain model); otherwise a `PeftModel` is returned.
    A local base whose weights changed since the adapter was trained is refused (`check_base`) unless
    `allow_changed_base=True`.
    """
    from peft import PeftModel

    from .configuration_vit_accel import ViTAccelConfig
    from .modeling_vit_accel import ViTAccelForImageClassification

    adapter_dir = Path(adapter_dir)
    base = adapter_base(adapter_dir)
    check_base(adapter_dir, base, allow_changed_base)
    kwargs = {}
    if (adapter_dir / CLASSIFIER_CONFIG).is_file():
        kwargs = {"config": ViTAccelConfig.from_json_file(str(adapter_dir / CLASSIFIER_CONFIG))}
        if Path(base).is_dir() and not is_adapter_dir(base):
            kwargs["ignore_mismatched_sizes"] = True  # the base's own head may have other classes
    try:
        model = ViTAccelForImageClassification.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{adapter_dir}: cannot load its base model {base!r} (named in {ADAPTER_CONFIG}): "
            f"{str(error).splitlines()[0]}"
        ) from error
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model.merge_and_unload() if merge else model


def write_adapter_card(output_dir: str | Path, results: dict, trainable: int, total: int, command: list[str]) -> Path:
    """`README.md` of an adapter directory: what it is, its results, and how to load it (peft's card replaced)."""
    from huggingface_hub import ModelCard, ModelCardData

    root = Path(output_dir)
    config = json.loads((root / ADAPTER_CONFIG).read_text())
    base = config["base_model_name_or_path"]
    method = "DoRA" if config.get("use_dora") else "LoRA"
    targets = config.get("target_modules")
    targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
    metrics = "\n".join(
        f"| {key} | {results[key]:.4f} |" for key in ("eval_top1", "eval_top5", "eval_loss") if key in results
    )
    data = ModelCardData(
        library_name="peft",
        base_model=base if not Path(base).is_absolute() else None,
        pipeline_tag="image-classification",
        tags=["vit_accel", "lora", "image-classification"],
    )
    merged = (root / MERGED_DIR).is_dir()
    content = f"""---
{data.to_yaml()}
---

# {root.name}

A {method} adapter (rank {config.get("r")}, alpha {config.get("lora_alpha")}, on {targets}, classifier trained in
full) for the Vision Transformer `{base}`, trained with [vit_accel](https://pypi.org/project/vit_accel/):
{trainable:,} of {total:,} parameters trained ({100 * trainable / max(total, 1):.2f}%).

| metric | value |
|---|---|
{metrics}

## Load it

```python
# with vit_accel: the base is rebuilt with this adapter's head (classifier_config.json), whatever head it has
from vit_accel.adapters import load_adapter_classifier
model = load_adapter_classifier("{root.name}")  # merged; merge=False keeps the PeftModel

# with peft, when the base model's own head already has this adapter's classes
import vit_accel
from peft import PeftModel
from transformers import AutoModelForImageClassification
model = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained("{base}"), "{root.name}")
```
{
        ""
        if not merged
        else f'''
`{MERGED_DIR}/` holds the base with the adapter folded in: a plain model directory for
`AutoModelForImageClassification.from_pretrained("{root.name}/{MERGED_DIR}")` or an image-classification pipeline.
'''
    }
`vit-accel predict --model {root.name} image.png` and `vit-accel evaluate --model {root.name} ...` read this directory
as they read a model directory.

## Training

```bash
{" ".join(command)}
```
"""
    path = root / "README.md"
    ModelCard(content).save(path)
    return path

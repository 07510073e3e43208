"""The fine-tuning policy, in one place: which configuration a checkpoint builds, which of its head and `pre_logits`
(pooler) tensors are kept, how a new head starts, and how position embeddings are resampled to a new grid.

The head rule is the ecosystem's (transformers and timm):

- no label count asked for (no `num_labels`, `id2label` or `config`): the checkpoint's trained classifier is kept with
  its class count, and its labels where the source names them (transformers' `id2label`, timm's `label_names`). A
  head that sits on Google's `pre_logits` keeps that layer too, so that the logits are the checkpoint's.
- the exception: Google's ImageNet-21k files ship an all-zero head (it was dropped for release). That head predicts
  nothing, so the model gets a new head with the configuration's default class count (2, as transformers'
  `ViTForImageClassification` gets from `google/vit-base-patch16-224-in21k`), and one log line says so. A checkpoint
  without any head is treated the same way.
- a label count that differs from the checkpoint's: a new head, `head_init="zeros"` (Google's fine-tuning) or
  `"normal"` (transformers' truncated normal). With `ignore_mismatched_sizes=False` said explicitly, replacing a
  trained head is refused instead.

`pre_logits` (Google, timm's older `pre_logits.fc`) and a transformers `ViTModel`'s pooler are the same layer under
our names (`vit.pooler.dense`). The bare `ViTAccelModel` always has a pooler: it takes the checkpoint's at its width,
or, for a checkpoint without one, a newly initialised one (one log line, as transformers warns). The classifier has it
only with `representation_size` (Google's setting; it must then come from the checkpoint) and otherwise drops it, as
Google and timm fine-tune.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from typing import Any

import torch

from ..configuration_vit_accel import ViTAccelConfig
from ..errors import UserError
from ..modeling_vit_accel import ViTAccelModel, resample_position_embeddings
from .checkpoint import HEAD_KEYS, PATCH_KEY, POOLER_KEYS, POS_KEY, Checkpoint, CheckpointError

logger = logging.getLogger(__name__)

HEAD_INITS = ("zeros", "normal")
LABEL_FIELDS = ("num_labels", "id2label", "label2id")
WIDTH_FIELDS = {"representation_size", "pooler_output_size"}  # either sets the pooler's width


def _layer_count(state_dict: Mapping[str, torch.Tensor]) -> int:
    indices = {int(key.split(".")[2]) for key in state_dict if key.startswith("vit.layers.")}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"Encoder blocks are not numbered 0..N-1: found {sorted(indices)}.")
    return len(indices)


# What no tensor's shape tells: a checkpoint's converter must have read it from a config, or the caller says it.
UNRECORDED_FIELDS = ("num_attention_heads", "layer_norm_eps", "hidden_act")


def infer_config_fields(checkpoint: Checkpoint, given: Collection[str] = ()) -> dict[str, Any]:
    """ViTAccelConfig fields implied by the checkpoint's shapes (and the facts its converter recorded), labels aside.

    The attention heads, LayerNorm epsilon and activation are not in the shapes: when neither the checkpoint's
    config nor `given` (the fields the caller sets) has them, the checkpoint is refused naming them, never guessed
    (a 192-wide attention computes a different function with 1, 2 or 3 heads)."""
    sd = checkpoint.state_dict
    rope = checkpoint.config.get("position_embedding_type") == "rope"  # no table: its converter gives image_size
    for key in (PATCH_KEY, *(() if rope else (POS_KEY,)), "vit.layers.0.mlp.fc1.weight"):
        if key not in sd:
            raise CheckpointError(f"{checkpoint.source}: no {key!r} after conversion; is this a plain ViT checkpoint?")
    hidden, channels, patch_h, patch_w = sd[PATCH_KEY].shape
    side = 224 // patch_h if rope else source_grid(checkpoint)[0]
    heads = checkpoint.num_attention_heads
    recorded = {**checkpoint.config, "num_attention_heads": heads}
    missing = [key for key in UNRECORDED_FIELDS if recorded.get(key) is None and key not in given]
    if missing:
        asked = ", ".join(f"{key}=" for key in missing)
        raise CheckpointError(
            f"{checkpoint.source}: a {checkpoint.format} state dict that does not record {', '.join(missing)} (the "
            f"shapes do not tell), and no config.json beside it says so: pass {asked} (from_pretrained keywords; "
            "train.py --config_overrides; vit-accel convert --num_heads), or load the directory with its config.json."
        )
    fields: dict[str, Any] = {
        "hidden_size": int(hidden),
        "num_hidden_layers": _layer_count(sd),
        "num_attention_heads": int(heads) if heads is not None else 1,  # replaced by the caller's value
        "intermediate_size": int(sd["vit.layers.0.mlp.fc1.weight"].shape[0]),
        "num_channels": int(channels),
        "patch_size": int(patch_h) if patch_h == patch_w else [int(patch_h), int(patch_w)],
        "image_size": int(side * patch_h) if patch_h == patch_w else [int(side * patch_h), int(side * patch_w)],
        "qkv_bias": "vit.layers.0.attention.q_proj.bias" in sd,
    }
    fields.update({key: value for key, value in checkpoint.config.items() if key not in LABEL_FIELDS})
    return fields


def prefix_positions(checkpoint: Checkpoint) -> int:
    """Rows of the checkpoint's position table before the patch grid's (the CLS token's, in Google's ViT)."""
    fields = checkpoint.config
    if not fields.get("prefix_position_embeddings", True):
        return 0
    return int(fields.get("use_cls_token", True)) + int(fields.get("num_register_tokens", 0))


def source_grid(checkpoint: Checkpoint) -> tuple[int, int]:
    num_positions = checkpoint.state_dict[POS_KEY].shape[1] - prefix_positions(checkpoint)
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise CheckpointError(f"{checkpoint.source}: {num_positions} position embeddings do not form a square grid.")
    return (side, side)


def trained_head(checkpoint: Checkpoint) -> bool:
    """Whether the checkpoint has a classifier that is not all zeros (reads it if it is only a placeholder)."""
    if not all(key in checkpoint.state_dict for key in HEAD_KEYS):
        return False
    return any(bool(checkpoint.tensor(key).any()) for key in HEAD_KEYS)


def build_config(
    checkpoint: Checkpoint,
    classifier: bool = True,
    variant: str | None = None,
    config: ViTAccelConfig | None = None,
    **overrides: Any,
) -> ViTAccelConfig:
    """The configuration to build: a given config, a named variant, or the checkpoint's own shapes; then overrides,
    and for a classifier (`classifier=True`) the head rule of this module when no label count is asked for."""
    if config is not None:
        fields = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures"):
            fields.pop(key, None)
        if any(key in overrides for key in LABEL_FIELDS):  # the caller's labels replace the config's, not mix with them
            for key in LABEL_FIELDS:
                fields.pop(key, None)
        fields.update(overrides)
        return ViTAccelConfig(**fields)
    if variant is not None:  # the variant's shape, with the checkpoint's LayerNorm epsilon and activation
        fields = {key: value for key, value in checkpoint.config.items() if key in ("layer_norm_eps", "hidden_act")}
    else:
        fields = infer_config_fields(checkpoint, given=set(overrides))
    if classifier:
        fields.update(_label_fields(checkpoint, overrides))
    elif all(key in checkpoint.state_dict for key in POOLER_KEYS) and not WIDTH_FIELDS & set(overrides):
        # A bare model keeps the checkpoint's pooler (a transformers ViTModel's, or Google's pre_logits) at its width.
        fields["pooler_output_size"] = int(checkpoint.state_dict[POOLER_KEYS[0]].shape[0])
    fields.update(overrides)
    return ViTAccelConfig.from_variant(variant, **fields) if variant is not None else ViTAccelConfig(**fields)


def _label_fields(checkpoint: Checkpoint, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Class count, labels and `representation_size` that keep the checkpoint's head, per the head rule."""
    labels = checkpoint.config.get("id2label")
    if any(key in overrides for key in LABEL_FIELDS):
        # Asked for: the source's names go along only with a head of the same size and no names of the caller's.
        asked = overrides.get("num_labels", len(overrides.get("id2label") or overrides.get("label2id") or {}))
        if labels and len(labels) == asked and "id2label" not in overrides:
            return {"id2label": labels, "label2id": {name: index for index, name in labels.items()}}
        return {}
    if not trained_head(checkpoint):
        what = "an all-zero head" if all(key in checkpoint.state_dict for key in HEAD_KEYS) else "no classifier"
        logger.warning(
            "%s has %s, so the model gets a new %d-class head (head_init); pass num_labels= (or id2label=) for "
            "your classes.",
            checkpoint.source,
            what,
            ViTAccelConfig().num_labels,
        )
        return {}
    weight = checkpoint.state_dict["classifier.weight"]
    fields: dict[str, Any] = {"num_labels": int(weight.shape[0])}
    if labels and len(labels) == weight.shape[0]:
        fields["id2label"] = labels
        fields["label2id"] = {name: index for index, name in labels.items()}
    else:
        fields["id2label"] = {i: f"LABEL_{i}" for i in range(int(weight.shape[0]))}
        fields["label2id"] = {name: i for i, name in fields["id2label"].items()}
    if all(key in checkpoint.state_dict for key in POOLER_KEYS) and "representation_size" not in overrides:
        # A head trained on pre_logits reads that layer's output: keep the layer, or the logits are not the source's.
        fields["representation_size"] = int(checkpoint.state_dict[POOLER_KEYS[0]].shape[0])
    return fields


def _new_head(out_features: int, in_features: int, head_init: str, std: float) -> dict[str, torch.Tensor]:
    weight = torch.zeros(out_features, in_features)
    if head_init == "normal":  # transformers' ViT: truncated normal (std initializer_range), zero bias
        torch.nn.init.trunc_normal_(weight, mean=0.0, std=std)
    # "zeros": Google's fine-tuning starts every new head from zeros (vit_jax, `zero_init` of the head)
    return {"classifier.weight": weight, "classifier.bias": torch.zeros(out_features)}


def adapt_state_dict(
    checkpoint: Checkpoint,
    config: ViTAccelConfig,
    expected: Mapping[str, tuple[int, ...]],
    head_init: str = "zeros",
    resample_mode: str | None = None,
    resample_antialias: bool | None = None,
    ignore_mismatched_sizes: bool | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The checkpoint's tensors made to fit a model whose parameters have the `expected` shapes (our names, `vit.`
    prefix included), and a report: `{"new": keys made here, "dropped": checkpoint keys not used}`.

    - The pooler (`pre_logits`) is kept where the model has one. A classifier with `representation_size` needs it
      from the checkpoint, of that width; a bare model without one in the checkpoint gets a freshly initialised one.
    - The head is kept when its shape fits; otherwise a new one is made with `head_init`.
    - Position embeddings are resampled to the config's grid in float32, CLS kept, in the source's mode by default
      (bilinear for Google npz as Google and timm do; bicubic otherwise) or the mode given.
    """
    if head_init not in HEAD_INITS:
        raise CheckpointError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}.")
    sd = dict(checkpoint.state_dict)
    report: dict[str, list[str]] = {"new": [], "dropped": []}
    pooler = {key: sd.pop(key) for key in POOLER_KEYS if key in sd}
    head = {key: sd.pop(key) for key in HEAD_KEYS if key in sd}

    if POOLER_KEYS[0] in expected:
        width = expected[POOLER_KEYS[0]][0]
        if len(pooler) == 2 and pooler[POOLER_KEYS[0]].shape[0] == width:
            sd.update(pooler)
        elif HEAD_KEYS[0] in expected:  # a classifier on pre_logits: that layer must come from the checkpoint
            if len(pooler) != 2:
                raise CheckpointError(
                    f"{checkpoint.source}: representation_size={width} asks for the pre_logits layer, but the "
                    "checkpoint has none."
                )
            raise CheckpointError(
                f"{checkpoint.source}: pre_logits has width {pooler[POOLER_KEYS[0]].shape[0]}, "
                f"not representation_size={width}."
            )
        else:  # a bare model: a fresh pooler, initialised as transformers' ViT initialises it, and said so
            weight = torch.nn.init.trunc_normal_(torch.empty(expected[POOLER_KEYS[0]]), std=config.initializer_range)
            sd.update({POOLER_KEYS[0]: weight, POOLER_KEYS[1]: torch.zeros(width)})
            report["new"] += list(POOLER_KEYS)
            report["dropped"] += sorted(pooler)
            logger.warning(
                "%s has no pooler (pre_logits) of width %d: the model's pooler is newly initialised.",
                checkpoint.source,
                width,
            )
    else:
        report["dropped"] += sorted(pooler)

    if HEAD_KEYS[0] in expected:
        wanted = tuple(expected[HEAD_KEYS[0]])
        if len(head) == 2 and tuple(head["classifier.weight"].shape) == wanted:
            sd.update(head)
        else:
            if head and ignore_mismatched_sizes is False:
                raise CheckpointError(
                    f"{checkpoint.source}: the checkpoint's head has shape {tuple(head['classifier.weight'].shape)}, "
                    f"the model's {wanted}; ignore_mismatched_sizes=False forbids replacing it."
                )
            sd.update(_new_head(wanted[0], wanted[1], head_init, config.initializer_range))
            report["new"] += list(HEAD_KEYS)
            report["dropped"] += sorted(head)
            if head:
                logger.info(
                    "%s: new %d-class head (%s) in place of the checkpoint's %d-class one.",
                    checkpoint.source,
                    wanted[0],
                    head_init,
                    head["classifier.weight"].shape[0],
                )
    else:
        report["dropped"] += sorted(head)

    norm, fc_norm = "vit.layernorm.", "vit.fc_norm."
    if f"{fc_norm}weight" in expected and f"{fc_norm}weight" not in sd and f"{norm}weight" in sd:
        # Average pooling asked of a checkpoint with a final norm and none of its own (MAE's pre-trained encoder):
        # MAE's fine-tuning drops the final norm and starts `fc_norm` afresh (unit scale, zero shift).
        for kind in ("weight", "bias"):
            report["dropped"].append(f"{norm}{kind}")
            sd.pop(f"{norm}{kind}", None)
            sd[f"{fc_norm}{kind}"] = (torch.ones if kind == "weight" else torch.zeros)(expected[f"{fc_norm}{kind}"])
            report["new"].append(f"{fc_norm}{kind}")
        logger.info("%s: pooling='mean' with a new fc_norm in place of the final LayerNorm.", checkpoint.source)

    if POS_KEY in sd:
        pos = sd[POS_KEY]
        new_grid = config.grid_size
        prefix = prefix_positions(checkpoint)
        if pos.shape[1] != new_grid[0] * new_grid[1] + prefix or source_grid(checkpoint) != new_grid:
            sd[POS_KEY] = resample_position_embeddings(
                pos,
                new_grid,
                old_grid=source_grid(checkpoint),
                num_prefix_tokens=prefix,
                mode=resample_mode or checkpoint.resample_mode,
                antialias=checkpoint.resample_antialias if resample_antialias is None else resample_antialias,
            )
    return sd, report


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of `model` under our (`vit.`-prefixed) names."""
    prefix = "vit." if isinstance(model, ViTAccelModel) else ""
    return {prefix + key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_fit(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    config: ViTAccelConfig,
    source: str,
) -> None:
    """Every tensor has the model's shape for its key, and the keys are the model's, or one error that names the key
    and both shapes."""
    for key, value in state_dict.items():
        if key in expected and tuple(value.shape) != tuple(expected[key]):
            raise CheckpointError(
                f"{source}: checkpoint tensor {key!r} has shape {tuple(value.shape)} but the model "
                f"(hidden_size={config.hidden_size}, layers={config.num_hidden_layers}, "
                f"patch_size={config.patch_size}, image_size={config.image_size}) expects {tuple(expected[key])}."
            )
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: checkpoint does not fit the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} "
            f"(model has {config.num_hidden_layers} layers)."
        )


def plan(
    cls: type,
    checkpoint: Checkpoint,
    *,
    variant: str | None = None,
    config: ViTAccelConfig | None = None,
    head_init: str = "zeros",
    resample_mode: str | None = None,
    resample_antialias: bool | None = None,
    ignore_mismatched_sizes: bool | None = None,
    **overrides: Any,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, list[str]]]:
    """The whole policy, applied: `cls` built on the meta device with the configuration the policy chose, the
    checkpoint's tensors made to fit it (our names), and the report of `adapt_state_dict`."""
    built = build_config(
        checkpoint, classifier=not issubclass(cls, ViTAccelModel), variant=variant, config=config, **overrides
    )
    try:
        with torch.device("meta"):
            model = cls(built)
    except ValueError as error:  # the model's check of the fields asked for (image_size, heads, widths, ...)
        if isinstance(error, UserError):
            raise
        raise CheckpointError(f"{checkpoint.source}: {str(error).splitlines()[0]}") from error
    expected = expected_shapes(model)
    state_dict, report = adapt_state_dict(
        checkpoint, built, expected, head_init, resample_mode, resample_antialias, ignore_mismatched_sizes
    )
    check_fit(state_dict, expected, built, checkpoint.source)
    return model, state_dict, report


def for_model(cls: type, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `vit.`-prefixed names as `cls`'s own: the bare `ViTAccelModel` has no prefix and no classifier."""
    if issubclass(cls, ViTAccelModel):
        return {key[4:]: value for key, value in state_dict.items() if key.startswith("vit.")}
    return dict(state_dict)


def load_into(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """`model` (built on meta by `plan`) adopting `state_dict`'s tensors (real or placeholders) without a copy: the
    model a conversion writes, whose placeholder tensors are read only when written."""
    state_dict = for_model(type(model), state_dict)
    if dtype is not None:
        state_dict = {key: value.to(dtype) for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()  # as transformers' from_pretrained leaves it
    return model

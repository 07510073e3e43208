"""Masked-autoencoder (MAE) pre-training checkpoints: detect, read into our names, and the policy of what they build.

Three layouts hold the same model:

- Meta's original `.pth` (`{"model": state dict}`): the encoder under timm's names (`cls_token`, `pos_embed`,
  `patch_embed.proj`, `blocks.{i}.*`, `norm`), the decoder as `mask_token`, `decoder_embed`, `decoder_pos_embed`,
  `decoder_blocks.{i}.*` (timm's block names), `decoder_norm`, `decoder_pred`;
- transformers' `ViTMAEForPreTraining` (`model_type: vit_mae`): `vit.*` under ViT's on-disk names, `decoder.*` with
  its blocks as `decoder.decoder_encoder.layer.{i}.*` on disk;
- our `ViTAccelForPreTraining` directory: the same names as transformers'.

Our names are `ViTAccelForPreTraining`'s: `vit.*` as for every model of ours, and `decoder.decoder_embed`,
`decoder.mask_token`, `decoder.decoder_pos_embed`, `decoder.decoder_layers.{i}.*` (our block names),
`decoder.decoder_norm`, `decoder.decoder_pred`.

What they build:

- `ViTAccelForPreTraining`: the whole model, to continue pre-training. Sizes come from the shapes; what shapes cannot
  tell comes from the source's config (transformers' and ours), or for Meta's files is MAE's (LayerNorm eps 1e-6,
  GELU) except the attention heads, which are asked for (`num_attention_heads=`, `decoder_num_attention_heads=`),
  never guessed. At another `image_size` both fixed sin-cos tables are computed for the new grid.
- a classifier (`ViTAccelForImageClassification`): the encoder with a new head, and only when asked for its classes
  (`num_labels=`, `id2label=` or `config=`): an MAE checkpoint has no classifier to keep. Unless `pooling` is given,
  it fine-tunes as MAE does: the mean of the patch tokens behind a new `fc_norm`, the encoder's final LayerNorm
  dropped.
- the bare `ViTAccelModel`: the encoder, its final LayerNorm kept.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import ViTMAEConfig

from ..configuration_vit_accel import ViTAccelConfig, ViTAccelMAEConfig
from ..errors import UserError
from ..modeling_vit_accel import (
    _ON_DISK_VIT_NAMES,
    ViTAccelModel,
    sincos_position_embeddings,
)
from . import policy, timm_state_dict
from .files import read_json, read_tensors
from .source_weights import POS_KEY, Checkpoint, CheckpointError

DECODER_PRED = "decoder.decoder_pred.weight"
DECODER_POS = "decoder.decoder_pos_embed"
_META_DECODER = {
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": DECODER_POS,
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": DECODER_PRED,
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_ON_DISK = [(re.compile(pattern), target) for pattern, target in _ON_DISK_VIT_NAMES]
# What shapes cannot tell, for a source that does not say: MAE's settings.
_META_FIELDS = {"layer_norm_eps": 1e-6, "hidden_act": "gelu"}
_TRANSFORMERS_FIELDS = (
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "initializer_range",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "decoder_num_attention_heads",
    "mask_ratio",
    "norm_pix_loss",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def detect(names: Collection[str], config: Mapping[str, Any] | None = None) -> bool:
    """Whether a directory's `config.json` is a transformers `ViTMAEForPreTraining`'s or one of our MAE models', or
    these tensor names hold an MAE decoder (Meta's names or transformers')."""
    if config is not None:
        if config.get("model_type") == "vit_mae":  # `ViTMAEModel` is the encoder alone: a family of ViT's
            return "ViTMAEForPreTraining" in (config.get("architectures") or ())
        return config.get("model_type") == ViTAccelMAEConfig.model_type
    keys = set(names)
    return DECODER_PRED in keys or ("decoder_pred.weight" in keys and "blocks.0.attn.qkv.weight" in keys)


def read(path: str | os.PathLike, progress: Any = None, lazy: bool = False) -> Checkpoint:
    """An MAE checkpoint (a directory of transformers' or ours, or a tensor file) as a `Checkpoint` under our names."""

    path = Path(path)
    if not path.is_dir():
        tensors = read_tensors(path)
        if "decoder_pred.weight" in tensors:
            return from_meta(tensors, str(path))
        return to_checkpoint(tensors, {}, str(path))
    weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: an MAE directory without {' or '.join(WEIGHT_FILES)}.")
    return to_checkpoint(read_tensors(weights), read_json(path / "config.json"), str(path))


def to_checkpoint(tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> Checkpoint:
    """transformers' ViTMAE names (on disk or in memory; ours are the same) as ours, with the config's fields."""
    state_dict = {}
    for key, value in tensors.items():
        for pattern, target in _ON_DISK:
            key = pattern.sub(target, key)
        state_dict[key] = value
    if config.get("model_type") == "vit_mae":
        full = ViTMAEConfig.from_dict(dict(config)).to_dict()  # its defaults for the fields save_pretrained leaves out
        fields = {key: full[key] for key in _TRANSFORMERS_FIELDS if key in full}
        fields["num_attention_heads"] = full["num_attention_heads"]
    else:
        own = ViTAccelMAEConfig.from_dict(dict(config)).to_dict() if config else {}
        # The model's fields, not transformers' bookkeeping.
        declared = set(ViTAccelConfig.__annotations__) | set(ViTAccelMAEConfig.__annotations__)
        fields = {key: value for key, value in own.items() if key in declared}
    heads = fields.pop("num_attention_heads", None)
    return Checkpoint(state_dict=state_dict, source=source, format="mae", num_attention_heads=heads, config=fields)


def from_meta(tensors: Mapping[str, torch.Tensor], source: str) -> Checkpoint:
    """Meta's original MAE state dict (timm's encoder names, `decoder_*` around it) under our names."""
    encoder, decoder = {}, {}
    for key, value in tensors.items():
        if key in _META_DECODER:
            decoder[_META_DECODER[key]] = value
        elif key.startswith("decoder_blocks."):
            renamed = timm_state_dict.rename_block(key[len("decoder_") :], value, source, "decoder.decoder_layers.")
            if renamed is None:
                raise CheckpointError(f"{source}: {key!r} is not part of MAE's decoder.")
            decoder.update(renamed)
        else:
            encoder[key] = value
    checkpoint = timm_state_dict.to_checkpoint(encoder, source)
    checkpoint.state_dict.update(decoder)
    checkpoint.format = "mae"
    checkpoint.config = dict(_META_FIELDS)
    return checkpoint


def has_decoder(checkpoint: Checkpoint) -> bool:
    return DECODER_PRED in checkpoint.state_dict


def not_mae(source: str) -> UserError:
    return UserError(
        f"{source}: not an MAE pre-training checkpoint (it has no decoder): ViTAccelForPreTraining.from_pretrained "
        "continues pre-training from a ViTAccelForPreTraining or transformers ViTMAE directory or Meta's MAE .pth; "
        "to pre-train from scratch, build ViTAccelForPreTraining(config)."
    )


def _decoder_fields(checkpoint: Checkpoint, given: Collection[str] = ()) -> dict[str, Any]:
    """The decoder's sizes from its shapes; its heads, which the shapes do not tell, from the checkpoint's config or
    the caller (`given`), else the checkpoint is refused naming the field (as the encoder's heads)."""
    if "decoder_num_attention_heads" not in checkpoint.config and "decoder_num_attention_heads" not in given:
        raise CheckpointError(
            f"{checkpoint.source}: an MAE state dict that does not record decoder_num_attention_heads (the shapes do "
            "not tell; MAE's released decoders have 16): pass decoder_num_attention_heads=."
        )
    sd = checkpoint.state_dict
    width = int(sd["decoder.decoder_embed.weight"].shape[0])
    layers = {int(key.split(".")[2]) for key in sd if key.startswith("decoder.decoder_layers.")}
    if layers != set(range(len(layers))):
        raise CheckpointError(f"{checkpoint.source}: decoder blocks are not numbered 0..N-1: found {sorted(layers)}.")
    return {
        "decoder_hidden_size": width,
        "decoder_num_hidden_layers": len(layers),
        "decoder_intermediate_size": int(sd["decoder.decoder_layers.0.mlp.fc1.weight"].shape[0]),
    }


def plan_pretraining(
    cls: type, checkpoint: Checkpoint, *, config: ViTAccelConfig | None = None, **overrides: Any
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, list[str]]]:
    """`ViTAccelForPreTraining` built on meta from an MAE checkpoint, and its tensors made to fit (as `policy.plan`)."""
    if not has_decoder(checkpoint):
        raise not_mae(checkpoint.source)
    unused = sorted(key for key in overrides if key in ("variant", "head_init") and overrides[key] is not None)
    if unused:
        raise UserError(f"{checkpoint.source}: {unused[0]}= chooses a classifier's start; MAE pre-training has none.")
    for key in ("variant", "head_init", "resample_mode", "resample_antialias", "ignore_mismatched_sizes"):
        overrides.pop(key, None)
    if config is not None and not isinstance(config, ViTAccelMAEConfig):
        raise UserError(f"{checkpoint.source}: config= for MAE pre-training must be a ViTAccelMAEConfig.")
    if config is not None:
        fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
    else:
        fields = {
            **policy.infer_config_fields(checkpoint, given=set(overrides)),
            **_decoder_fields(checkpoint, given=set(overrides)),
            **checkpoint.config,
        }
        fields = {key: value for key, value in fields.items() if key not in policy.LABEL_FIELDS}
    fields.update(overrides)
    built = ViTAccelMAEConfig(**{key: value for key, value in fields.items() if key != "architectures"})
    try:
        with torch.device("meta"):
            model = cls(built)
    except ValueError as error:
        raise CheckpointError(f"{checkpoint.source}: {str(error).splitlines()[0]}") from error
    state_dict = dict(checkpoint.state_dict)
    if policy.source_grid(checkpoint) != tuple(built.grid_size):
        # Both tables are fixed functions of the grid: computed for the new one, not resampled.
        state_dict[POS_KEY] = sincos_position_embeddings(built.grid_size, built.hidden_size, built.num_prefix_positions)
        state_dict[DECODER_POS] = sincos_position_embeddings(
            built.grid_size, built.decoder_hidden_size, built.num_prefix_tokens
        )
    expected = policy.expected_shapes(model)
    policy.check_fit(state_dict, expected, built, checkpoint.source)
    return model, state_dict, {"new": [], "dropped": []}


def encoder_checkpoint(cls: type, checkpoint: Checkpoint, options: dict[str, Any]) -> Checkpoint:
    """The encoder of an MAE checkpoint, for a classifier or the bare model (`options`: the `from_pretrained`
    keywords, given `pooling="mean"` for a classifier unless they choose one): the decoder dropped, and for average
    pooling the final LayerNorm replaced by a new `fc_norm`, as MAE fine-tunes."""
    state_dict = {key: value for key, value in checkpoint.state_dict.items() if not key.startswith("decoder.")}
    # The decoder's and the loss's fields mean nothing to the encoder.
    fields = {
        key: value
        for key, value in checkpoint.config.items()
        if not key.startswith("decoder_") and key not in ("mask_ratio", "norm_pix_loss")
    }
    if not issubclass(cls, ViTAccelModel):
        if not any(options.get(key) is not None for key in ("num_labels", "id2label", "label2id", "config")):
            raise UserError(
                f"{checkpoint.source}: an MAE pre-training checkpoint has no classifier; pass num_labels= (the classes "
                "of the new head) to fine-tune its encoder."
            )
        config = options.get("config")
        pooling = options.setdefault("pooling", config.pooling if config is not None else "mean")
        fields.pop("pooling", None)
        if pooling == "mean":
            width = state_dict.pop("vit.layernorm.weight").shape[0]
            state_dict.pop("vit.layernorm.bias")
            state_dict["vit.fc_norm.weight"] = torch.ones(width)
            state_dict["vit.fc_norm.bias"] = torch.zeros(width)
    return dataclasses.replace(checkpoint, state_dict=state_dict, config=fields)


__all__ = ["detect", "encoder_checkpoint", "from_meta", "not_mae", "plan_pretraining", "read"]

"""ViTAccel: Google's Vision Transformer as a `transformers` PreTrainedModel, its later families as options, and
masked-autoencoder pre-training (`ViTAccelForPreTraining`).

This file imports only `torch` and `transformers` (plus its configuration) so that it can travel to the Hugging Face
Hub as remote code. Parameter names are those of `transformers`' own ViT (v5 in-memory names), so a
`ViTForImageClassification` state dict loads into ours without any renaming, and the checkpoint conversion mapping
registered below reads the older on-disk ViT names through transformers' standard loading path.
"""

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vit_accel import (
    MLP_TYPES,
    POOLINGS,
    POSITION_EMBEDDING_TYPES,
    ViTAccelConfig,
    ViTAccelMAEConfig,
    _pair,
)

# transformers' ViT keeps its older parameter names on disk (what `save_pretrained` writes, what the Hub's ViT repos
# hold) and renames them in memory; ours are the in-memory names. Registered for our model type, these renamings let
# `from_pretrained` read the on-disk names and `save_pretrained` write them, as transformers does for its ViT. Remote
# code registers them too, since this file travels with saved models.
# The on-disk name of each renamed part of a block, and ours (the one table; the weights package reads it too).
LEGACY_VIT_BLOCK_NAMES = {
    "attention.attention.query": "attention.q_proj",
    "attention.attention.key": "attention.k_proj",
    "attention.attention.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_ON_DISK_VIT_NAMES = (
    (r"encoder\.layer\.", "layers."),
    *(
        # `output.dense` is also the end of `attention.output.dense`: only the MLP's stands alone.
        (("(?<!attention\\.)" if old == "output.dense" else "") + re.escape(old) + r"\.", f"{new}.")
        for old, new in LEGACY_VIT_BLOCK_NAMES.items()
    ),
)
for _model_type in (ViTAccelConfig.model_type, ViTAccelMAEConfig.model_type):
    register_checkpoint_conversion_mapping(
        _model_type,
        [WeightRenaming(source, target) for source, target in _ON_DISK_VIT_NAMES],
        overwrite=True,
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_POSITIVE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels")
_PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")


def field_problem(name: str, value) -> str | None:
    """Why the model cannot be built with `value` as its field `name`, as a phrase ("must be ..."); None when it can
    (or when `name` is checked only against other fields, as `check_config` does)."""
    if name in _POSITIVE_FIELDS and not _positive_int(value):
        return "must be a positive integer"
    if name in ("image_size", "patch_size"):
        try:
            pair = _pair(value)
        except (TypeError, ValueError):
            return "must be a positive integer or a pair of them"
        if not all(_positive_int(v) for v in pair):
            return "must be a positive integer or a pair of them"
    if name in _PROBABILITY_FIELDS and (
        not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0
    ):
        return "must be in [0, 1)"
    if name in ("representation_size", "pooler_output_size") and value is not None and not _positive_int(value):
        return "must be None or a positive integer"
    if name in ("hidden_act", "pooler_act") and isinstance(value, str) and value not in ACT2FN:
        return "is not an activation transformers knows (transformers.activations.ACT2FN)"
    return None


def _config_problems(config: ViTAccelConfig) -> list[str]:
    """What makes `config` unbuildable, one phrase per inconsistent field (empty when the model can be built)."""
    problems = []
    for name in (*_POSITIVE_FIELDS, *_PROBABILITY_FIELDS, "representation_size", "pooler_output_size"):
        if (problem := field_problem(name, getattr(config, name, None))) is not None:
            problems.append(f"{name} {problem}, got {getattr(config, name)!r}")
    heads = config.num_attention_heads
    if _positive_int(config.hidden_size) and _positive_int(heads) and config.hidden_size % heads:
        problems.append(f"hidden_size ({config.hidden_size}) must be divisible by num_attention_heads ({heads})")
    image, patch = config.image_size, config.patch_size
    if field_problem("image_size", image) is not None or field_problem("patch_size", patch) is not None:
        try:
            _pair(image), _pair(patch)
            problems.append(f"image_size {image!r} and patch_size {patch!r} must be positive integers")
        except (TypeError, ValueError):
            problems.append(f"image_size {image!r} and patch_size {patch!r} must be ints or pairs")
    elif _pair(image)[0] % _pair(patch)[0] or _pair(image)[1] % _pair(patch)[1]:
        problems.append(f"image_size {image!r} must be a multiple of patch_size {patch!r}")
    representation, pooler = config.representation_size, getattr(config, "pooler_output_size", None)
    if representation is not None and pooler is not None and representation != pooler:
        problems.append(
            f"representation_size ({representation}) and pooler_output_size ({pooler}) both set the pooler's width "
            "and differ"
        )
    problems += _family_problems(config)
    for name in ("hidden_act", "pooler_act"):
        value = getattr(config, name, None)
        if field_problem(name, value) is not None:
            problems.append(f"{name} {value!r} is not an activation transformers knows (transformers.activations)")
    return problems


def _family_problems(config: ViTAccelConfig) -> list[str]:
    """The fields of the later ViT families (CLS, registers, LayerScale, MLP kind, pooling) and how they combine."""
    problems = []
    registers = getattr(config, "num_register_tokens", 0)
    if not isinstance(registers, int) or isinstance(registers, bool) or registers < 0:
        problems.append(f"num_register_tokens must be a non-negative integer, got {registers!r}")
    scale = getattr(config, "layer_scale_init_value", None)
    if scale is not None and (not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0):
        problems.append(f"layer_scale_init_value must be None (no LayerScale) or a positive number, got {scale!r}")
    mlp_type = getattr(config, "mlp_type", "mlp")
    if mlp_type not in MLP_TYPES:
        problems.append(f"mlp_type must be one of {', '.join(MLP_TYPES)}, got {mlp_type!r}")
    pooling = getattr(config, "pooling", "cls")
    if pooling not in POOLINGS:
        problems.append(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling in ("cls", "cls_mean") and not getattr(config, "use_cls_token", True):
        problems.append(f"pooling={pooling!r} reads the CLS token, but use_cls_token is False")
    positions = getattr(config, "position_embedding_type", "learned")
    if positions not in POSITION_EMBEDDING_TYPES:
        problems.append(
            f"position_embedding_type must be one of {', '.join(POSITION_EMBEDDING_TYPES)}, got {positions!r}"
        )
    elif positions == "rope":
        theta = getattr(config, "rope_theta", 100.0)
        if not isinstance(theta, (int, float)) or isinstance(theta, bool) or theta <= 0:
            problems.append(f"rope_theta must be a positive number, got {theta!r}")
        heads, hidden = config.num_attention_heads, config.hidden_size
        whole = isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads == 0
        if whole and (hidden // heads) % 4:
            problems.append(
                f"position_embedding_type='rope' splits each head's channels in four (two axes, sine and cosine): "
                f"head width {hidden // heads} (hidden_size / num_attention_heads) must be a multiple of 4"
            )
    if pooling != "cls" and config.representation_size is not None:
        problems.append(
            f"representation_size (Google's pre_logits on the CLS token) needs pooling='cls', not {pooling!r}"
        )
    return problems


def check_config(config: ViTAccelConfig) -> None:
    """Raise a `ValueError` naming every field of `config` that the model cannot be built with.

    The configuration itself accepts any values (as transformers' configurations do); the model checks them here.
    """
    problems = _config_problems(config)
    if problems:
        raise ValueError(f"Cannot build a ViTAccel model from this {type(config).__name__}: {'; '.join(problems)}.")


def _converted(cls, source, *model_args, **kwargs):
    """The model vit_accel's converting loader builds from `source`, or None (vit_accel not installed, or a source
    that transformers' own `from_pretrained` reads)."""
    if not any(klass.__module__.startswith("vit_accel.") for klass in cls.__mro__):
        # The copy of this file that travels with a saved model (transformers_modules.*): transformers' path alone,
        # without importing vit_accel even where it is installed.
        return None
    try:
        # Found when called, never imported with this file: it ships to the Hub as remote code, without vit_accel.
        loading = importlib.import_module("vit_accel.weights.loading")
    except ModuleNotFoundError as error:
        if error.name not in ("vit_accel", "vit_accel.weights", "vit_accel.weights.loading"):
            raise  # vit_accel is there but broken (a dependency missing): say so, never load another way silently
        return None
    return loading.from_pretrained(cls, source, *model_args, **kwargs)


def pooler_width(config: ViTAccelConfig) -> int:
    """Width of the pooler: `representation_size` (Google's `pre_logits`) if set, else `pooler_output_size`, else
    `hidden_size`."""
    return config.representation_size or getattr(config, "pooler_output_size", None) or config.hidden_size


def resample_position_embeddings(
    position_embeddings: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Resample learned position embeddings `(1, prefix + H*W, D)` to a new `(height, width)` grid.

    The prefix (CLS) embeddings are kept as they are; the grid is interpolated in float32 and cast back. Google and timm
    use `mode="bilinear"` for npz checkpoints; timm (other sources) and transformers use `"bicubic"`.
    """
    prefix, grid = position_embeddings[:, :num_prefix_tokens], position_embeddings[:, num_prefix_tokens:]
    num_positions, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(num_positions)
        if side * side != num_positions:
            raise ValueError(
                f"Cannot infer the grid of {num_positions} position embeddings; pass old_grid=(height, width)."
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_positions:
        raise ValueError(f"old_grid {tuple(old_grid)} does not hold the {num_positions} position embeddings given.")
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if tuple(old_grid) == new_grid:
        return position_embeddings
    grid = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode=mode, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(position_embeddings.dtype)
    return torch.cat((prefix, grid), dim=1)


class ViTAccelPatchEmbeddings(nn.Module):
    """Turns `pixel_values (B, C, H, W)` into patch tokens `(B, H/p * W/p, D)` with a stride-p convolution."""

    def __init__(self, config: ViTAccelConfig):
        super().__init__()
        self.num_channels = config.num_channels
        self.patch_size = _pair(config.patch_size)
        self.projection = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            bias=getattr(config, "patch_embedding_bias", True),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTAccelEmbeddings(nn.Module):
    """Prefix tokens (CLS, registers) + patch embeddings + learned position embeddings.

    The position table covers the prefix tokens and the patch grid (Google's ViT), or the grid alone when
    `prefix_position_embeddings` is False: then positions are added to the patches before the prefix is prepended.
    With `position_embedding_type="rope"` there is no table (the blocks rotate queries and keys instead), and any
    input size is taken.
    """

    def __init__(self, config: ViTAccelConfig):
        super().__init__()
        self.image_size = _pair(config.image_size)
        self.grid_size = config.grid_size
        hidden = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden)) if config.use_cls_token else None
        registers = config.num_register_tokens
        self.register_tokens = nn.Parameter(torch.zeros(1, registers, hidden)) if registers else None
        self.patch_embeddings = ViTAccelPatchEmbeddings(config)
        self.num_prefix_positions = config.num_prefix_positions
        self.learned_positions = getattr(config, "position_embedding_type", "learned") == "learned"
        num_positions = self.grid_size[0] * self.grid_size[1] + self.num_prefix_positions
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, num_positions, hidden)) if self.learned_positions else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an input of `height` x `width` pixels (bicubic, as transformers does)."""
        patch = self.patch_embeddings.patch_size
        new_grid = (height // patch[0], width // patch[1])
        return resample_position_embeddings(
            self.position_embeddings, new_grid, old_grid=self.grid_size, num_prefix_tokens=self.num_prefix_positions
        )

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        position_embeddings = self.position_table(pixel_values, interpolate_pos_encoding)
        batch_size = pixel_values.shape[0]
        embeddings = self.patch_embeddings(pixel_values)
        prefix = [
            token.expand(batch_size, -1, -1) for token in (self.cls_token, self.register_tokens) if token is not None
        ]
        if position_embeddings is None:
            embeddings = torch.cat((*prefix, embeddings), dim=1) if prefix else embeddings
        elif not prefix:
            embeddings = embeddings + position_embeddings
        elif self.num_prefix_positions:
            embeddings = torch.cat((*prefix, embeddings), dim=1) + position_embeddings
        else:
            embeddings = torch.cat((*prefix, embeddings + position_embeddings), dim=1)
        return self.dropout(embeddings)

    def position_table(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor | None:
        """The position embeddings for `pixel_values`, after checking its shape: the table itself, resampled to the
        input's size with `interpolate_pos_encoding`, or None with RoPE (no table)."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be a 4-D tensor (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}."
            )
        _, num_channels, height, width = pixel_values.shape
        if num_channels != self.patch_embeddings.num_channels:
            raise ValueError(
                f"pixel_values has {num_channels} channels but the model expects "
                f"config.num_channels={self.patch_embeddings.num_channels}."
            )
        patch = self.patch_embeddings.patch_size
        if not self.learned_positions:
            if height < patch[0] or width < patch[1]:
                raise ValueError(f"Input image size ({height}x{width}) is smaller than one patch {patch}.")
            return None
        if interpolate_pos_encoding:
            if height < patch[0] or width < patch[1]:
                raise ValueError(f"Input image size ({height}x{width}) is smaller than one patch {patch}.")
            return self.interpolate_pos_encoding(height, width)
        if (height, width) != self.image_size:
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match config.image_size "
                f"({self.image_size[0]}x{self.image_size[1]}). Resize the input, or pass "
                "interpolate_pos_encoding=True to resample the position embeddings on the fly."
            )
        return self.position_embeddings


def rotary_embeddings(
    config: ViTAccelConfig, rows: int, columns: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3's 2-D RoPE for a `rows` x `columns` patch grid: `(cos, sin)`, each `(rows * columns, head_dim)`.

    Patch centres are `(i + 0.5) / rows` and `(j + 0.5) / columns`, mapped to [-1, 1]; each axis gets `head_dim / 4`
    frequencies `rope_theta ** (-4 k / head_dim)`, the angles `2 pi * coordinate * frequency` laid out as (row
    angles, column angles) twice, for the half-split rotation of `apply_rotary`. Computed in float32, then cast.
    """
    head_dim = config.hidden_size // config.num_attention_heads
    exponents = torch.arange(head_dim // 4, device=device, dtype=torch.float32) * (4.0 / head_dim)
    inv_freq = float(config.rope_theta) ** -exponents
    coords_h = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows
    coords_w = (torch.arange(columns, device=device, dtype=torch.float32) + 0.5) / columns
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0
    angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1).tile(2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], num_prefix: int) -> torch.Tensor:
    """Rotate the patch tokens of `states (batch, heads, tokens, head_dim)` by `rotary`'s angles (half-split: the
    first half of the channels pairs with the second); the `num_prefix` tokens before them are left as they are."""
    cos, sin = rotary
    prefix, patches = states[:, :, :num_prefix], states[:, :, num_prefix:]
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((prefix, rotated), dim=2)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out: softmax(q k^T * scaling + mask) v, returning the output `(batch, queries, heads, dim)`
    and the attention map `(batch, heads, queries, keys)`. The fallback of `ALL_ATTENTION_FUNCTIONS` and the only
    implementation that materialises the map."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask  # additive, as transformers' eager masks are
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(F.dropout(weights, p=dropout, training=module.training), value)
    return output.transpose(1, 2).contiguous(), weights


class ViTAccelAttention(nn.Module):
    """Multi-head self-attention dispatched through transformers' `ALL_ATTENTION_FUNCTIONS` on
    `config._attn_implementation` (`"eager"`, `"sdpa"`, `"flex_attention"`, `"flash_attention_2"`/`"_3"` or a
    registered kernel), with `eager_attention_forward` as the fallback.

    When attention maps are asked for (`output_attentions=True`), that call runs the eager function whatever the
    backend, since only it materialises the maps. With `cls_only=True` only the first (CLS) token queries: the output
    is `(batch, 1, hidden)`, keys and values still come from every token.
    """

    def __init__(self, config: ViTAccelConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.num_prefix_tokens = config.num_prefix_tokens

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cls_only: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size = hidden_states.shape[0]
        shape = (batch_size, -1, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states[:, :1] if cls_only else hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if rotary is not None:
            # Before the attention function, so that every backend sees rotated queries and keys. The CLS-only
            # query is a prefix token, which is never rotated.
            if not cls_only:
                query = apply_rotary(query, rotary, self.num_prefix_tokens)
            key = apply_rotary(key, rotary, self.num_prefix_tokens)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if kwargs.get("output_attentions"):
            attention_interface = eager_attention_forward
        context, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        context = context.reshape(batch_size, query.shape[2], -1).contiguous()
        return self.o_proj(context), weights


def _additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A `(batch, tokens)` mask of 1 (attend) / 0 (masked) as the additive `(batch, 1, 1, tokens)` bias the eager
    function takes (a 4-D mask is taken as already prepared)."""
    if attention_mask is None or attention_mask.dim() == 4:
        return attention_mask
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class ViTAccelMLP(nn.Module):
    """Linear, `hidden_act`, Linear; or, with `gated`, SwiGLU in one packed Linear: `fc1` yields the gate and the
    value halves, `fc2` reads `hidden_act(gate) * value` (timm's `SwiGLUPacked`, transformers' `Dinov2SwiGLUFFN`)."""

    def __init__(self, config: ViTAccelConfig, gated: bool = False):
        super().__init__()
        self.gated = gated
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size * (2 if gated else 1))
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)
        if self.gated:
            gate, value = hidden_states.chunk(2, dim=-1)
            return self.fc2(self.activation_fn(gate) * value)
        return self.fc2(self.activation_fn(hidden_states))


class ViTAccelLayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (LayerScale), starting at `layer_scale_init_value`."""

    def __init__(self, config: ViTAccelConfig):
        super().__init__()
        self.init_value = float(config.layer_scale_init_value)
        self.lambda1 = nn.Parameter(torch.full((config.hidden_size,), self.init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.lambda1


class ViTAccelDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, rescaling the kept ones."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)
        mask = hidden_states.new_empty(shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class ViTAccelLayer(GradientCheckpointingLayer):
    """Pre-norm encoder block: x + Attn(LN(x)), then x + MLP(LN(x)).

    `cls_only=True` returns the CLS token's output alone `(batch, 1, hidden)`: attention queries, residuals and the MLP
    run on that token (keys and values on all), which is all a classifier on the CLS token reads from the last block.
    """

    def __init__(self, config: ViTAccelConfig, drop_path: float = 0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTAccelAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTAccelMLP(config, gated=config.mlp_type == "swiglu")
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = ViTAccelDropPath(drop_path)
        scaled = config.layer_scale_init_value is not None
        self.layer_scale1 = ViTAccelLayerScale(config) if scaled else nn.Identity()
        self.layer_scale2 = ViTAccelLayerScale(config) if scaled else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cls_only: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attention_output, _ = self.attention(
            self.layernorm_before(hidden_states), attention_mask, cls_only, rotary=rotary, **kwargs
        )
        if cls_only:
            hidden_states = hidden_states[:, :1]
        hidden_states = hidden_states + self.drop_path(self.layer_scale1(self.dropout(attention_output)))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(self.layer_scale2(self.dropout(mlp_output)))


class ViTAccelPooler(nn.Module):
    """Dense + `pooler_act` on the CLS token, as transformers' `ViTPooler`. With the default tanh and
    `representation_size` as its width, it is also Google's `pre_logits` layer."""

    def __init__(self, config: ViTAccelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, pooler_width(config))
        self.activation = ACT2FN[getattr(config, "pooler_act", "tanh")]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class ViTAccelAttentionPool(nn.Module):
    """Multi-head attention pooling by a learned query (`probe`) over all tokens, then a residual MLP behind a
    LayerNorm: SigLIP's "MAP" head (timm's `AttentionPoolLatent`, transformers'
    `SiglipMultiheadAttentionPoolingHead`). The attention goes through the configured backend, as the blocks'."""

    def __init__(self, config: ViTAccelConfig):
        super().__init__()
        hidden = config.hidden_size
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.probe = nn.Parameter(torch.zeros(1, 1, hidden))
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)
        self.layernorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.feed_forward = ViTAccelMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size = hidden_states.shape[0]
        shape = (batch_size, -1, self.num_heads, self.head_dim)
        query = self.q_proj(self.probe.expand(batch_size, -1, -1)).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, _ = attention_interface(self, query, key, value, None, dropout=0.0, scaling=self.scaling)
        pooled = self.o_proj(context.reshape(batch_size, 1, -1))
        pooled = pooled + self.feed_forward(self.layernorm(pooled))
        return pooled[:, 0]


class ViTAccelPreTrainedModel(PreTrainedModel):
    """Weight initialisation and what `transformers` needs: attention backends, output capture, checkpointing."""

    config_class = ViTAccelConfig
    config: ViTAccelConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTAccelEmbeddings", "ViTAccelLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # `output_hidden_states` / `output_attentions` are recorded by hooks on these modules (`capture_outputs`).
    _can_record_outputs = {"hidden_states": ViTAccelLayer, "attentions": ViTAccelAttention}

    def __init__(self, config: ViTAccelConfig, *inputs, **kwargs):
        check_config(config)
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, which reads a directory or Hub repo of ours.

        With the vit_accel package installed, vit_accel's own classes also take named variants, Google npz, timm and
        transformers checkpoints: `vit_accel.weights.loading.from_pretrained` converts them (and returns None for a
        source transformers reads itself). The copy of this file that travels with a saved model as remote code
        always takes transformers' path, vit_accel installed or not.
        """
        model = _converted(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        if model is not None:
            return model
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal weights (std `initializer_range`), zero biases, unit LayerNorms, as transformers' ViT."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ViTAccelEmbeddings):
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            for token in (module.cls_token, module.register_tokens):
                if token is not None:
                    init.trunc_normal_(token, mean=0.0, std=std)
        elif isinstance(module, ViTAccelLayerScale):
            init.constant_(module.lambda1, module.init_value)
        elif isinstance(module, ViTAccelAttentionPool):
            init.trunc_normal_(module.probe, mean=0.0, std=std)


class ViTAccelModel(ViTAccelPreTrainedModel):
    """The bare ViT encoder: returns the normalised token sequence and, with `add_pooling_layer`, the pooler's output
    (Dense + `pooler_act` on the CLS token, as transformers' `ViTModel`)."""

    def __init__(self, config: ViTAccelConfig, add_pooling_layer: bool = True):
        r"""
        add_pooling_layer (`bool`, defaults to `True`): build the pooler (`pooler.dense`) of `pooling="cls"`; its width
            is `representation_size`, else `pooler_output_size`, else `hidden_size`. The other poolings always give
            their features as `pooler_output`: `fc_norm` of the patch mean, CLS concatenated with the patch mean, or
            the attention pool's output.
        """
        super().__init__(config)
        self.embeddings = ViTAccelEmbeddings(config)
        eps = config.layer_norm_eps
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=eps) if config.pre_norm else None
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm
        self.layers = nn.ModuleList(ViTAccelLayer(config, drop_path=rate) for rate in rates)
        pooling = config.pooling
        # Average pooling normalises the pooled features (`fc_norm`) in place of the tokens, as MAE and timm do.
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=eps) if pooling != "mean" else None
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=eps) if pooling == "mean" else None
        self.attention_pool = ViTAccelAttentionPool(config) if pooling == "map" else None
        self.pooler = ViTAccelPooler(config) if add_pooling_layer and pooling == "cls" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        cls_token_only: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`): normalised images.
            interpolate_pos_encoding (`bool`): resample the position embeddings (bicubic) to the input size.
            attention_mask (`torch.Tensor`, *optional*): `(batch, tokens)` with 1 for tokens to attend to and 0 for
                masked ones (the CLS token first), or a prepared 4-D mask, as transformers' `ViTModel`.
            cls_token_only (`bool`): compute only what the CLS token's final state needs: the last block and the final
                LayerNorm run on that token, and `last_hidden_state` is `(batch, 1, hidden)`. Ignored when hidden
                states or attention maps are asked for. The classification model sets it.
            output_hidden_states (`bool` or `list[int]`): also return the embeddings and each block's output (all, or
                those at the given indices).
            output_attentions (`bool`): also return each block's attention map `(batch, heads, tokens, tokens)`,
                computed by the eager function for that call whatever the attention backend.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        # What `capture_outputs` records: the call's flags, else the config's.
        output_attentions = kwargs.get("output_attentions", self.config.output_attentions)
        output_hidden_states = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        kwargs["output_attentions"] = bool(output_attentions)
        # Recorded outputs need every token of every block; a prebuilt flex BlockMask cannot be cut to the CLS query.
        cls_token_only = cls_token_only and not (output_attentions or output_hidden_states)
        cls_token_only = cls_token_only and (attention_mask is None or isinstance(attention_mask, torch.Tensor))
        # Only a head that reads the CLS token alone can skip the other tokens in the last block.
        cls_token_only = cls_token_only and self.config.pooling == "cls"

        # Inputs arrive as float32 from most pipelines; the weights decide the compute dtype (bf16 under DeepSpeed).
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        rotary = None
        if getattr(self.config, "position_embedding_type", "learned") == "rope":
            patch = self.embeddings.patch_embeddings.patch_size
            rows, columns = pixel_values.shape[-2] // patch[0], pixel_values.shape[-1] // patch[1]
            rotary = rotary_embeddings(self.config, rows, columns, hidden_states.device, hidden_states.dtype)
        if self.pre_layernorm is not None:
            hidden_states = self.pre_layernorm(hidden_states)
        if attention_mask is None:
            # No padding: every backend attends to all tokens without a mask (flex would build an all-true BlockMask).
            mask = None
        elif output_attentions and self.config._attn_implementation != "eager":
            # The maps come from the eager function this call, which takes an additive mask whatever the backend.
            mask = _additive_mask(attention_mask, hidden_states.dtype)
        else:
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
            )
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if cls_token_only and index == last:
                hidden_states = layer(
                    hidden_states, self._cls_query_mask(hidden_states, attention_mask), True, rotary=rotary, **kwargs
                )
            else:
                hidden_states = layer(hidden_states, mask, rotary=rotary, **kwargs)
        sequence_output = self.layernorm(hidden_states) if self.layernorm is not None else hidden_states
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=self._pool(sequence_output))

    def _pool(self, sequence_output: torch.Tensor) -> torch.Tensor | None:
        """The features of `config.pooling` (None for `"cls"` without a pooler: the CLS token itself is read)."""
        pooling = self.config.pooling
        if pooling == "cls":
            return self.pooler(sequence_output) if self.pooler is not None else None
        if pooling == "map":
            return self.attention_pool(sequence_output)
        patches = sequence_output[:, self.config.num_prefix_tokens :].mean(dim=1)
        if pooling == "mean":
            return self.fc_norm(patches)
        return torch.cat((sequence_output[:, 0], patches), dim=-1)  # "cls_mean"

    def _cls_query_mask(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The attention mask of a block whose only query is the CLS token, for the configured backend."""
        if attention_mask is None:
            return None
        if attention_mask.dim() == 4:
            return attention_mask[:, :, :1]
        return create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states[:, :1],
            attention_mask=attention_mask,
            encoder_hidden_states=hidden_states,
        )


class ViTAccelForImageClassification(ViTAccelPreTrainedModel):
    """ViT with a linear classifier on the features `config.pooling` names: the CLS token (behind `pre_logits` when
    `representation_size` is set), the normalised patch mean, CLS and patch mean side by side, or the attention pool."""

    def __init__(self, config: ViTAccelConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        # Google's `pre_logits` is the pooler: kept (as `vit.pooler.dense`) only when `representation_size` asks for
        # it, so the classifier reads the pooled output in that case and the CLS token otherwise.
        self.vit = ViTAccelModel(config, add_pooling_layer=config.representation_size is not None)
        features = config.representation_size or config.hidden_size * (2 if config.pooling == "cls_mean" else 1)
        self.classifier = nn.Linear(features, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @staticmethod
    def pooled_features(outputs: BaseModelOutputWithPooling) -> torch.Tensor:
        """What the classifier reads from the encoder's outputs: the pooled output, or the CLS token's final state
        for `pooling="cls"` without `pre_logits`."""
        return outputs.pooler_output if outputs.pooler_output is not None else outputs.last_hidden_state[:, 0]

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        Args:
            labels (`torch.Tensor`, *optional*): class indices `(batch,)` for single-label classification, a float
                multi-hot `(batch, num_labels)` for multi-label, or float targets for regression (`num_labels == 1`).
                The kind follows `config.problem_type`, inferred as transformers does when unset.
        """
        # A classifier that reads the CLS token alone lets the last block run on that token only (the model skips it
        # when hidden states or attention maps are asked for, or for another pooling): the same logits for about
        # 1/depth less work and memory.
        outputs: BaseModelOutputWithPooling = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            cls_token_only=True,
            **kwargs,
        )
        logits = self.classifier(self.pooled_features(outputs))
        loss = None
        if labels is not None:
            # transformers' loss for the problem type, computed in float32 whatever the compute dtype (bf16 logits
            # under DeepSpeed); integer labels stay integers, as they decide single-label classification.
            targets = labels.float() if labels.is_floating_point() else labels
            loss = self.loss_function(targets, logits.float(), self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# ---------------------------------------------------------------------------------------------------------------------
# Masked-autoencoder pre-training (He et al., "Masked Autoencoders Are Scalable Vision Learners"). Parameter names are
# those of transformers' `ViTMAEForPreTraining` in memory (`vit.*`, `decoder.decoder_layers.*`), and the renamings
# registered above turn `decoder.decoder_layers.` into its on-disk `decoder.decoder_encoder.layer.` as well, so the two
# models' state dicts and directories are interchangeable.


def _pretraining_problems(config: ViTAccelMAEConfig) -> list[str]:
    """What makes `config` unusable for MAE pre-training, one phrase per field at fault."""
    problems = []

    def positive_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    names = (
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
    )
    for name in names:
        if not positive_int(getattr(config, name)):
            problems.append(f"{name} must be a positive integer, got {getattr(config, name)!r}")
    width, heads = config.decoder_hidden_size, config.decoder_num_attention_heads
    if positive_int(width) and positive_int(heads) and width % heads:
        problems.append(f"decoder_hidden_size ({width}) must be divisible by decoder_num_attention_heads ({heads})")
    # The 2-D sin-cos positions give each axis a sine and a cosine half of half the width.
    for name in ("hidden_size", "decoder_hidden_size"):
        value = getattr(config, name)
        if positive_int(value) and value % 4:
            problems.append(f"{name} ({value}) must be a multiple of 4 for the fixed 2-D sin-cos positions")
    ratio = config.mask_ratio
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0:
        problems.append(f"mask_ratio must be in [0, 1) (0 only for features: no patch is reconstructed), got {ratio!r}")
    if not isinstance(config.norm_pix_loss, bool):
        problems.append(f"norm_pix_loss must be True or False, got {config.norm_pix_loss!r}")
    if getattr(config, "position_embedding_type", "learned") != "learned":
        problems.append(
            f"position_embedding_type={config.position_embedding_type!r}: MAE's encoder adds fixed sin-cos positions "
            "to the patches before masking, which needs position_embedding_type='learned' (the table)"
        )
    if config.pooling != "cls":
        problems.append(
            f"pooling={config.pooling!r}: MAE's encoder ends in its final LayerNorm, which the decoder reads; pooling "
            "chooses a classifier's features (pass it when fine-tuning)"
        )
    return problems


def check_pretraining_config(config: ViTAccelMAEConfig) -> None:
    """Raise a `ValueError` naming every field of `config` that `ViTAccelForPreTraining` cannot be built with."""
    # By its fields, not its class: remote code loads the configuration module a second time, as another class.
    if getattr(config, "model_type", None) != ViTAccelMAEConfig.model_type:
        raise ValueError(
            f"ViTAccelForPreTraining needs a ViTAccelMAEConfig (the decoder's and the loss's fields), got a "
            f"{type(config).__name__}."
        )
    problems = _config_problems(config) + _pretraining_problems(config)
    if problems:
        raise ValueError(f"Cannot build a ViTAccel MAE model from this {type(config).__name__}: {'; '.join(problems)}.")


def sincos_position_embeddings(
    grid: tuple[int, int], dim: int, num_prefix_tokens: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position table `(1, prefix + height * width, dim)`: zeros for the prefix (CLS) rows,
    then per patch in row-major order `[sin(col w), cos(col w), sin(row w), cos(row w)]` over `dim / 4` frequencies
    `w = 10000^(-k / (dim / 4))`, computed in float64 as MAE's numpy code does (columns first: the layout its
    released checkpoints hold)."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )
    col, row = cols.reshape(-1, 1) * omega, rows.reshape(-1, 1) * omega
    table = torch.cat((col.sin(), col.cos(), row.sin(), row.cos()), dim=1)
    table = torch.cat((torch.zeros(num_prefix_tokens, dim, dtype=torch.float64), table), dim=0)
    return table.unsqueeze(0).to(dtype)


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample masking: keep the `int(L * (1 - mask_ratio))` tokens of lowest `noise` (uniform if not given).

    Returns the kept tokens `(batch, kept, dim)` in ascending-noise order, the mask `(batch, L)` (1 = hidden from the
    encoder) and `ids_restore` `(batch, L)`, the index that puts the shuffled sequence back in patch order. With
    `mask_ratio=0` and no `noise` nothing moves: the tokens stay in patch order, so features are the same every call.
    """
    batch_size, length, dim = tokens.shape
    if mask_ratio == 0 and noise is None:
        order = torch.arange(length, device=tokens.device).expand(batch_size, -1)
        return tokens, tokens.new_zeros(batch_size, length), order
    if noise is None:
        noise = torch.rand(batch_size, length, device=tokens.device)
    elif tuple(noise.shape) != (batch_size, length):
        raise ValueError(f"noise must have shape (batch, patches) = {(batch_size, length)}, got {tuple(noise.shape)}.")
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise.to(tokens.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
    mask = tokens.new_ones(batch_size, length)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


class _DecoderConfig:
    """The encoder's configuration seen with the decoder's sizes: plain ViT blocks (no LayerScale, plain MLP) with
    the encoder's activation, LayerNorm epsilon, biases and dropout. A live view rather than a copy, so the attention
    backend chosen for the model (`config._attn_implementation`) reaches the decoder's blocks too."""

    layer_scale_init_value = None
    mlp_type = "mlp"

    def __init__(self, config: ViTAccelMAEConfig):
        self._config = config

    hidden_size = property(lambda self: self._config.decoder_hidden_size)
    num_hidden_layers = property(lambda self: self._config.decoder_num_hidden_layers)
    num_attention_heads = property(lambda self: self._config.decoder_num_attention_heads)
    intermediate_size = property(lambda self: self._config.decoder_intermediate_size)

    def __getattr__(self, name: str):
        return getattr(self._config, name)


class ViTAccelMAEEncoder(ViTAccelModel):
    """Our ViT as MAE's encoder: fixed sin-cos positions (a buffer), MAE's initialisation, and `forward_visible`, which
    runs the blocks on the visible patches only. Its parameters are a `ViTAccelModel`'s, so the trained encoder loads
    as any of our models."""

    def __init__(self, config: ViTAccelConfig):
        super().__init__(config, add_pooling_layer=False)
        # Fixed positions are a (saved) buffer, not a frozen parameter: transformers' loading re-creates parameters
        # with requires_grad=True, which would train them from the first resumed or continued run on.
        embeddings = self.embeddings
        table = embeddings.position_embeddings.detach()
        del embeddings.position_embeddings
        embeddings.register_buffer("position_embeddings", table)

    def _init_weights(self, module: nn.Module) -> None:
        """MAE's initialisation: xavier-uniform Linear weights (the patch projection as a Linear), zero biases, unit
        LayerNorms, normal(0.02) tokens, sin-cos positions."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ViTAccelEmbeddings):
            width = module.position_embeddings.shape[-1]
            table = sincos_position_embeddings(module.grid_size, width, module.num_prefix_positions)
            init.copy_(module.position_embeddings, table)
            for token in (module.cls_token, module.register_tokens):
                if token is not None:
                    init.normal_(token, mean=0.0, std=std)
        else:
            super()._init_weights(module)

    def forward_visible(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder on the patches `random_masking` keeps (positions added before masking, prefix tokens after, as
        MAE): `(latent (batch, prefix + kept, hidden), mask, ids_restore)`."""
        embeddings = self.embeddings
        pixel_values = pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype)
        table = embeddings.position_table(pixel_values, interpolate_pos_encoding)
        prefix_positions = embeddings.num_prefix_positions
        patches = embeddings.patch_embeddings(pixel_values) + table[:, prefix_positions:]
        visible, mask, ids_restore = random_masking(patches, self.config.mask_ratio, noise)
        batch_size = pixel_values.shape[0]
        prefix = [
            t.expand(batch_size, -1, -1) for t in (embeddings.cls_token, embeddings.register_tokens) if t is not None
        ]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if prefix_positions:
                prefix = prefix + table[:, :prefix_positions]
            visible = torch.cat((prefix, visible), dim=1)
        hidden_states = embeddings.dropout(visible)
        if self.pre_layernorm is not None:
            hidden_states = self.pre_layernorm(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, **kwargs)
        return self.layernorm(hidden_states), mask, ids_restore


class ViTAccelMAEDecoder(nn.Module):
    """MAE's decoder: the latent projected to the decoder's width, mask tokens in place of the hidden patches, fixed
    sin-cos positions, plain ViT blocks, a LayerNorm and a per-patch pixel prediction."""

    def __init__(self, config: ViTAccelMAEConfig):
        super().__init__()
        view = _DecoderConfig(config)
        width = config.decoder_hidden_size
        self.num_prefix_tokens = config.num_prefix_tokens
        self.grid_size = config.grid_size
        patch = _pair(config.patch_size)
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        num_positions = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        # A buffer, for the reason the encoder's positions are one.
        self.register_buffer("decoder_pos_embed", torch.zeros(1, num_positions, width))
        self.decoder_layers = nn.ModuleList(ViTAccelLayer(view) for _ in range(config.decoder_num_hidden_layers))
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(width, patch[0] * patch[1] * config.num_channels)

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Per-patch predictions `(batch, patches, patch_h * patch_w * channels)` in patch order. `grid`: the patch
        grid of another input size, whose sin-cos positions are computed for it."""
        hidden_states = self.decoder_embed(latent)
        prefix = self.num_prefix_tokens
        visible = hidden_states[:, prefix:]
        batch_size, length = ids_restore.shape
        masked = self.mask_token.to(visible.dtype).expand(batch_size, length - visible.shape[1], -1)
        tokens = torch.cat((visible, masked), dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, tokens.shape[-1]))
        hidden_states = torch.cat((hidden_states[:, :prefix], tokens), dim=1)
        if grid is None or tuple(grid) == tuple(self.grid_size):
            positions = self.decoder_pos_embed
        else:
            positions = sincos_position_embeddings(grid, hidden_states.shape[-1], prefix).to(hidden_states)
        hidden_states = hidden_states + positions
        for layer in self.decoder_layers:
            hidden_states = layer(hidden_states)
        return self.decoder_pred(self.decoder_norm(hidden_states))[:, prefix:]


@dataclass
class ViTAccelForPreTrainingOutput(ModelOutput):
    r"""
    What `ViTAccelForPreTraining` returns (the fields of transformers' `ViTMAEForPreTrainingOutput`).

    loss (`torch.Tensor`, scalar): mean squared error of the reconstruction over the masked patches (None when
        `mask_ratio=0` hides none).
    logits (`torch.Tensor` of shape `(batch, patches, patch_h * patch_w * channels)`): the per-patch reconstruction,
        in the (normalised, with `norm_pix_loss`) pixel space of the loss; `unpatchify` turns it into images.
    mask (`torch.Tensor` of shape `(batch, patches)`): 1 for the patches hidden from the encoder, 0 for the visible.
    ids_restore (`torch.LongTensor` of shape `(batch, patches)`): the index that restores patch order.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class ViTAccelForPreTraining(ViTAccelPreTrainedModel):
    """Masked-autoencoder pre-training (MAE): our ViT encoder (`vit`, a `ViTAccelMAEEncoder`) on the visible patches,
    a light decoder (`decoder`) reconstructing all patches, and the (normalised-)pixel loss on the masked ones.

    Pass `noise` `(batch, patches)` for a reproducible mask (the patches of lowest noise stay visible), as with
    transformers' `ViTMAEForPreTraining`; with the same weights and noise the two give the same loss and logits.
    """

    config_class = ViTAccelMAEConfig
    config: ViTAccelMAEConfig
    _no_split_modules = ["ViTAccelEmbeddings", "ViTAccelLayer", "ViTAccelMAEDecoder"]

    def __init__(self, config: ViTAccelMAEConfig):
        check_pretraining_config(config)
        super().__init__(config)
        self.vit = ViTAccelMAEEncoder(config)
        self.decoder = ViTAccelMAEDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vit.embeddings.patch_embeddings

    def _init_weights(self, module: nn.Module) -> None:
        """MAE's initialisation for the decoder (the encoder has its own): xavier-uniform Linear weights, zero biases,
        unit LayerNorms, a normal(0.02) mask token and sin-cos positions."""
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ViTAccelMAEDecoder):
            init.normal_(module.mask_token, mean=0.0, std=self.config.initializer_range)
            width = module.decoder_pos_embed.shape[-1]
            init.copy_(
                module.decoder_pos_embed, sincos_position_embeddings(module.grid_size, width, module.num_prefix_tokens)
            )
        else:
            super()._init_weights(module)

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images `(batch, channels, H, W)` as patches `(batch, patches, patch_h * patch_w * channels)`, row-major,
        each patch's pixels in (row, column, channel) order, as MAE's and transformers' `patchify`."""
        patch_h, patch_w = _pair(self.config.patch_size)
        batch_size, channels, height, width = pixel_values.shape
        if height % patch_h or width % patch_w:
            raise ValueError(
                f"Input image size ({height}x{width}) is not a multiple of the patch size {(patch_h, patch_w)}."
            )
        patches = pixel_values.reshape(batch_size, channels, height // patch_h, patch_h, width // patch_w, patch_w)
        return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch_size, -1, patch_h * patch_w * channels)

    def unpatchify(self, patches: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The inverse of `patchify`: patches back to images of `image_size` (default the config's)."""
        patch_h, patch_w = _pair(self.config.patch_size)
        height, width = _pair(image_size if image_size is not None else self.config.image_size)
        rows, cols = height // patch_h, width // patch_w
        if rows * cols != patches.shape[1]:
            raise ValueError(
                f"{patches.shape[1]} patches do not tile a {height}x{width} image in {(patch_h, patch_w)} patches."
            )
        channels = patches.shape[-1] // (patch_h * patch_w)
        images = patches.reshape(patches.shape[0], rows, cols, patch_h, patch_w, channels)
        return images.permute(0, 5, 1, 3, 2, 4).reshape(patches.shape[0], channels, height, width)

    def reconstruction_target(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the logits are trained to be: the patches, each normalised by its own mean and (unbiased) variance
        with `norm_pix_loss`, in float32."""
        target = self.patchify(pixel_values.float())
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ViTAccelForPreTrainingOutput:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`): normalised images.
            noise (`torch.Tensor` of shape `(batch, patches)`, *optional*): decides the mask: the patches of lowest
                noise stay visible. Uniform random when not given.
            interpolate_pos_encoding (`bool`): resample the encoder's positions (bicubic) and compute the decoder's
                sin-cos positions for an input of another size.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        interpolate = bool(interpolate_pos_encoding)
        latent, mask, ids_restore = self.vit.forward_visible(pixel_values, noise, interpolate, **kwargs)
        patch = _pair(self.config.patch_size)
        grid = (pixel_values.shape[2] // patch[0], pixel_values.shape[3] // patch[1])
        logits = self.decoder(latent, ids_restore, grid)
        loss = None
        if self.config.mask_ratio > 0:  # then at least one patch per image is masked (the kept count rounds down)
            # In float32 whatever the compute dtype: the mean of many small squared errors.
            errors = ((logits.float() - self.reconstruction_target(pixel_values)) ** 2).mean(dim=-1)
            loss = (errors * mask.float()).sum() / mask.float().sum()
        return ViTAccelForPreTrainingOutput(loss=loss, logits=logits, mask=mask, ids_restore=ids_restore)


__all__ = [
    "ViTAccelForImageClassification",
    "ViTAccelForPreTraining",
    "ViTAccelForPreTrainingOutput",
    "ViTAccelModel",
    "ViTAccelPreTrainedModel",
    "apply_rotary",
    "eager_attention_forward",
    "random_masking",
    "resample_position_embeddings",
    "rotary_embeddings",
    "sincos_position_embeddings",
]

"""ViTAccel: Google's Vision Transformer as a `transformers` PreTrainedModel.

This file imports only `torch` and `transformers` (plus its configuration) so that it can travel to the Hugging Face
Hub as remote code. Parameter names are those of `transformers`' own ViT (v5 in-memory names), so a
`ViTForImageClassification` state dict loads into ours without any renaming, and the checkpoint conversion mapping
registered below reads the older on-disk ViT names through transformers' standard loading path.
"""

import math
from collections.abc import Callable

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
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vit_accel import MLP_TYPES, POOLINGS, POSITION_EMBEDDING_TYPES, ViTAccelConfig, _pair

# transformers' ViT keeps its older parameter names on disk (what `save_pretrained` writes, what the Hub's ViT repos
# hold) and renames them in memory; ours are the in-memory names. Registered for our model type, these renamings let
# `from_pretrained` read the on-disk names and `save_pretrained` write them, as transformers does for its ViT. Remote
# code registers them too, since this file travels with saved models.
_ON_DISK_VIT_NAMES = (
    (r"encoder\.layer\.", "layers."),
    (r"attention\.attention\.query\.", "attention.q_proj."),
    (r"attention\.attention\.key\.", "attention.k_proj."),
    (r"attention\.attention\.value\.", "attention.v_proj."),
    (r"attention\.output\.dense\.", "attention.o_proj."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"(?<!attention\.)output\.dense\.", "mlp.fc2."),
)
register_checkpoint_conversion_mapping(
    ViTAccelConfig.model_type,
    [WeightRenaming(source, target) for source, target in _ON_DISK_VIT_NAMES],
    overwrite=True,
)


def _config_problems(config: ViTAccelConfig) -> list[str]:
    """What makes `config` unbuildable, one phrase per inconsistent field (empty when the model can be built)."""
    problems = []

    def positive_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels"):
        if not positive_int(getattr(config, name)):
            problems.append(f"{name} must be a positive integer, got {getattr(config, name)!r}")
    heads = config.num_attention_heads
    if positive_int(config.hidden_size) and positive_int(heads) and config.hidden_size % heads:
        problems.append(f"hidden_size ({config.hidden_size}) must be divisible by num_attention_heads ({heads})")
    try:
        image, patch = _pair(config.image_size), _pair(config.patch_size)
    except (TypeError, ValueError):
        problems.append(f"image_size {config.image_size!r} and patch_size {config.patch_size!r} must be ints or pairs")
    else:
        if not all(positive_int(v) for v in (*image, *patch)):
            problems.append(
                f"image_size {config.image_size!r} and patch_size {config.patch_size!r} must be positive integers"
            )
        elif image[0] % patch[0] or image[1] % patch[1]:
            problems.append(f"image_size {config.image_size!r} must be a multiple of patch_size {config.patch_size!r}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            problems.append(f"{name} must be in [0, 1), got {value!r}")
    for name in ("representation_size", "pooler_output_size"):
        value = getattr(config, name, None)
        if value is not None and not positive_int(value):
            problems.append(f"{name} must be None or a positive integer, got {value!r}")
    representation, pooler = config.representation_size, getattr(config, "pooler_output_size", None)
    if representation is not None and pooler is not None and representation != pooler:
        problems.append(
            f"representation_size ({representation}) and pooler_output_size ({pooler}) both set the pooler's width "
            "and differ"
        )
    problems += _family_problems(config)
    for name in ("hidden_act", "pooler_act"):
        value = getattr(config, name, None)
        if isinstance(value, str) and value not in ACT2FN:
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
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be a 4-D tensor (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}."
            )
        batch_size, num_channels, height, width = pixel_values.shape
        if num_channels != self.patch_embeddings.num_channels:
            raise ValueError(
                f"pixel_values has {num_channels} channels but the model expects "
                f"config.num_channels={self.patch_embeddings.num_channels}."
            )
        patch = self.patch_embeddings.patch_size
        if not self.learned_positions:
            if height < patch[0] or width < patch[1]:
                raise ValueError(f"Input image size ({height}x{width}) is smaller than one patch {patch}.")
            position_embeddings = None
        elif interpolate_pos_encoding:
            if height < patch[0] or width < patch[1]:
                raise ValueError(f"Input image size ({height}x{width}) is smaller than one patch {patch}.")
            position_embeddings = self.interpolate_pos_encoding(height, width)
        else:
            if (height, width) != self.image_size:
                raise ValueError(
                    f"Input image size ({height}x{width}) doesn't match config.image_size "
                    f"({self.image_size[0]}x{self.image_size[1]}). Resize the input, or pass "
                    "interpolate_pos_encoding=True to resample the position embeddings on the fly."
                )
            position_embeddings = self.position_embeddings
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
    # Set by `vit_accel.weights` (a function `(cls, source, *args, **kwargs) -> model | None`) so that
    # `from_pretrained` also takes named variants, Google npz, timm and transformers checkpoints. Remote code on the
    # Hub has no vit_accel package: there the hook stays None and only the standard transformers path runs.
    _checkpoint_resolver = None

    def __init__(self, config: ViTAccelConfig, *inputs, **kwargs):
        check_config(config)
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Standard `PreTrainedModel.from_pretrained`, extended by `vit_accel.weights` when it is imported."""
        resolver = ViTAccelPreTrainedModel.__dict__.get("_checkpoint_resolver")
        if resolver is not None:
            model = resolver(cls, pretrained_model_name_or_path, *model_args, **kwargs)
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
        features = outputs.pooler_output if outputs.pooler_output is not None else outputs.last_hidden_state[:, 0]
        logits = self.classifier(features)
        loss = None
        if labels is not None:
            # transformers' loss for the problem type, computed in float32 whatever the compute dtype (bf16 logits
            # under DeepSpeed); integer labels stay integers, as they decide single-label classification.
            targets = labels.float() if labels.is_floating_point() else labels
            loss = self.loss_function(targets, logits.float(), self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "ViTAccelForImageClassification",
    "ViTAccelModel",
    "ViTAccelPreTrainedModel",
    "apply_rotary",
    "eager_attention_forward",
    "resample_position_embeddings",
    "rotary_embeddings",
]

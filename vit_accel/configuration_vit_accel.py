"""ViTAccel model configuration.

This file imports only `transformers` (and the standard library) so that it can travel to the Hugging Face Hub as
remote code next to `modeling_vit_accel.py`.
"""

from __future__ import annotations

import re

from transformers import PreTrainedConfig

# One table of sizes, in the spirit of big_vision's `decode_variant`: width, depth, heads, MLP width.
# Values from "An Image is Worth 16x16 Words" (Table 1) and "How to train your ViT" (Ti, S).
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}

# Named variants of the later families, `{family}-{size}-p{patch}-{resolution}`: the timm Hub repo their weights come
# from (timm's layout, which `vit_accel.weights` reads), the size, and the fields of that architecture (what timm's
# model function fixes: the converted weights give the same configuration).
_DINOV2 = {"patch_size": 14, "image_size": 518, "layer_scale_init_value": 1e-5}
_DINOV2_REG4 = {**_DINOV2, "num_register_tokens": 4, "prefix_position_embeddings": False}
_DINOV3 = {
    "patch_size": 16,
    "image_size": 256,
    "position_embedding_type": "rope",
    "num_register_tokens": 4,
    "layer_scale_init_value": 1e-5,
    "layer_norm_eps": 1e-5,
    "qkv_bias": False,
}
_SIGLIP = {"patch_size": 16, "use_cls_token": False, "pooling": "map"}
# OpenAI's CLIP weights were trained with QuickGELU (timm's `*_clip_quickgelu_*` read the same Hub files).
_CLIP = {"pre_norm": True, "patch_embedding_bias": False, "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu"}
FAMILY_VARIANTS: dict[str, tuple[str, str, dict]] = {
    "dinov2-small-p14-518": ("timm/vit_small_patch14_dinov2.lvd142m", "small", _DINOV2),
    "dinov2-base-p14-518": ("timm/vit_base_patch14_dinov2.lvd142m", "base", _DINOV2),
    "dinov2-large-p14-518": ("timm/vit_large_patch14_dinov2.lvd142m", "large", _DINOV2),
    "dinov2-reg4-small-p14-518": ("timm/vit_small_patch14_reg4_dinov2.lvd142m", "small", _DINOV2_REG4),
    "dinov2-reg4-base-p14-518": ("timm/vit_base_patch14_reg4_dinov2.lvd142m", "base", _DINOV2_REG4),
    "dinov2-reg4-large-p14-518": ("timm/vit_large_patch14_reg4_dinov2.lvd142m", "large", _DINOV2_REG4),
    "dinov3-small-p16-256": ("timm/vit_small_patch16_dinov3.lvd1689m", "small", _DINOV3),
    "dinov3-base-p16-256": ("timm/vit_base_patch16_dinov3.lvd1689m", "base", _DINOV3),
    "dinov3-large-p16-256": ("timm/vit_large_patch16_dinov3.lvd1689m", "large", _DINOV3),
    "siglip2-base-p16-224": ("timm/vit_base_patch16_siglip_224.v2_webli", "base", {**_SIGLIP, "image_size": 224}),
    "siglip2-base-p16-384": ("timm/vit_base_patch16_siglip_384.v2_webli", "base", {**_SIGLIP, "image_size": 384}),
    "clip-base-p16-224": ("timm/vit_base_patch16_clip_224.openai", "base", {**_CLIP, "patch_size": 16}),
    "clip-large-p14-224": ("timm/vit_large_patch14_clip_224.openai", "large", {**_CLIP, "patch_size": 14}),
    "deit3-base-p16-224": (
        "timm/deit3_base_patch16_224.fb_in22k_ft_in1k",
        "base",
        {"patch_size": 16, "layer_scale_init_value": 1e-6, "prefix_position_embeddings": False},
    ),
    "mae-base-p16-224": ("timm/vit_base_patch16_224.mae", "base", {"patch_size": 16}),
    "mae-large-p16-224": ("timm/vit_large_patch16_224.mae", "large", {"patch_size": 16}),
}

# Named variants `vit-{size}-p{patch}-{resolution}`: Google's released ViTs are base/large x p16/p32 x 224/384; then
# the families'.
VIT_VARIANTS: tuple[str, ...] = (
    *(
        f"vit-{size}-p{patch}-{res}"
        for size in ("tiny", "small", "base", "large")
        for patch in (16, 32)
        for res in (224, 384)
    ),
    "vit-base-p8-224",
    "vit-huge-p14-224",
    *FAMILY_VARIANTS,
)

_VARIANT_RE = re.compile(r"^vit-(?P<size>[a-z]+)-p(?P<patch>\d+)-(?P<res>\d+)$")


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


class ViTAccelConfig(PreTrainedConfig):
    r"""
    Configuration of a Vision Transformer as in Google's `vit_jax` ("An Image is Worth 16x16 Words"): convolutional
    patch embedding, learnable CLS token, learned position embeddings, pre-norm encoder blocks and a classifier on the
    CLS token, optionally behind a `pre_logits` layer (Dense + tanh) as in the ImageNet-21k checkpoints.

    Field names follow `transformers.ViTConfig` where it has them. The later ViTs (DeiT III, DINOv2, CLIP, SigLIP,
    MAE's fine-tuning) differ from Google's by a few options, each a field below with Google's setting as default:
    `use_cls_token`, `num_register_tokens`, `prefix_position_embeddings`, `patch_embedding_bias`, `pre_norm`,
    `layer_scale_init_value`, `mlp_type` (and `hidden_act`), `pooling` and `position_embedding_type` (with
    `rope_theta`). Masked-autoencoder pre-training adds the fields of `ViTAccelMAEConfig`.

    Args:
        hidden_size (`int`, defaults to 768): width of the encoder.
        num_hidden_layers (`int`, defaults to 12): number of encoder blocks.
        num_attention_heads (`int`, defaults to 12): attention heads; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 3072): width of the MLP.
        hidden_act (`str`, defaults to `"gelu"`): MLP activation. `"gelu"` is exact GELU (timm, transformers);
            `"gelu_pytorch_tanh"` is the tanh approximation that Google's JAX code uses.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after the embeddings, attention and MLP.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.0): stochastic depth; grows linearly from 0 to this value over depth.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal used to initialise weights.
        layer_norm_eps (`float`, defaults to 1e-6): LayerNorm epsilon (Flax's default, used by the checkpoints).
        image_size (`int` or `(height, width)`, defaults to 224): input resolution the position embeddings are for.
        patch_size (`int` or `(height, width)`, defaults to 16): patch (and convolution stride) size.
        num_channels (`int`, defaults to 3): input channels.
        qkv_bias (`bool`, defaults to `True`): bias on the query, key and value projections.
        representation_size (`int`, *optional*): width of the `pre_logits` layer (Dense + tanh) before the
            classifier, as in Google's ImageNet-21k checkpoints. `None` (the default, and the fine-tuning setting)
            means no such layer. `pre_logits` is the pooler, so this also sets the bare model's pooler width.
        pooler_output_size (`int`, *optional*): width of the bare model's pooler (Dense + `pooler_act` on the CLS
            token), as `transformers.ViTConfig`; `None` means `representation_size` if set, else `hidden_size`.
        pooler_act (`str`, defaults to `"tanh"`): activation of the pooler.
        use_cls_token (`bool`, defaults to `True`): prepend a learnable CLS token. `False` for SigLIP, whose classifier
            reads an attention pool (`pooling="map"`) instead.
        num_register_tokens (`int`, defaults to 0): learnable register tokens after the CLS token and before the
            patches ("Vision Transformers Need Registers"; DINOv2 with registers uses 4).
        prefix_position_embeddings (`bool`, defaults to `True`): whether the CLS and register tokens get learned
            position embeddings too (Google, CLIP, DINOv2). `False` adds positions to the patch tokens only, before
            the prefix tokens are prepended (timm's `no_embed_class`: DeiT III, DINOv2 with registers).
        patch_embedding_bias (`bool`, defaults to `True`): bias of the patch-embedding convolution (CLIP has none).
        pre_norm (`bool`, defaults to `False`): a LayerNorm on the embeddings before the first block (CLIP's
            `ln_pre`).
        layer_scale_init_value (`float`, *optional*): LayerScale ("Going deeper with Image Transformers"): each
            block's attention and MLP outputs are multiplied by a learned per-channel scale that starts at this value
            (DeiT III 1e-6, DINOv2 1e-5). `None` (the default): no LayerScale.
        mlp_type (`str`, defaults to `"mlp"`): `"mlp"` is Linear, `hidden_act`, Linear; `"swiglu"` is a gated MLP
            whose first Linear yields `2 * intermediate_size` features, the first half gated by `hidden_act` (use
            `"silu"`) times the second half (DINOv2 ViT-g). `hidden_act="quick_gelu"` gives OpenAI CLIP's MLP.
        pooling (`str`, defaults to `"cls"`): what the classifier reads. `"cls"`: the CLS token after the final
            LayerNorm (Google). `"mean"`: the mean of the patch tokens behind a LayerNorm of its own (`fc_norm`), with
            no final LayerNorm on the tokens (MAE's fine-tuning, timm's `global_pool="avg"`). `"cls_mean"`: the CLS
            token concatenated with the mean of the patch tokens, both after the final LayerNorm (DINOv2's linear
            head). `"map"`: multi-head attention pooling of all tokens by a learned query, followed by a LayerNorm
            and MLP (SigLIP's head).
        position_embedding_type (`str`, defaults to `"learned"`): how the patches know where they are. `"learned"`:
            a table of position embeddings added to the tokens (Google and the families above). `"rope"`: no table;
            2-D rotary embeddings on the patch tokens' queries and keys in every block, as DINOv3 does them (patch
            centres at `(i + 0.5) / rows` and `(j + 0.5) / columns` mapped to [-1, 1], a quarter of each head's
            channels per axis, half-split rotation; prefix tokens not rotated). The grid follows the input size, so
            any multiple of the patch size is taken.
        rope_theta (`float`, defaults to 100.0): RoPE's base period (DINOv3's `rope_theta`, timm's
            `rope_temperature`): the frequencies are `rope_theta ** (-4 k / head_dim)` for `k < head_dim / 4`.

    The configuration constructs whatever its values; the model checks them when it is built and raises a
    `ValueError` naming every inconsistent field (as transformers' models do).

    Example:

    ```python
    >>> from vit_accel import ViTAccelConfig
    >>> config = ViTAccelConfig.from_variant("vit-base-p16-384", num_labels=100)
    >>> config.image_size, config.hidden_size
    (384, 768)
    ```
    """

    model_type = "vit_accel"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-6
    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int | list[int] | tuple[int, int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    representation_size: int | None = None
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    use_cls_token: bool = True
    num_register_tokens: int = 0
    prefix_position_embeddings: bool = True
    patch_embedding_bias: bool = True
    pre_norm: bool = False
    layer_scale_init_value: float | None = None
    mlp_type: str = "mlp"
    pooling: str = "cls"
    position_embedding_type: str = "learned"
    rope_theta: float = 100.0

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the CLS token (if any) and the registers."""
        return int(bool(self.use_cls_token)) + int(self.num_register_tokens)

    @property
    def num_prefix_positions(self) -> int:
        """Prefix tokens that have a learned position embedding (the table's rows before the grid's)."""
        return self.num_prefix_tokens if self.prefix_position_embeddings else 0

    @property
    def grid_size(self) -> tuple[int, int]:
        """Number of patches along (height, width) at `image_size`."""
        image, patch = _pair(self.image_size), _pair(self.patch_size)
        return (image[0] // patch[0], image[1] // patch[1])

    @classmethod
    def from_variant(cls, name: str, **overrides) -> ViTAccelConfig:
        """Build the configuration of a named variant, e.g. `"vit-base-p16-224"`, with fields overridden by keyword.

        Raises:
            ValueError: if `name` is not one of `VIT_VARIANTS`; the message lists the valid names.
        """
        match = _VARIANT_RE.match(name) if name in VIT_VARIANTS else None
        if match is None and name not in FAMILY_VARIANTS:
            raise ValueError(f"Unknown ViT variant {name!r}. Valid names: {', '.join(VIT_VARIANTS)}.")
        if name in FAMILY_VARIANTS:
            _, size, family_fields = FAMILY_VARIANTS[name]
        else:
            size, family_fields = match["size"], {"patch_size": int(match["patch"]), "image_size": int(match["res"])}
        hidden, depth, heads, mlp = VIT_SIZES[size]
        fields = {
            "hidden_size": hidden,
            "num_hidden_layers": depth,
            "num_attention_heads": heads,
            "intermediate_size": mlp,
            "image_size": 224,
            **family_fields,
        }
        fields.update(overrides)
        return cls(**fields)


class ViTAccelMAEConfig(ViTAccelConfig):
    r"""
    Configuration of masked-autoencoder pre-training (`ViTAccelForPreTraining`; He et al., "Masked Autoencoders Are
    Scalable Vision Learners"): every `ViTAccelConfig` field for the encoder, and the decoder and loss below, with
    MAE's settings as defaults. A model type of its own (`vit_accel_mae`), so that a directory says by its
    `config.json` that it holds a decoder, and the classifiers' configurations carry none of these fields.

    Args:
        decoder_hidden_size (`int`, defaults to 512): width of the MAE decoder.
        decoder_num_hidden_layers (`int`, defaults to 8): number of decoder blocks.
        decoder_num_attention_heads (`int`, defaults to 16): decoder attention heads; must divide
            `decoder_hidden_size`.
        decoder_intermediate_size (`int`, defaults to 2048): width of the decoder's MLP.
        mask_ratio (`float`, defaults to 0.75): share of patches hidden from the encoder, in [0, 1). 0 masks nothing
            (every call sees every patch in order: deterministic features, no reconstruction loss).
        norm_pix_loss (`bool`, defaults to `True`): reconstruct each patch's pixels normalised by the patch's own mean
            and variance (MAE's setting for its released results) instead of the raw pixels.
    """

    model_type = "vit_accel_mae"

    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True


POOLINGS: tuple[str, ...] = ("cls", "mean", "cls_mean", "map")
MLP_TYPES: tuple[str, ...] = ("mlp", "swiglu")
POSITION_EMBEDDING_TYPES: tuple[str, ...] = ("learned", "rope")

__all__ = [
    "FAMILY_VARIANTS",
    "MLP_TYPES",
    "POOLINGS",
    "POSITION_EMBEDDING_TYPES",
    "VIT_SIZES",
    "VIT_VARIANTS",
    "ViTAccelConfig",
    "ViTAccelMAEConfig",
]

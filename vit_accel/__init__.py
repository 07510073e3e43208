"""vit_accel: fine-tune Vision Transformers the way the Hugging Face ecosystem expects."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

from .configuration_vit_accel import VIT_SIZES, VIT_VARIANTS, ViTAccelConfig, ViTAccelMAEConfig
from .modeling_vit_accel import (
    ViTAccelForImageClassification,
    ViTAccelForPreTraining,
    ViTAccelModel,
    ViTAccelPreTrainedModel,
    resample_position_embeddings,
)

__version__ = "0.1.0"

# Importing vit_accel makes the Auto classes know our model type; `register_for_auto_class` makes `save_pretrained`
# copy the two model files and write `auto_map`, so a saved directory loads without vit_accel (trust_remote_code).
AutoConfig.register(ViTAccelConfig.model_type, ViTAccelConfig, exist_ok=True)
AutoModel.register(ViTAccelConfig, ViTAccelModel, exist_ok=True)
AutoModelForImageClassification.register(ViTAccelConfig, ViTAccelForImageClassification, exist_ok=True)
AutoConfig.register(ViTAccelMAEConfig.model_type, ViTAccelMAEConfig, exist_ok=True)
AutoModelForPreTraining.register(ViTAccelMAEConfig, ViTAccelForPreTraining, exist_ok=True)
# (Importing modeling_vit_accel above also registers, for model_type vit_accel, the renamings between transformers'
# on-disk ViT parameter names and ours, which its from_pretrained/save_pretrained apply.)
ViTAccelConfig.register_for_auto_class()
ViTAccelMAEConfig.register_for_auto_class()
ViTAccelModel.register_for_auto_class("AutoModel")
ViTAccelForImageClassification.register_for_auto_class("AutoModelForImageClassification")
ViTAccelForPreTraining.register_for_auto_class("AutoModelForPreTraining")

# Installs the from_pretrained hook for named variants and Google/timm/transformers checkpoints.
from . import weights  # noqa: E402, F401

__all__ = [
    "VIT_SIZES",
    "VIT_VARIANTS",
    "ViTAccelConfig",
    "ViTAccelForImageClassification",
    "ViTAccelForPreTraining",
    "ViTAccelMAEConfig",
    "ViTAccelModel",
    "ViTAccelPreTrainedModel",
    "resample_position_embeddings",
]

"""vit_accel: fine-tune Vision Transformers the way the Hugging Face ecosystem expects.

The model classes load on first use (`vit_accel.ViTAccelForImageClassification`), so that importing the package, or
its command line, does not pay for torch and transformers' modeling code. Importing it registers the `vit_accel`
model type with transformers' Auto classes (see `vit_accel.auto`).
"""

from __future__ import annotations

import importlib

from . import auto

__version__ = "0.1.0"

_LAZY = {
    "VIT_SIZES": "configuration_vit_accel",
    "VIT_VARIANTS": "configuration_vit_accel",
    "ViTAccelConfig": "configuration_vit_accel",
    "ViTAccelMAEConfig": "configuration_vit_accel",
    "ViTAccelForImageClassification": "modeling_vit_accel",
    "ViTAccelForPreTraining": "modeling_vit_accel",
    "ViTAccelModel": "modeling_vit_accel",
    "ViTAccelPreTrainedModel": "modeling_vit_accel",
    "resample_position_embeddings": "modeling_vit_accel",
}
__all__ = sorted(_LAZY)

auto.install()


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

"""The `vit_accel` model type in transformers' Auto classes, registered when transformers loads them.

`import vit_accel` makes `AutoConfig`, `AutoModel` and `AutoModelForImageClassification` know our model type without
importing torch itself (torch and transformers' modeling code cost seconds that `vit-accel --help` should not pay):
it installs an import hook that registers the configuration right after transformers' `configuration_auto` module
is loaded and the model classes right after `modeling_auto` is, so that

    import vit_accel
    from transformers import AutoModelForImageClassification
    AutoModelForImageClassification.from_pretrained("a directory of ours")

works as it would with an eager registration. Where transformers' Auto modules are loaded already, registration
happens at once. Loading `vit_accel.modeling_vit_accel` (directly or through `vit_accel.ViTAccelModel`) registers the
models too. Nothing else is imported here: the model classes' `from_pretrained` finds `vit_accel.weights`' converting
loader (named variants, Google npz, timm and transformers checkpoints) by itself when it is called.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType

_done: set[str] = set()


def register_config() -> None:
    """`AutoConfig` knows `model_type: vit_accel`; `save_pretrained` writes the configuration file and `auto_map`."""
    if "config" in _done:
        return
    _done.add("config")
    # Deferred: registration runs from an import hook, once transformers' Auto modules are loaded.
    from transformers import AutoConfig

    from .configuration_vit_accel import ViTAccelConfig, ViTAccelMAEConfig

    for config in (ViTAccelConfig, ViTAccelMAEConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)
        config.register_for_auto_class()


def register_models(model_module_loaded: bool = False) -> None:
    """`AutoModel`/`AutoModelForImageClassification` build our classes; `save_pretrained` copies the model files and
    writes `auto_map`, so a saved directory loads without vit_accel (trust_remote_code); `from_pretrained` takes
    every source `vit_accel.weights` reads."""
    if "models" in _done or (not model_module_loaded and _loading("vit_accel.modeling_vit_accel")):
        return  # (while our model module loads, its own completion registers)
    _done.add("models")
    register_config()
    # Deferred: registration runs from an import hook, once transformers' Auto modules are loaded.
    from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining

    from .configuration_vit_accel import ViTAccelConfig, ViTAccelMAEConfig
    from .modeling_vit_accel import ViTAccelForImageClassification, ViTAccelForPreTraining, ViTAccelModel

    for auto_class, config, model in (
        (AutoModel, ViTAccelConfig, ViTAccelModel),
        (AutoModelForImageClassification, ViTAccelConfig, ViTAccelForImageClassification),
        (AutoModelForPreTraining, ViTAccelMAEConfig, ViTAccelForPreTraining),
    ):
        auto_class.register(config, model, exist_ok=True)
        model.register_for_auto_class(auto_class.__name__)


def _loading(name: str) -> bool:
    """Whether module `name` is being imported right now (transformers' modules load `modeling_auto` on the way)."""
    module = sys.modules.get(name)
    return module is not None and getattr(module.__spec__, "_initializing", False)


# Module loaded -> what to register once it has run. `configuration_auto` is loaded first by `modeling_auto`, so it
# registers the configuration only: model code imported then would meet a half-loaded `modeling_auto`.
_AFTER: dict[str, Callable[[], None]] = {
    "transformers.models.auto.configuration_auto": register_config,
    "transformers.models.auto.modeling_auto": register_models,
    "vit_accel.modeling_vit_accel": lambda: register_models(model_module_loaded=True),
}


class _RunAfter(importlib.abc.Loader):
    """The module's own loader, then `action`."""

    def __init__(self, loader: importlib.abc.Loader, action: Callable[[], None]):
        self.loader, self.action = loader, action

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.action()

    def __getattr__(self, name: str):  # get_source, get_data, ... of the real loader
        return getattr(self.loader, name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        action = _AFTER.get(fullname)
        if action is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RunAfter(spec.loader, action)
        return spec


def install() -> None:
    """Register now for what is loaded already, and after the rest of `_AFTER` as it loads."""
    if not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
    for name, action in _AFTER.items():
        if name in sys.modules:
            action()

"""The converting `from_pretrained`: what `ViTAccelPreTrainedModel.from_pretrained` reaches for a source that is not
a directory or Hub repo of ours.

Every keyword is honoured or refused by name:

- where from: `cache_dir`, `force_download`, `local_files_only` (and HF_HUB_OFFLINE: no network at all), `revision`,
  `token` (handed to huggingface_hub only, never printed), `subfolder`, `use_safetensors`;
- what to build: ViTAccelConfig fields (`num_labels`, `id2label`, `image_size`, `representation_size`, ...),
  `config`, and ours: `variant`, `head_init`, `resample_mode`, `resample_antialias`, `weights`, `progress`, `quiet`;
  `ignore_mismatched_sizes=False` refuses to replace a trained head (see `policy`);
- how to place it: `device_map`, `max_memory`, `offload_folder`, `offload_buffers`, `dtype` (`torch_dtype`),
  `attn_implementation`, `output_loading_info` go to transformers' own `from_pretrained`, which receives the converted
  state dict: placement, disk offload and the attention backend are transformers' and accelerate's machinery.
- `low_cpu_mem_usage` (True or False): transformers 5 always builds on the meta device, and so does this path (the
  converted tensors become the parameters); `weights_only=True`: nothing is ever unpickled (`False` is refused);
  `trust_remote_code`: no remote code runs on this path.

Anything else (quantization, tensor parallelism, adapters, GGUF, key mappings, ...) is refused with its name.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import torch

from ..configuration_vit_accel import FAMILY_VARIANTS, VIT_VARIANTS, ViTAccelConfig, ViTAccelMAEConfig
from ..errors import UserError
from ..modeling_vit_accel import ViTAccelForPreTraining, ViTAccelPreTrainedModel
from . import mae, policy
from .source_weights import Checkpoint
from .sources import (
    ARCHITECTURE_FIELDS,
    FUNCTION_FIELDS,
    HubOptions,
    check_architecture_overrides,
    check_local_revision,
    locate,
    standard_path,
    unknown_variant,
)

HUB_KEYWORDS = ("cache_dir", "force_download", "local_files_only", "revision", "token", "subfolder", "use_safetensors")
TRANSFORMERS_KEYWORDS = (
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_buffers",
    "dtype",
    "attn_implementation",
    "output_loading_info",
    "_from_auto",
    "_from_pipeline",
)
OUR_KEYWORDS = (
    "variant",
    "config",
    "head_init",
    "resample_mode",
    "resample_antialias",
    "weights",
    "progress",
    "quiet",
    "ignore_mismatched_sizes",
)
# Accepted because what they ask for is what this path always does (see the module docstring).
ALWAYS_SO = ("low_cpu_mem_usage", "weights_only", "trust_remote_code")


class HeadMismatchError(UserError, RuntimeError):
    """Labels of another count than a trained head's: a RuntimeError too, as transformers raises for a head that does
    not fit, so that callers written against transformers keep catching it."""


def from_pretrained(cls: type, source: Any, *model_args: Any, **kwargs: Any) -> torch.nn.Module | None:
    """Build `cls` from a named variant, Google npz, timm or transformers checkpoint; None for a directory or Hub
    repo of ours (transformers' standard path reads those), unless it is asked for another `image_size`: then its
    position embeddings are resampled here, as for any other source. Only for vit_accel's own classes: the
    remote-code copy of the model file (another class) takes transformers' path alone, as without vit_accel."""
    if not issubclass(cls, ViTAccelPreTrainedModel):
        return None
    if source is None and kwargs.get("state_dict") is None and not model_args:
        # transformers would look for a Hub repo named "None" (and retry while the network is down).
        raise UserError("from_pretrained(None): give a named variant, a local file or directory, or a Hub repo id.")
    if model_args or not isinstance(source, (str, os.PathLike)):
        return None
    if not str(source).strip():
        # Path("") is the current directory: loading whatever model lies there was never asked for.
        raise UserError(f"from_pretrained({str(source)!r}): an empty name; pass '.' for the current directory.")
    where = {key: kwargs[key] for key in HUB_KEYWORDS if kwargs.get(key) is not None}
    check_local_revision(source, where.get("revision"))
    pretraining = issubclass(cls, ViTAccelForPreTraining)
    if pretraining and str(source) in VIT_VARIANTS:  # Google's supervised files: no decoder (refused before a download)
        raise mae.not_mae(str(source))
    if standard_path(source, HubOptions(**where)):
        if pretraining:  # a classifier (or bare ViT) of ours has no decoder
            raise mae.not_mae(str(source))
        if asked := {key: kwargs[key] for key in ARCHITECTURE_FIELDS + FUNCTION_FIELDS if key in kwargs}:
            # transformers' path would draw the weights that do not fit at random, and say so in a table only.
            saved = ViTAccelConfig.from_pretrained(source, **{k: v for k, v in where.items() if k != "use_safetensors"})
            check_architecture_overrides(
                source,
                asked,
                lambda key, value: f"from_pretrained({str(source)!r}, {key}={value!r})",
                "build ViTAccelForImageClassification(ViTAccelConfig(...)) for a new model of that shape",
                saved={key: getattr(saved, key) for key in ARCHITECTURE_FIELDS + FUNCTION_FIELDS},
            )
        config = _other_resolution(source, kwargs, where) or _other_head(source, kwargs, where)
        if config is None:
            return None  # ours: every keyword is transformers' to take or refuse
        # transformers' path would refuse the position embeddings' new shape, or with ignore_mismatched_sizes=True
        # draw them at random: the policy resamples them; and it takes no head_init. Everything else of the
        # directory's config is kept, and its trained head is replaced only with ignore_mismatched_sizes=True, as on
        # transformers' path.
        kwargs = {"ignore_mismatched_sizes": False, **kwargs}
        kwargs.setdefault("config", config)
    fields_of = ViTAccelMAEConfig if pretraining else ViTAccelConfig
    hub, placement, ours, fields = split_keywords(str(source), kwargs, fields_of)  # before any long work
    checkpoint = locate(
        source, hub, weights=ours.pop("weights", None), progress=ours.pop("progress", None),
        quiet=ours.pop("quiet", False),
    )  # fmt: skip
    return build(cls, checkpoint, placement, **ours, **fields)


def _other_resolution(source: Any, kwargs: dict[str, Any], where: dict[str, Any]) -> ViTAccelConfig | None:
    """The saved config of a directory or Hub repo of ours when `image_size=` (or a `config=` with its own
    `image_size`, as transformers' Auto classes pass it) asks for another resolution, else None."""
    asked = kwargs.get("image_size")
    if asked is None and isinstance(kwargs.get("config"), ViTAccelConfig):
        asked = kwargs["config"].image_size
    if asked is None:
        return None
    config = ViTAccelConfig.from_pretrained(source, **{k: v for k, v in where.items() if k != "use_safetensors"})

    def pair(value: Any) -> Any:
        return tuple(value) if isinstance(value, (list, tuple)) else (value, value)

    return None if pair(asked) == pair(config.image_size) else config


def check_num_labels(num_labels: Any) -> None:
    if num_labels is not None and (not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1):
        raise UserError(f"num_labels must be a positive integer (the classes of the head), got {num_labels!r}.")


def _other_head(source: Any, kwargs: dict[str, Any], where: dict[str, Any]) -> ViTAccelConfig | None:
    """The saved config of a directory or Hub repo of ours when the keywords ask for a head other than its trained
    one (another label count, or `head_init`), else None. Another label count without `ignore_mismatched_sizes=True`
    is refused here in one line: transformers' own path raises a RuntimeError pointing at a log table."""
    asked = {key: kwargs[key] for key in policy.LABEL_FIELDS if kwargs.get(key) is not None}
    if not asked and kwargs.get("head_init") is None:
        return None
    check_num_labels(asked.get("num_labels"))
    config = ViTAccelConfig.from_pretrained(source, **{k: v for k, v in where.items() if k != "use_safetensors"})
    count = asked.get("num_labels", len(asked.get("id2label") or asked.get("label2id") or {}))
    if asked and count != config.num_labels and kwargs.get("ignore_mismatched_sizes") is not True:
        given = ", ".join(
            f"{key}={value!r}" if key == "num_labels" else f"{key}=<{len(value)} labels>"
            for key, value in asked.items()
        )
        raise HeadMismatchError(
            f"from_pretrained({str(source)!r}, {given}): it holds a trained {config.num_labels}-class head; "
            f"ignore_mismatched_sizes=True replaces it with a new {count}-class one (head_init='zeros' or "
            "'normal'), or leave the labels out to keep it."
        )
    # head_init is ours (transformers' path takes no such keyword): the policy builds the head it asks for.
    return config if kwargs.get("head_init") is not None else None


def split_keywords(
    source: str, kwargs: dict[str, Any], config_class: type = ViTAccelConfig
) -> tuple[HubOptions, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(where from, how to place, our options, fields of `config_class`); a keyword in none of them is refused by
    name."""
    config_fields = set(config_class().to_dict()) | {"id2label", "label2id", "num_labels"}
    hub, placement, ours, fields = {}, {}, {}, {}
    for key, value in kwargs.items():
        if key == "torch_dtype":
            key = "dtype"
        if key in HUB_KEYWORDS:
            hub[key] = value
        elif key in TRANSFORMERS_KEYWORDS:
            placement[key] = value
        elif key in OUR_KEYWORDS:
            ours[key] = value
        elif key in config_fields:
            fields[key] = value
        elif key == "adapter_kwargs" and not (value or {}).get("_adapter_model_path"):
            continue  # what transformers' Auto classes pass along when no adapter is involved (revision, token)
        elif key == "weights_only" and value is False:
            raise UserError(f"from_pretrained({source!r}, weights_only=False): vit_accel never unpickles checkpoints.")
        elif key not in ALWAYS_SO:
            known = [*config_fields, *HUB_KEYWORDS, *TRANSFORMERS_KEYWORDS, *OUR_KEYWORDS, *ALWAYS_SO]
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            public = [name for name in HUB_KEYWORDS + TRANSFORMERS_KEYWORDS + OUR_KEYWORDS if not name.startswith("_")]
            raise TypeError(
                f"from_pretrained({source!r}) got an unexpected keyword {key!r}{hint}: loading a converted checkpoint "
                f"takes ViTAccelConfig fields and {', '.join(public + list(ALWAYS_SO))}."
            )
    hub = {key: value for key, value in hub.items() if value is not None}
    check_num_labels(fields.get("num_labels"))
    variant = ours.get("variant")
    if variant is not None and variant not in VIT_VARIANTS:
        raise unknown_variant(variant, "named variant (the variant= keyword)")
    if variant is not None and source in VIT_VARIANTS and variant != source:
        raise UserError(f"variant={variant!r} contradicts the named source {source!r}.")
    if source in VIT_VARIANTS and source not in FAMILY_VARIANTS:
        ours["variant"] = source  # the variant's shape and resolution, whatever the 21k file it starts from
    # A family's variant is its Hub repo's own model: the checkpoint's shapes are the configuration.
    config = ours.get("config")
    if isinstance(config, (str, os.PathLike)):
        ours["config"] = config_class.from_pretrained(config)
    elif config is not None and not isinstance(config, config_class):
        name = config_class.__name__
        raise UserError(f"config= must be a {name} (or its directory), got {type(config).__name__}.")
    return HubOptions(**hub), placement, ours, fields


def build(
    cls: type, checkpoint: Checkpoint, placement: dict[str, Any] | None = None, **options: Any
) -> torch.nn.Module | tuple[torch.nn.Module, dict]:
    """`cls` built from `checkpoint` under the fine-tuning policy (`options`: see `policy.plan`), then placed by
    transformers' `from_pretrained`, given the converted state dict, with the `placement` keywords."""
    if issubclass(cls, ViTAccelForPreTraining):
        planned, state_dict, report = mae.plan_pretraining(cls, checkpoint, **options)
    else:
        if mae.has_decoder(checkpoint):  # an MAE checkpoint's encoder, with MAE's pooling for a classifier
            checkpoint = mae.encoder_checkpoint(cls, checkpoint, options)
        planned, state_dict, report = policy.plan(cls, checkpoint, **options)
    placement = dict(placement or {})
    want_info = placement.pop("output_loading_info", False)
    # transformers' own from_pretrained (ours would send a state dict back here), placing the converted weights.
    model, info = super(ViTAccelPreTrainedModel, cls).from_pretrained(
        None, config=planned.config, state_dict=policy.for_model(cls, state_dict), output_loading_info=True, **placement
    )
    model.config._name_or_path = checkpoint.source  # transformers records None for a state dict
    if not want_info:
        return model
    info["missing_keys"] = set(info["missing_keys"]) | set(policy.for_model(cls, dict.fromkeys(report["new"])))
    info["unexpected_keys"] = set(info["unexpected_keys"]) | set(report["dropped"])
    return model, info

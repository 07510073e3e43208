"""Where a checkpoint comes from: a named variant (downloaded once), a local file or directory, or a Hub repo.

Each source becomes a `Checkpoint` under our names through its format module (`google_npz`, `timm_state_dict`,
`transformers_vit`, `native`), told apart by content, never by file name. What cannot be found says why in one line:
a path that does not exist and is no Hub repo either, a Hub that cannot be reached (with the cache path that was
looked in, and how to fill it), a variant name with a typo (with the closest valid name).
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, errors
from huggingface_hub.utils import validate_repo_id

from ..configuration_vit_accel import FAMILY_VARIANTS, VIT_VARIANTS, ViTAccelConfig
from ..errors import UserError
from . import (
    download,
    google_npz,
    mae,
    meta_dinov2,
    native,
    timm_families,
    timm_state_dict,
    transformers_families,
    transformers_vit,
)
from .files import read_json, read_tensors, safetensors_header, save_safetensors, sniff
from .kinds import other_kind
from .source_weights import PATCH_KEY, Checkpoint, CheckpointError, ProgressFn

ACCEPTED = (
    "a named variant (" + ", ".join(VIT_VARIANTS[:2]) + ", ...), a Google .npz, a timm state dict (.pth/.bin/"
    ".safetensors), a transformers ViT or ViTMAE directory or Hub id, Meta's MAE or DINOv2 .pth, a safetensors file or "
    "directory of ViTAccel"
)
# Tensor files are told apart by their names, in this order: our names are also transformers' v5 in-memory names, and
# an MAE decoder next to timm's or transformers' encoder names makes a file MAE's, Meta's mask token a file Meta's
# DINOv2 (whose other names are timm's). A directory's config.json tells: an
# MAE pre-training model's (with its decoder) before transformers' families (whose ViTMAEModel is the encoder alone).
TENSOR_FORMATS = (mae, meta_dinov2, timm_families, timm_state_dict, native, transformers_vit)
DIRECTORY_FORMATS = (mae, native, transformers_vit, transformers_families, timm_families, timm_state_dict)


@dataclass
class HubOptions:
    """The `from_pretrained` keywords that say where a checkpoint is fetched from, and how."""

    cache_dir: str | os.PathLike | None = None
    force_download: bool = False
    local_files_only: bool = False
    revision: str | None = None
    token: str | bool | None = field(default=None, repr=False)  # to huggingface_hub only; never printed
    subfolder: str = ""
    use_safetensors: bool | None = None

    @property
    def offline(self) -> bool:
        return bool(self.local_files_only) or download.offline()


def closest_variant(name: str) -> str | None:
    """The named variant nearest to a misspelt one, if any is near."""
    matches = difflib.get_close_matches(name, VIT_VARIANTS, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_variant(name: str, what: str = "named variant") -> UserError:
    near = closest_variant(name)
    hint = f"did you mean {near!r}? " if near else ""
    return UserError(f"{name!r} is not a {what}; {hint}Valid names: {', '.join(VIT_VARIANTS)}.")


def _looks_like_variant(text: str) -> bool:
    if "/" in text or os.sep in text:
        return False
    if re.match(r"^vit[-_]", text, re.IGNORECASE):
        return True
    # A family's name ("clip-...", "mae-...") is a variant only with a patch size in it: other names are paths.
    families = "|".join(sorted({name.split("-")[0] for name in FAMILY_VARIANTS}))
    return re.match(rf"^({families})[-_].*[-_]p\d+", text, re.IGNORECASE) is not None


# ---------------------------------------------------------------------------------------------------------------------
# local files and directories


def read_checkpoint(
    source: str | os.PathLike,
    progress: ProgressFn | None = None,
    lazy: bool = False,
    use_safetensors: bool | None = None,
) -> Checkpoint:
    """A local file or directory, whatever its format, as a `Checkpoint` under our names."""
    path = Path(source)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: a directory without config.json. Accepted: {ACCEPTED}.")
        config = read_json(config_file)
        for fmt in DIRECTORY_FORMATS:
            if fmt.detect((), config):
                if fmt is transformers_vit:
                    return fmt.read(path, progress, lazy, use_safetensors=use_safetensors)
                _check_container(path / "model.safetensors", use_safetensors)
                return fmt.read(path, progress, lazy)
        raise CheckpointError(
            f"{config_file}: model_type {config.get('model_type')!r} is neither 'vit' (transformers) nor 'vit_accel', "
            f"and this is not timm's layout. Accepted: {ACCEPTED}."
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory. Accepted: {ACCEPTED}.")
    try:
        kind = sniff(path)
    except CheckpointError as error:
        raise CheckpointError(f"{error} Accepted: {ACCEPTED}.") from None
    _check_container(path, use_safetensors, kind)
    if kind == "npz":
        with zipfile.ZipFile(path) as archive:
            names = [name[: -len(".npy")] for name in archive.namelist()]
        if not google_npz.detect(names):
            google_npz.detect_prefix(names, str(path))  # raises, naming what an npz of Google's would hold
        return google_npz.read(path, progress, lazy)
    if kind == "safetensors":
        names = [key for key in safetensors_header(path) if key != "__metadata__"]
    else:
        names = list(read_tensors(path))
    for fmt in TENSOR_FORMATS:
        if fmt.detect(names):
            return _with_config_beside(fmt.read(path, progress, lazy), path)
    raise CheckpointError(
        f"{path}: tensors with unrecognised names (e.g. {sorted(names)[:4]}): not a ViT from timm, transformers or "
        f"ViTAccel. Accepted: {ACCEPTED}."
    )


def _with_config_beside(checkpoint: Checkpoint, path: Path) -> Checkpoint:
    """A bare tensor file records only shapes; the `config.json` of the directory it sits in (timm's, ours or
    transformers') says the rest: attention heads, LayerNorm epsilon, activation, labels. A file that records them
    itself (one of our cached conversions) keeps its own."""
    config_file = path.parent / "config.json"
    if checkpoint.num_attention_heads is not None or not config_file.is_file():
        return checkpoint
    config = read_json(config_file)
    if timm_state_dict.detect((), config):
        timm_state_dict.apply_config(checkpoint, config, config_file)
    elif native.detect((), config) or transformers_vit.detect((), config):
        width = int(checkpoint.state_dict[PATCH_KEY].shape[0]) if PATCH_KEY in checkpoint.state_dict else None
        if config.get("hidden_size") not in (None, width):
            raise CheckpointError(
                f"{config_file}: hidden_size is {config['hidden_size']}, but the weights of {path} are {width} wide: "
                "this config.json describes another model."
            )
        fields = transformers_vit.config_fields(config)
        checkpoint.num_attention_heads = fields.pop("num_attention_heads", None)
        checkpoint.config.update({key: value for key, value in fields.items() if key != "label2id"})
    return checkpoint


def _check_container(path: Path, use_safetensors: bool | None, kind: str | None = None) -> None:
    """`use_safetensors=True` takes safetensors files only, `False` anything else, as transformers reads it."""
    if use_safetensors is None:
        return
    kind = kind or (sniff(path) if path.is_file() else "missing")
    if use_safetensors and kind != "safetensors":
        raise CheckpointError(f"{path}: use_safetensors=True, but this is a {kind} file, not safetensors.")
    if use_safetensors is False and kind == "safetensors":
        raise CheckpointError(f"{path}: use_safetensors=False, but this is a safetensors file.")


# ---------------------------------------------------------------------------------------------------------------------
# named variants


def named_checkpoint(
    variant: str,
    weights: str | None = None,
    progress: ProgressFn | None = None,
    quiet: bool = False,
    options: HubOptions | None = None,
) -> Checkpoint:
    """The 21k checkpoint a named variant starts from: downloaded and converted once, then read from the cache
    (`<cache_dir or HF hub cache>/vit_accel/`). A family's variant is its timm Hub repo (`family_checkpoint`)."""
    options = options or HubOptions()
    if variant in FAMILY_VARIANTS:
        return family_checkpoint(variant, options)
    relative = download.weight_file(variant, weights)
    if options.revision not in (None, "main"):
        raise UserError(
            f"revision={options.revision!r}: {variant} is one fixed file ({download.base_url() + relative}), "
            "which has no revisions."
        )
    if options.use_safetensors is not None:
        raise UserError(
            f"use_safetensors={options.use_safetensors!r}: {variant} is Google's npz file, converted once to "
            "safetensors in the cache; there is no other file to choose."
        )
    folder = download.cache_dir(options.cache_dir)
    cached = folder / (Path(relative).stem + ".safetensors")
    if options.force_download or not cached.is_file():
        npz = download.fetch(
            relative,
            folder,
            verify=google_npz.verify_npz,
            quiet=quiet,
            force=options.force_download,
            local_only=options.local_files_only,
        )
        # Streamed: each array is read, converted and written in turn (peak memory about one array).
        checkpoint = google_npz.read(npz, progress=progress, lazy=True)
        checkpoint.source = download.base_url() + relative
        save_safetensors(checkpoint.state_dict, cached, checkpoint.metadata(), progress, checkpoint.materialize)
    return native.read(cached)


def family_checkpoint(variant: str, options: HubOptions | None = None) -> Checkpoint:
    """A family's named variant: its timm Hub repo (`config.json` and `model.safetensors`), downloaded once into the
    HF cache by huggingface_hub and read from there as timm's layout. Not in the cache and offline: one line naming
    the variant, the repo, the cache path and how to fill it."""
    options = options or HubOptions()
    repo_id, _, fields = FAMILY_VARIANTS[variant]
    if options.use_safetensors is False:
        raise UserError(f"use_safetensors=False: {variant} is {repo_id}'s model.safetensors; there is no other file.")
    paths = []
    for filename in ("config.json", "model.safetensors"):
        try:
            paths.append(
                huggingface_hub.hf_hub_download(
                    repo_id,
                    filename,
                    revision=options.revision,
                    cache_dir=options.cache_dir,
                    force_download=options.force_download,
                    local_files_only=options.offline,
                    token=options.token,
                )
            )
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as error:
            why = "local_files_only=True" if options.local_files_only else "HF_HUB_OFFLINE is set"
            why = why if options.offline else str(error).splitlines()[0]
            raise CheckpointError(
                f"{variant}: the Hub repo {repo_id} is not in the cache at {_hub_cache(options, repo_id)} ({why}); "
                f"fill it where the Hub is reachable with `hf download {repo_id} config.json model.safetensors` "
                "(and copy that cache here), or pass a local path."
            ) from None
        except (errors.HfHubHTTPError, OSError) as error:
            raise CheckpointError(
                f"{variant}: could not download {repo_id}/{filename}: {error}".splitlines()[0]
            ) from None
    checkpoint = read_checkpoint(Path(paths[0]).parent)
    checkpoint.folder = str(Path(paths[0]).parent)  # its config.json says how its images were normalised
    # What the architecture fixes and the repo's config.json may name otherwise (OpenAI CLIP's QuickGELU).
    checkpoint.config.update({key: fields[key] for key in ("hidden_act", "layer_norm_eps") if key in fields})
    checkpoint.source = repo_id
    return checkpoint


# ---------------------------------------------------------------------------------------------------------------------
# the Hub


def _hub_cache(options: HubOptions, repo_id: str) -> Path:

    root = Path(options.cache_dir) if options.cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return root / ("models--" + repo_id.replace("/", "--"))


def _hub_download(repo_id: str, filename: str, options: HubOptions, missing_ok: bool = False) -> str | None:
    """`hf_hub_download` with the caller's options; its failures as one line naming the repo (and, for a path that
    does not exist locally, saying so)."""

    nowhere = f"{repo_id}: no such local file or directory, and"
    try:
        return huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            subfolder=options.subfolder or None,
            revision=options.revision,
            cache_dir=options.cache_dir,
            force_download=options.force_download,
            local_files_only=options.offline,
            token=options.token,
        )
    except errors.GatedRepoError:
        raise CheckpointError(
            f"{repo_id}: a gated Hub repo: accept its terms on the Hub and pass token= (or `hf auth login`)."
        ) from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{nowhere} the Hub has no repo {repo_id!r} (or it is private: pass token=). Accepted: {ACCEPTED}."
        ) from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: the Hub repo has no revision {options.revision!r}.") from None
    except errors.RemoteEntryNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"{repo_id}: the Hub repo has no {filename}.") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, errors.HfHubHTTPError, OSError) as error:
        if missing_ok and isinstance(error, errors.LocalEntryNotFoundError):
            return None  # offline and not cached: the caller tries the next file, then says what it looked for
        raise _unreachable(repo_id, filename, options, error) from None


def _unreachable(repo_id: str, what: str, options: HubOptions, error: BaseException | None = None) -> CheckpointError:
    if options.local_files_only:
        why = "local_files_only=True"
    elif download.offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        why = str(error).splitlines()[0] if error is not None else "unknown reason"
    return CheckpointError(
        f"{repo_id}: no such local file or directory, and the Hub could not be reached ({why}) and the cache at "
        f"{_hub_cache(options, repo_id)} has no {what}; fill it where the Hub is reachable with `hf download "
        f"{repo_id}` (and copy that cache here), or pass a local path."
    )


def hub_checkpoint(repo_id: str, options: HubOptions) -> Checkpoint | None:
    """A transformers ViT repo on the Hub as a `Checkpoint`; None for a repo of ours (transformers' standard path)."""
    config_file = _hub_download(repo_id, "config.json", options)
    config = read_json(config_file)
    if native.detect((), config):
        return None
    if mae.detect((), config):  # a transformers ViTMAE repo (facebook/vit-mae-*)
        weights = _hub_download(repo_id, "model.safetensors", options, missing_ok=True)
        weights = weights or _hub_download(repo_id, "pytorch_model.bin", options)
        checkpoint = mae.to_checkpoint(read_tensors(weights), config, repo_id)
        return checkpoint
    if not transformers_vit.detect((), config):
        raise CheckpointError(
            f"{repo_id}: a {config.get('model_type')!r} model on the Hub, not a ViT ('vit' or 'vit_accel')."
        )
    names = [name for name in transformers_vit.WEIGHT_FILES if _wanted(name, options.use_safetensors)]
    for name in names:
        weights = _hub_download(repo_id, name, options, missing_ok=True)
        if weights is None:
            continue
        if name.endswith(".index.json"):
            for shard in sorted(set(read_json(weights).get("weight_map", {}).values())):
                _hub_download(repo_id, shard, options)
        checkpoint = transformers_vit.read(
            Path(weights).parent, use_safetensors=name != "pytorch_model.bin", weights_name=name
        )
        checkpoint.source = repo_id
        return checkpoint
    if options.offline:
        raise _unreachable(repo_id, " or ".join(names), options)
    raise CheckpointError(f"{repo_id}: a transformers ViT repo without {' or '.join(names)}.")


def _wanted(name: str, use_safetensors: bool | None) -> bool:
    return use_safetensors is None or use_safetensors == ("safetensors" in name)


# ---------------------------------------------------------------------------------------------------------------------
# any source


def standard_path(source: str | os.PathLike, options: HubOptions | None = None) -> bool:
    """Whether `source` is a directory or Hub repo of ours, which transformers' standard `from_pretrained` reads.

    Cheap: a local `config.json`, or the Hub's (a small download). A source that exists nowhere is an error here,
    before any long work."""
    options = options or HubOptions()
    text = str(source)
    if text in VIT_VARIANTS:
        return False
    path = Path(text).expanduser()
    if path.exists():
        path = path / options.subfolder if options.subfolder else path
        check_kind(path)
        config_file = path / "config.json"
        if not (path.is_dir() and config_file.is_file() and native.detect((), read_json(config_file))):
            return False
        if (path / "model.safetensors").is_file():
            safetensors_header(path / "model.safetensors")  # a truncated file is named before transformers reads it
        return True
    _check_remote_name(text)
    return native.detect((), read_json(_hub_download(text, "config.json", options)))


def _check_remote_name(text: str) -> None:
    """A name that is no local path must be a Hub repo id; a misspelt variant or path says so."""
    if _looks_like_variant(text):
        raise unknown_variant(text)
    if not _is_repo_id(text):
        raise CheckpointError(f"{text}: no such local file or directory (nor a Hub repo id). Accepted: {ACCEPTED}.")


def check_kind(path: Path) -> None:
    """An adapter, training checkpoint or graph export given as a model, refused saying what it is (`other_kind`)."""
    kind = other_kind(path)
    if kind is not None:
        raise CheckpointError(f"{path}: {kind}.")


def check_local_revision(source: str | os.PathLike, revision: str | None) -> None:
    """A `revision` other than the default for a local path, refused: a directory has no revisions to choose from."""
    if revision not in (None, "main") and Path(str(source)).expanduser().exists():
        raise UserError(f"revision={revision!r}: {source} is a local path, which has no revisions.")


def locate(
    source: str | os.PathLike | Checkpoint,
    options: HubOptions | None = None,
    *,
    weights: str | None = None,
    progress: ProgressFn | None = None,
    quiet: bool = False,
    lazy: bool = False,
) -> Checkpoint:
    """The `Checkpoint` of a named variant, local file or directory, or Hub id (a Hub repo of ours included)."""
    if isinstance(source, Checkpoint):
        return source
    options = options or HubOptions()
    text = str(source)
    if text in VIT_VARIANTS:
        return named_checkpoint(text, weights, progress, quiet, options)
    path = Path(text).expanduser()
    if path.exists():
        check_local_revision(path, options.revision)
        if options.subfolder:
            path = path / options.subfolder
        check_kind(path)
        return read_checkpoint(path, progress, lazy, options.use_safetensors)
    _check_remote_name(text)
    return _hub_or_raise(text, options)


def _hub_or_raise(repo_id: str, options: HubOptions) -> Checkpoint:
    checkpoint = hub_checkpoint(repo_id, options)
    if checkpoint is not None:
        return checkpoint
    # A Hub repo of ours: its files are ours, read as a local directory once downloaded.
    _hub_download(repo_id, "model.safetensors", options)
    return native.read(Path(_hub_download(repo_id, "config.json", options)).parent)


def _is_repo_id(text: str) -> bool:

    try:
        validate_repo_id(text)
    except Exception:  # HFValidationError: not a repo id at all, e.g. "../run" or "a/b/c"
        return False
    return True


__all__ = [
    "ACCEPTED",
    "HubOptions",
    "check_local_revision",
    "closest_variant",
    "family_checkpoint",
    "hub_checkpoint",
    "locate",
    "named_checkpoint",
    "read_checkpoint",
    "standard_path",
    "unknown_variant",
]


# ---------------------------------------------------------------------------------------------------------------------
# the architecture a source was pretrained with

# Config fields that set the shapes of pretrained weights, or how they are read (heads split the same projections):
# another value than the checkpoint's leaves weights unused, drawn at random, or read in a way they were not trained
# for. The resolution is not among them: position embeddings are resampled to any image_size.
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "qkv_bias",
    "num_channels",
)


# Config fields that do not change a weight's shape but what the weights compute: another value than the one they
# were trained with is allowed (it may be meant), and said.
FUNCTION_FIELDS: tuple[str, ...] = ("hidden_act", "layer_norm_eps", "pooler_act")


def saved_architecture(source: str | os.PathLike) -> dict | None:
    """The `ARCHITECTURE_FIELDS` of a named variant, or of a local directory's `config.json` (ours or transformers'
    ViT, which name them alike), without reading any weights; None where only the weights would tell (a weights
    file, a Hub repo, a directory without config.json)."""

    text = str(source)
    if text in VIT_VARIANTS:
        return {key: getattr(ViTAccelConfig.from_variant(text), key) for key in ARCHITECTURE_FIELDS}
    config_file = Path(text).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    saved = read_json(config_file)
    if not (native.detect((), saved) or transformers_vit.detect((), saved)):
        return None
    defaults = ViTAccelConfig()
    return {key: saved.get(key, getattr(defaults, key)) for key in ARCHITECTURE_FIELDS + FUNCTION_FIELDS}


def architecture_conflicts(saved: dict, asked: dict) -> list[tuple[str, object, object]]:
    """(field, asked value, pretrained value) for each architecture field `asked` sets to another value than `saved`
    (an int and the same int twice as a (height, width) pair are the same size)."""

    def size(value: object) -> object:
        return tuple(value) if isinstance(value, (list, tuple)) else (value, value) if isinstance(value, int) else value

    return [
        (key, asked[key], saved[key])
        for key in ARCHITECTURE_FIELDS
        if key in asked and key in saved and size(asked[key]) != size(saved[key])
    ]


def check_architecture_overrides(
    source: str | os.PathLike, asked: dict, named, instead: str, saved: dict | None = None
) -> None:
    """Refuse, naming the first, an architecture field asked of a pretrained `source` that its weights cannot take.

    `named(key, value)` shows the request as the caller's user typed it (a flag, a keyword); `instead` says how to get
    a model of the asked shape; `saved` the source's fields where the caller has read them (else
    `saved_architecture`). Sources whose architecture is known only from their weights are checked there
    (`policy.check_fit`), where no such field can be taken either.
    """
    saved = saved if saved is not None else saved_architecture(source)
    conflicts = architecture_conflicts(saved, asked) if saved is not None else []
    for key in FUNCTION_FIELDS:
        if saved is not None and key in asked and key in saved and asked[key] != saved[key]:
            logging.getLogger(__name__).warning(
                f"{named(key, asked[key])}: {source} was trained with {key}={saved[key]}; its weights now compute "
                "another function than the one they learnt."
            )
    if not conflicts:
        return
    key, value, pretrained = conflicts[0]
    if key == "num_hidden_layers" and value > pretrained:
        why = f"blocks {pretrained}..{value - 1} would start from random weights"
    elif key == "num_hidden_layers":
        why = f"its blocks {value}..{pretrained - 1} would be dropped"
    elif key == "num_attention_heads":
        why = "its attention weights were trained split into that many heads"
    else:
        why = "its weights have the shapes of that value"
    raise UserError(
        f"{named(key, value)}: {source} was pretrained with {key}={pretrained}, and {why}; drop the override, or "
        f"{instead}."
    )

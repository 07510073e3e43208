"""`vit-accel features`: the encoder's features of image files, written as safetensors with the images' paths.

The features are what a model's classifier reads (its pooled output: the CLS token, `fc_norm` of the patch mean, CLS
and patch mean, or the attention pool, as its `pooling` says), for any model `from_pretrained` loads: our
directories (classifiers and adapters), transformers' and timm's directories of the supported families, the named
variants. An MAE pre-training checkpoint gives its encoder's CLS token with no patch masked (`mask_ratio=0`), the
output MAE's decoder reads and its linear probe classifies. Nothing is random: the same images give the same
features on every call. Images are prepared as `vit-accel predict` prepares them (`inference.prepare_images`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import PIL.Image
import torch
from safetensors.torch import save_file

from .data.folders import FolderLayout, is_url
from .errors import UserError
from .inference import _preprocessing, check_image_files, image_pipeline, load_classifier, prepare_images

FEATURES_FILE = "features.safetensors"
IMAGES_FILE = "images.json"


def image_files(inputs: list[str]) -> list[str]:
    """The image files named by `inputs` (files, and folders: every image below one, in sorted order), checked to
    exist and to be images PIL can identify, before any model is loaded."""
    if not inputs:
        raise UserError("Give the images: image files or folders of them.")
    files: list[str] = []
    for item in inputs:
        if not is_url(str(item)) and Path(item).is_dir():
            found = FolderLayout(Path(item)).files()
            if not found:
                raise UserError(f"{item}: a folder with no image files in it (or below it).")
            files.extend(found)
        else:
            files.append(item)
    check_image_files(files)
    for path in files:
        try:
            with PIL.Image.open(path):  # the header only: a file that is not an image stops here, not mid-run
                pass
        except (OSError, PIL.UnidentifiedImageError) as error:
            raise UserError(f"Cannot read image {path}: {error}") from error
    return files


def load_feature_extractor(model: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict]:
    """`(extract, preprocessing)`: `extract` maps a prepared batch to its features `(batch, width)`, in eval mode;
    `preprocessing` is the model's `size`, `image_mean` and `image_std`.

    Raises:
        UserError: no such model, a file or directory that is not one, or no record of how its images are prepared.
    """
    # Deferred: the weights package (and through it timm's and transformers' readers) is imported only when used.
    from .adapters import is_adapter_dir
    from .modeling_vit_accel import ViTAccelForImageClassification, ViTAccelForPreTraining
    from .weights import mae, policy
    from .weights.conversion import source_processor
    from .weights.sources import locate, standard_path

    path = Path(model).expanduser()
    processor_file = path / "preprocessor_config.json"
    if (path.is_dir() and is_adapter_dir(path)) or standard_path(model):
        # An adapter or a classifier of ours: loaded as predict loads it, with the same checks and preprocessing.
        classifier, preprocessing = load_classifier(model)
        return _classifier_features(classifier), preprocessing
    checkpoint = locate(model, lazy=True)  # what the source is, told by its content (refused in one line if nothing)
    settings = None if processor_file.is_file() else source_processor(checkpoint)
    if settings is None and not processor_file.is_file():
        raise UserError(
            f"--model {model}: nothing records how its images were normalised (no preprocessor_config.json): write "
            "the one the weights were trained with, e.g. transformers.ViTImageProcessor(size={'height': H, 'width': "
            "W}, image_mean=..., image_std=...).save_pretrained(...), or `vit-accel convert` it."
        )
    if mae.has_decoder(checkpoint):
        pretraining = ViTAccelForPreTraining.from_pretrained(model, mask_ratio=0.0).eval()
        config = pretraining.config
        extract = _mae_features(pretraining)
    else:
        # A source without a trained head gets a placeholder one (never read here) rather than a warning about it.
        head = {} if policy.trained_head(checkpoint) else {"num_labels": 2}
        classifier = ViTAccelForImageClassification.from_pretrained(model, **head).eval()
        config = classifier.config
        extract = _classifier_features(classifier)
    if settings is None:
        preprocessing = _preprocessing(str(path), processor_file)
    else:
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        preprocessing = {"size": int(size), "image_mean": list(settings["image_mean"]),
                         "image_std": list(settings["image_std"])}  # fmt: skip
    return extract, preprocessing


def _classifier_features(classifier: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def extract(pixel_values: torch.Tensor) -> torch.Tensor:
        return classifier.pooled_features(classifier.vit(pixel_values, cls_token_only=True))

    return extract


def _mae_features(pretraining: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def extract(pixel_values: torch.Tensor) -> torch.Tensor:
        latent, _, _ = pretraining.vit.forward_visible(pixel_values)
        if pretraining.config.use_cls_token:
            return latent[:, 0]
        return latent[:, pretraining.config.num_prefix_tokens :].mean(dim=1)

    return extract


def extract_features(model: str, images: list[str], batch_size: int = 64) -> tuple[torch.Tensor, list[str]]:
    """The features `(images, width)` (float32) of the image files and folders in `images`, and the files in the
    order of the rows."""
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}.")
    files = image_files(images)
    extract, preprocessing = load_feature_extractor(model)
    pipeline = image_pipeline(preprocessing)
    rows = []
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            rows.append(extract(prepare_images(files[start : start + batch_size], pipeline)).float())
    return torch.cat(rows), files


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """`output_dir` ready for the two files, refused before any work if it would replace earlier features."""
    root = Path(output_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--output_dir {output_dir} is a file, not a directory.")
    if not overwrite and (root / FEATURES_FILE).exists():
        raise UserError(f"--output_dir {output_dir} already holds {FEATURES_FILE}; pass --overwrite to replace it.")
    root.mkdir(parents=True, exist_ok=True)
    if not os.access(root, os.W_OK):
        raise UserError(f"--output_dir {output_dir} is not writable.")
    return root


def write_features(features: torch.Tensor, files: list[str], output_dir: Path, model: str) -> Path:
    """`features.safetensors` (tensor `features`, one row per image) and `images.json` (the files, row order), each
    written to a temporary name first, so that an interrupted write leaves no half file under the final name."""
    target = output_dir / FEATURES_FILE
    partial = output_dir / f".{FEATURES_FILE}.partial"
    save_file({"features": features.contiguous()}, str(partial), metadata={"model": str(model)})
    listing = output_dir / f".{IMAGES_FILE}.partial"
    listing.write_text(json.dumps(files, indent=1) + "\n")
    os.replace(partial, target)
    os.replace(listing, output_dir / IMAGES_FILE)
    return target

"""MAE pre-training as pretrain.py runs it: the model it starts from, the mask of each example, the per-example
reconstruction loss, the held-out evaluation and the reconstruction figure.

Every mask is a pure function of (seed, epoch, the example's row): the same example gets the same mask whether one
process or several train, and a resumed run draws exactly the masks the uninterrupted one drew. The held-out images
get one fixed mask each, the same at every evaluation, so that their loss is comparable along the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger

from ..configuration_vit_accel import VIT_VARIANTS, ViTAccelConfig, ViTAccelMAEConfig
from ..data import ImageClassificationDataset
from ..errors import UserError
from ..modeling_vit_accel import ViTAccelForPreTraining, ViTAccelModel
from ..weights import mae
from .model import refused_shape, refused_source, source_normalisation
from .pretraining_arguments import PretrainingModelArguments

logger = get_logger(__name__, log_level="INFO")

# MAE normalises its inputs with ImageNet's mean and std; a source with an image processor keeps its own.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Keys that keep the masks' random stream apart from the augmentation's (both are seeded by seed, epoch and row).
_TRAINING_NOISE, _HELD_OUT_NOISE = 0x4D4145, 0x4D414545
# How many held-out images the reconstruction figure shows, and its smallest cell (small images are enlarged).
FIGURE_IMAGES = 8
FIGURE_MIN_SIZE = 96


def build_pretraining_model(args: PretrainingModelArguments) -> tuple[ViTAccelForPreTraining, tuple, tuple, str]:
    """The model to pre-train, the normalisation its inputs need and what it started from: a new model of a
    variant's (or a directory's config's) shape with --from_scratch, else an MAE checkpoint continued (ours,
    transformers' `ViTMAEForPreTraining`, Meta's `.pth`), else any encoder checkpoint with a new decoder.

    Raises:
        UserError: a source or a flag that does not fit, named.
    """
    source = args.model_name_or_path
    overrides = args.parsed_overrides()
    loss_fields = {"mask_ratio": args.mask_ratio, "norm_pix_loss": args.norm_pix_loss}
    if args.from_scratch:
        fields = {**overrides, **args.decoder_fields(new=True), **loss_fields}
        try:
            if source in VIT_VARIANTS:
                config = ViTAccelMAEConfig.from_variant(source, **fields)
            else:
                config = ViTAccelMAEConfig.from_dict({**ViTAccelConfig.from_pretrained(source).to_dict(), **fields})
            model = ViTAccelForPreTraining(config)
        except (OSError, ValueError) as error:
            if isinstance(error, UserError):
                raise
            raise refused_shape(args, error) from error
        return model, *IMAGENET_MEAN_STD, "from scratch"
    try:
        model = _loaded(ViTAccelForPreTraining, source, **overrides, **args.decoder_fields(new=False), **loss_fields)
    except UserError as error:
        if str(error) != str(mae.not_mae(source)):
            raise
        return _with_new_decoder(args, overrides, loss_fields)
    return model, *source_normalisation(source, IMAGENET_MEAN_STD), "an MAE checkpoint (encoder and decoder)"


def _loaded(cls: type, source: str, **kwargs):
    try:
        return cls.from_pretrained(source, **kwargs)
    except (RuntimeError, OSError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        raise refused_source(source, error) from error


def _with_new_decoder(args: PretrainingModelArguments, overrides: dict, loss_fields: dict) -> tuple:
    """An encoder checkpoint (a classifier or bare ViT of any source) under a new MAE decoder."""
    source = args.model_name_or_path
    encoder = _loaded(ViTAccelModel, source, **overrides)
    fields = {k: v for k, v in encoder.config.to_dict().items() if k in ViTAccelConfig.__annotations__}
    # MAE's encoder ends in its final LayerNorm, which the decoder reads.
    fields.update(pooling="cls", **args.decoder_fields(new=True), **loss_fields)
    try:
        model = ViTAccelForPreTraining(ViTAccelMAEConfig(**fields))
    except ValueError as error:
        raise UserError(f"--model_name_or_path {source} as MAE's encoder: {str(error).splitlines()[0]}") from error
    # The bare model's pooler (a classifier's pre-logits) has no part in MAE.
    weights = {key: value for key, value in encoder.state_dict().items() if not key.startswith("pooler.")}
    missing, unexpected = model.vit.load_state_dict(weights, strict=False)
    if unexpected:
        raise UserError(f"--model_name_or_path {source}: weights MAE's encoder has no place for: {unexpected[:5]}.")
    if missing:
        logger.warning(f"New in the encoder (not in {source}): {', '.join(missing)}.", main_process_only=True)
    mean, std = source_normalisation(source)
    return model, mean, std, "an encoder checkpoint, with a new decoder"


def mask_noise(rows: torch.Tensor, num_patches: int, seed: int, epoch: int | None) -> torch.Tensor:
    """The MAE noise `(len(rows), num_patches)` of these examples (their rows, the `label` column of unlabelled
    data) at `epoch`; None: the held-out images' fixed noise."""
    key = [_HELD_OUT_NOISE] if epoch is None else [_TRAINING_NOISE, epoch]
    noise = []
    for row in rows.tolist():
        state = np.random.SeedSequence([seed, *key, int(row)]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))
        noise.append(torch.rand(num_patches, generator=generator))
    return torch.stack(noise)


class MaskedImageDataset(ImageClassificationDataset):
    """Unlabelled images, each with its MAE noise (`noise`, `(num_patches,)`), drawn where the example is decoded
    (in the loader's workers, beside the GPU's step): the training images' of their epoch, the held-out images'
    fixed (`held_out`). The `labels` of unlabelled data are the rows that seed it."""

    def __init__(
        self, data, pipeline, seed: int, bad_images: str, num_patches: int, held_out: bool, decoder: str | None = None
    ) -> None:
        super().__init__(data, pipeline, seed, bad_images, decoder)
        self.num_patches, self.held_out = num_patches, held_out

    def __getitem__(self, index: int) -> dict:
        example = super().__getitem__(index)
        epoch = None if self.held_out else self.epoch
        example["noise"] = mask_noise(torch.tensor([example["labels"]]), self.num_patches, self.seed, epoch)[0]
        return example


def num_patches(config: ViTAccelMAEConfig) -> int:
    rows, cols = config.grid_size
    return rows * cols


def per_example_losses(model: ViTAccelForPreTraining, pixel_values: torch.Tensor, outputs) -> torch.Tensor:
    """Each image's reconstruction loss (mean squared error over its masked patches, in float32); their mean is the
    model's `loss` (every image hides as many patches)."""
    errors = ((outputs.logits.float() - model.reconstruction_target(pixel_values)) ** 2).mean(dim=-1)
    mask = outputs.mask.float()
    return (errors * mask).sum(dim=1) / mask.sum(dim=1)


@torch.no_grad()
def evaluate_reconstruction(accelerator: Accelerator, model, loader, on_device) -> dict:
    """`eval_loss`: the mean reconstruction loss of the held-out images under their fixed masks, each image counted
    once whatever the number of processes."""
    unwrapped = accelerator.unwrap_model(model)
    model.eval()
    total, count = 0.0, 0
    for batch in loader:  # of a held-out `MaskedImageDataset`: each image with its fixed noise
        pixel_values = on_device(batch["pixel_values"])
        outputs = model(pixel_values=pixel_values, noise=batch["noise"])
        losses = accelerator.gather_for_metrics(per_example_losses(unwrapped, pixel_values, outputs))
        total, count = total + losses.double().sum().item(), count + losses.numel()
    model.train()
    return {"eval_loss": total / max(count, 1)}


@torch.no_grad()
def reconstruction_images(model, unwrapped: ViTAccelForPreTraining, pixel_values: torch.Tensor, noise, mean, std):
    """(original, masked, reconstructed) images in [0, 1] for normalised `pixel_values`: the masked patches grey, and
    the reconstruction's masked patches predicted (in pixel space again: un-normalised by each patch's own mean and
    variance with `norm_pix_loss`, as MAE's figures) beside the visible ones. `model` runs the forward (prepared:
    under ZeRO-3 and FSDP every process must call it), `unwrapped` is the same model's module."""
    was_training = model.training
    model.eval()
    outputs = model(pixel_values=pixel_values, noise=noise)
    model.train(was_training)
    patches = unwrapped.patchify(pixel_values.float())
    predicted = outputs.logits.float()
    if unwrapped.config.norm_pix_loss:
        centre, spread = patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
        predicted = predicted * spread + centre
    hidden = outputs.mask.float()[..., None]
    size = tuple(pixel_values.shape[-2:])
    mask = unwrapped.unpatchify(hidden.expand_as(patches).contiguous(), size)
    reconstructed = unwrapped.unpatchify(patches * (1 - hidden) + predicted * hidden, size)
    scale = torch.tensor(std, device=pixel_values.device).view(1, 3, 1, 1)
    shift = torch.tensor(mean, device=pixel_values.device).view(1, 3, 1, 1)

    def to_unit(images: torch.Tensor) -> torch.Tensor:
        return (images.float() * scale + shift).clamp(0, 1)

    original = to_unit(pixel_values)
    masked = original * (1 - mask) + 0.5 * mask
    return original, masked, to_unit(reconstructed)


def write_reconstruction_figure(
    accelerator: Accelerator, model, eval_set: MaskedImageDataset, on_device, normalisation: tuple, path: Path
) -> None:
    """The PNG of the first held-out images: a row of originals, a row with their masked patches grey, a row of
    reconstructions (the held-out evaluation's fixed masks). Every process runs the forward; the main one writes."""
    # Deferred: torchvision's utils are needed by this figure only.
    from torchvision.utils import make_grid, save_image

    unwrapped = accelerator.unwrap_model(model)
    count = min(FIGURE_IMAGES, len(eval_set))
    examples = [eval_set[i] for i in range(count)]
    pixel_values = on_device(torch.stack([e["pixel_values"] for e in examples]).to(accelerator.device))
    noise = torch.stack([e["noise"] for e in examples]).to(pixel_values.device)
    images = torch.cat(reconstruction_images(model, unwrapped, pixel_values, noise, *normalisation))
    if images.shape[-1] < FIGURE_MIN_SIZE:
        factor = -(-FIGURE_MIN_SIZE // images.shape[-1])
        images = F.interpolate(images, scale_factor=factor, mode="nearest")
    if accelerator.is_main_process:
        save_image(make_grid(images.cpu(), nrow=count, padding=2, pad_value=1.0), path)

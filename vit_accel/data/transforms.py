"""Augmentation presets, split in two: a cheap per-example part on the CPU and a batched part on the accelerator.

The per-example part (`Pipeline.__call__`) turns the image upright, converts it to RGB and augments it at the
preset's native size, returning uint8 so that workers move 1 byte per pixel. The batched part (`Pipeline.on_device`)
resizes the whole batch to the model's size and normalises it. For `cifar` this means AutoAugment runs on 32x32
images instead of 224x224 ones (FlagAI's order), which is where the CPU time went.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..errors import UserError
from ..weights.conversion import GOOGLE_MEAN_STD
from .arguments import AUGMENTATIONS

CIFAR_SIZE = 32
# Google's fine-tuning recipe scales pixels to [-1, 1]; the inception preset always uses it.
INCEPTION_MEAN = INCEPTION_STD = GOOGLE_MEAN_STD
# Google's inception crop (vit_jax `inception_crop`) samples 5%-100% of the image area.
INCEPTION_CROP_SCALE = (0.05, 1.0)
# MAE's pre-training crop (its `main_pretrain.py`): 20%-100% of the area, bicubic, then a flip; nothing else.
MAE_CROP_SCALE = (0.2, 1.0)
# Evaluation crop ratio for the presets that centre-crop (timm's and torchvision's usual 0.875).
EVAL_CROP_PCT = 0.875


def prepare_image(image: PIL.Image.Image) -> PIL.Image.Image:
    """A decoded image as every entry point must see it: upright (its EXIF orientation applied) and 8-bit RGB.

    Cameras store pixels as the sensor read them and record the rotation in the EXIF Orientation tag. 🤗 datasets'
    `Image` feature and transformers' `load_image` (what the image-classification pipeline calls) both apply it, so
    training, evaluation and prediction apply it too: a photo and its upright copy get the same pixels everywhere.
    `exif_transpose` drops the tag from what it returns, so an image that was already turned stays as it is.
    """
    return to_rgb(PIL.ImageOps.exif_transpose(image))


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL image as 8-bit RGB: grayscale, 16-bit, float, palette, CMYK; transparency is composited over white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: `convert("L")` would clip instead of scaling, so scale to 8 bit by the type's range.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = PIL.Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        # 32-bit float: [0, 1] as most float images are; wider values (a TIFF of raw measurements, [-1, 1]) are
        # scaled from their own range, which clipping to [0, 1] would turn white (or black).
        array = np.asarray(image, dtype=np.float64)
        finite = array[np.isfinite(array)]
        low = min(float(finite.min()), 0.0) if finite.size else 0.0
        high = max(float(finite.max()), 1.0) if finite.size else 1.0
        array = np.nan_to_num(array, nan=low, posinf=high, neginf=low)
        image = PIL.Image.fromarray(((array - low) * (255.0 / (high - low))).round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class Pipeline:
    """One augmentation preset for training or evaluation.

    `__call__` runs per example on the CPU and returns uint8 (3, h, w) with the same h, w for every example;
    `on_device` runs per batch wherever the batch is and returns float32 (B, 3, S, S), normalised.
    """

    def __init__(
        self,
        preset: str,
        train: bool,
        cpu_transform: Callable[[PIL.Image.Image], torch.Tensor],
        native_size: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.preset = preset
        self.train = train
        self.cpu_transform = cpu_transform
        self.native_size = native_size
        self.image_size = image_size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: PIL.Image.Image, generator: torch.Generator) -> torch.Tensor:
        """`prepare_image`, then augmentation at the native size; randomness comes from `generator` only."""
        image = prepare_image(image)
        # torchvision's v2 transforms draw from the global torch RNG; fork it so that the result is a pure function
        # of `generator` (hence of seed, epoch and index) and the caller's RNG stream is left untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            pixels = self.cpu_transform(image)
        return pixels.contiguous()

    def on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, h, w) on any device -> float32 (B, 3, S, S): resized to the model's size and normalised."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"Expected a batch of shape (B, 3, h, w); got {tuple(batch.shape)}.")
        pixels = resize_batch(batch, self.image_size)
        # x * (1 / (255 std)) - mean / std, in place on a fresh float32 tensor (never on the caller's): a mixed
        # uint8 * float32 op into a preallocated output is several times slower on the CPU than convert-then-scale.
        # A channels-last batch (the fast decoders') becomes NCHW in the same pass.
        out = pixels.to(dtype=torch.float32, copy=pixels is batch, memory_format=torch.contiguous_format)
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=out.device).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=out.device).view(1, 3, 1, 1)
        return out.mul_(scale).add_(shift)

    def __repr__(self) -> str:
        return (
            f"Pipeline(preset={self.preset!r}, train={self.train}, native_size={self.native_size}, "
            f"image_size={self.image_size}, mean={self.mean}, std={self.std})"
        )


def resize_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a (B, C, h, w) batch to (size, size); a no-op when already at size.

    On the CPU a uint8 batch stays uint8 and goes through PyTorch's uint8 kernel (as torchvision's Resize on uint8
    tensors does): measured 3-5x faster than resizing in float32 on one core, and a quarter of the memory. The batch
    stays NCHW-contiguous: a channels-last round trip costs more in the copy back than it saves. Elsewhere (an
    accelerator) the batch is resized in float32. Antialiasing only matters when shrinking; upsampling is plain
    bilinear either way.
    """
    if batch.shape[-2:] == (size, size):
        return batch
    if batch.dtype == torch.uint8 and batch.device.type == "cpu":
        return F.interpolate(
            batch.contiguous(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return F.interpolate(batch.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _to_uint8() -> list:
    return [v2.PILToTensor()]


def build_pipeline(
    preset: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    random_erasing: float = 0.0,
) -> Pipeline:
    """The training or evaluation pipeline of `preset` for a model taking `image_size` px images.

    mean/std are the model image processor's (in [0, 1] units); `inception` forces [-1, 1] as Google's recipe does.
    `random_erasing` (training only) is the probability that torchvision's `RandomErasing` blanks a random rectangle
    of an example (2-33% of its area) with the mean colour, i.e. zero after normalisation, as torchvision's reference
    classification recipe does by erasing normalised tensors with 0.
    """
    if preset not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation preset {preset!r}; choose one of: {', '.join(AUGMENTATIONS)}.")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    if not 0.0 <= random_erasing <= 1.0:
        raise UserError(f"--random_erasing must be a probability in [0, 1], got {random_erasing}.")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each and std > 0; got mean={mean}, std={std}.")
    pipeline = _build(preset, image_size, mean, std, train)
    if train and random_erasing > 0:
        # On the uint8 tensor that leaves the worker: the fill is the mean in 0-255 units, per channel.
        fill = [round(255.0 * m) for m in pipeline.mean]
        erase = v2.RandomErasing(p=random_erasing, value=fill)
        pipeline.cpu_transform = v2.Compose([pipeline.cpu_transform, erase])
    return pipeline


def _build(preset: str, image_size: int, mean: Sequence[float], std: Sequence[float], train: bool) -> Pipeline:
    size = image_size
    resize = v2.Resize((size, size), antialias=True)
    if preset == "cifar":
        # FlagAI's CIFAR recipe, reordered: everything at 32 px, the resize to the model's size happens per batch.
        native = CIFAR_SIZE
        to_native = [_ResizeIfNeeded(native)]
        if train:
            ops = [
                *to_native,
                v2.RandomCrop(native, padding=4),
                v2.RandomHorizontalFlip(),
                v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            ]
        else:
            ops = to_native
        return Pipeline(preset, train, v2.Compose([*ops, *_to_uint8()]), native, size, mean, std)
    if preset == "inception":
        if train:
            ops = [v2.RandomResizedCrop(size, scale=INCEPTION_CROP_SCALE, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops = [resize]  # Google evaluates on the resized image, no crop
        return Pipeline(preset, train, v2.Compose([*ops, *_to_uint8()]), size, size, INCEPTION_MEAN, INCEPTION_STD)
    if preset == "randaugment":
        if train:
            ops = [
                v2.RandomResizedCrop(size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandAugment(num_ops=2, magnitude=9),
            ]
        else:
            ops = [v2.Resize(int(round(size / EVAL_CROP_PCT)), antialias=True), v2.CenterCrop(size)]
        return Pipeline(preset, train, v2.Compose([*ops, *_to_uint8()]), size, size, mean, std)
    if preset == "mae":
        bicubic = v2.InterpolationMode.BICUBIC
        if train:
            ops = [
                v2.RandomResizedCrop(size, scale=MAE_CROP_SCALE, interpolation=bicubic, antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        else:
            ops = [
                v2.Resize(int(round(size / EVAL_CROP_PCT)), interpolation=bicubic, antialias=True),
                v2.CenterCrop(size),
            ]
        return Pipeline(preset, train, v2.Compose([*ops, *_to_uint8()]), size, size, mean, std)
    # "none": resize only, for training and evaluation alike.
    return Pipeline(preset, train, v2.Compose([resize, *_to_uint8()]), size, size, mean, std)


class _ResizeIfNeeded(torch.nn.Module):
    """Resize a PIL image to size x size unless it already is (CIFAR images are; others are brought to 32 px)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: PIL.Image.Image) -> PIL.Image.Image:
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), PIL.Image.Resampling.BILINEAR, reducing_gap=None)

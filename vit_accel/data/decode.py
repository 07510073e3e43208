"""Image decoding for training input, with a fast path for JPEGs that are cropped and shrunk anyway.

A random-resized crop of a 500x375 photo down to 224 px throws most decoded pixels away. libjpeg can decode at 1/2,
1/4 or 1/8 scale in the DCT domain (Pillow's `Image.draft`), several times faster than a full decode. The fast path
(`pil_draft`) draws the crop exactly as torchvision's `RandomResizedCrop` does (the same random numbers from the same
generator, on the full image's size), then decodes at the smallest scale that still gives the crop at least the
output size in both directions, and resizes that region to the output size. Every later transform (flip, RandAugment,
RandomErasing) runs unchanged on the same random stream, so crops and flips are identical to the full decode's;
pixels differ only by the DCT-domain downscale's filtering. Where no reduced scale applies (a crop under twice the
output size, a PNG, a JPEG with an EXIF rotation) the result is bitwise the full decode's.
"""

from __future__ import annotations

import io
import math

import numpy as np
import PIL.ExifTags
import PIL.Image
import torch
from torchvision.transforms import v2

from .arguments import IMAGE_DECODERS
from .transforms import Pipeline, prepare_image


def _leaf_transforms(transform) -> list:
    """The transforms of a (possibly nested) v2.Compose, flattened in the order they run."""
    if isinstance(transform, v2.Compose):
        return [leaf for inner in transform.transforms for leaf in _leaf_transforms(inner)]
    return [transform]


def draft_applies(pipeline: Pipeline) -> bool:
    """Whether the pipeline starts with a RandomResizedCrop, the transform the DCT-domain path replaces."""
    leaves = _leaf_transforms(pipeline.cpu_transform)
    return pipeline.train and bool(leaves) and isinstance(leaves[0], v2.RandomResizedCrop)


def resolve_decoder(decoder: str, pipeline: Pipeline) -> str:
    """`auto` -> `pil_draft` where the pipeline begins with a random-resized crop (measured several times faster on
    JPEG photos), else `pil`; `pil_draft` on a pipeline without one decodes in full, as `pil` does."""
    if decoder not in IMAGE_DECODERS:
        raise ValueError(f"image decoder must be one of {', '.join(IMAGE_DECODERS)}; got {decoder!r}.")
    if decoder == "auto":
        return "pil_draft" if draft_applies(pipeline) else "pil"
    return decoder


def open_image(image: bytes | str | PIL.Image.Image) -> PIL.Image.Image:
    """A lazily opened image (header read, pixels not yet decoded) from encoded bytes or a path."""
    if isinstance(image, PIL.Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return PIL.Image.open(io.BytesIO(bytes(image)))
    return PIL.Image.open(image)


def draft_resized_crop(image: PIL.Image.Image, crop: v2.RandomResizedCrop, params: dict) -> PIL.Image.Image:
    """The crop `params` (top, left, height, width on the full image) of a lazily opened image, resized to the crop
    transform's size, decoding a JPEG only at the scale the crop needs."""
    out_h, out_w = crop.size
    full_w, full_h = image.size
    top, left, height, width = params["top"], params["left"], params["height"], params["width"]
    drafted = False
    if image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
        # draft() keeps each side >= the requested one: request the full size scaled so that the crop region stays
        # at least the output size in both directions.
        factor = max(out_w / width, out_h / height)
        if factor < 1.0:
            drafted = image.draft(image.mode, (math.ceil(full_w * factor), math.ceil(full_h * factor))) is not None
    image.load()
    image = prepare_image(image)  # orientation 1 here: only the RGB conversion acts
    if not drafted or image.size == (full_w, full_h):
        return crop.transform(image, params)  # torchvision's own kernel: bitwise the full decode's result
    scale_x, scale_y = image.size[0] / full_w, image.size[1] / full_h
    box = (left * scale_x, top * scale_y, (left + width) * scale_x, (top + height) * scale_y)
    # The crop's box in the reduced image is fractional: Pillow resamples exactly that region (BILINEAR, antialiased
    # when shrinking, as torchvision's crop-then-resize is on PIL images).
    return image.resize((out_w, out_h), PIL.Image.Resampling.BILINEAR, box=box)


def prepare(
    pipeline: Pipeline, image: bytes | str | PIL.Image.Image, generator: torch.Generator, decoder: str
) -> torch.Tensor:
    """Decode and augment one example: uint8 (3, h, w), a pure function of the image and `generator`.

    `decoder="pil"` is exactly `pipeline(full decode, generator)`; `"pil_draft"` is the DCT-domain path above (same
    random draws, see the module docstring).
    """
    opened = open_image(image)
    # An EXIF rotation turns the crop's frame: such images (a minority) take the full decode, the same draws.
    rotated = opened.getexif().get(PIL.ExifTags.Base.Orientation, 1) != 1
    if decoder != "pil_draft" or not draft_applies(pipeline) or rotated:
        opened.load()
        return pipeline(opened, generator)
    leaves = _leaf_transforms(pipeline.cpu_transform)
    crop, rest = leaves[0], leaves[1:]
    # The same seed derivation as Pipeline.__call__, so both paths consume the same random numbers.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        # make_params reads only the size, which a lazily opened image knows from its header.
        params = crop.make_params([opened])
        result = draft_resized_crop(opened, crop, params)
        if len(rest) >= 2 and type(rest[0]) is v2.RandomHorizontalFlip and type(rest[1]) is v2.PILToTensor:
            # Flip then PILToTensor, done as torchvision's flip decides (`torch.rand(1) < p`, the same draw) but on
            # the uint8 tensor: the same pixels without a PIL transpose and two v2 dispatches.
            flip = bool(torch.rand(1) < rest[0].p)
            result = torch.from_numpy(np.asarray(result).copy()).permute(2, 0, 1)
            if flip:
                result = result.flip(-1)
            rest = rest[2:]
        for transform in rest:
            result = transform(result)
    return result.contiguous()

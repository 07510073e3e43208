"""Image decoding for training input, with a fast path for JPEGs that are cropped and shrunk anyway.

A random-resized crop of a photo down to 224 px throws most decoded pixels away, and the usual pipeline then spends
as long again on a float32 tensor that only the accelerator needs. The fast path (`pil_draft`; `simplejpeg` where
the optional `simplejpeg` package is installed: the same steps with libjpeg-turbo called directly, which decodes the
same pixels about a third faster than Pillow's JPEG plugin and into a packed RGB array; `turbojpeg` where the
optional `turbojpeg` wheel's library loads: the same pixels again, libjpeg-turbo reconstructing only the crop's
region, see `libturbojpeg`):

1. draws the crop box as torchvision's `RandomResizedCrop` does (the same random numbers in the same order, from a
   local generator seeded as the full decode's global stream: the same box, seed for seed), from the size in the
   file's header, before any pixel is decoded;
2. decodes a JPEG at the smallest DCT scale (libjpeg's 1/2, 1/4, 1/8, through Pillow's `Image.draft`) that still
   leaves the crop box at least the output size in both directions; most crops of ImageNet-sized photos need the
   full scale, most crops of larger ones do not. With simplejpeg, a sequential JPEG (the common kind: one scan,
   rows in order) is decoded only down to a row of MCUs below the crop: its frame header is rewritten to say fewer
   rows, and libjpeg-turbo stops there with the same pixels (tested bit for bit against the whole image's decode);
   the rows above the crop still cost their entropy decoding (without restart markers, the coded data tells where
   a row starts only by decoding those before it). With turbojpeg, the rows above and the columns beside the crop
   cost only that entropy decoding (no inverse DCT, upsampling or colour conversion), and decoding stops below it;
3. resizes the box to the output size on uint8: at full scale with PyTorch's antialiased bilinear uint8 kernel (the
   kernel torchvision's `resized_crop` uses on uint8 tensors, reading Pillow's pixel buffer without a copy, about
   twice as fast as Pillow's resize here); at a reduced scale with Pillow's resize of the box's exact fractional
   region (antialiased bilinear too);
4. flips the uint8 tensor on torchvision's own draw (`torch.rand(1) < p`), and runs every later transform
   (RandAugment on the PIL image, RandomErasing on the tensor) unchanged on the same random stream.

The result stays uint8, in the resize's channels-last memory (`collate` keeps a batch of such images channels-last);
conversion to float, to NCHW and normalisation happen per batch in `Pipeline.on_device`. The fast decoders hand
Pillow exactly the pixels its resize reads, so all three give the same pixels, bit for bit. So the crop
boxes and flips are identical to the full decode's, seed for seed, and pixels differ only by the resize kernel (the
same bilinear antialiased filter in fixed point, at most 1 level of 255 apart on photos) and, where a reduced DCT
scale is used, by libjpeg's downscaling (a few levels on average). Other formats (PNG) take steps 1, 3 and 4 at full
scale. A JPEG with an EXIF rotation, or a pipeline that does not start with a random-resized crop, takes the full
decode, exactly as `pil` does.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import warnings

import numpy as np
import PIL.ExifTags
import PIL.Image
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .arguments import IMAGE_DECODERS, check_decoder_installed, simplejpeg_available, turbojpeg_available
from .transforms import Pipeline, build_pipeline, to_rgb

# What PIL raises on truncated, corrupt or unsupported files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, PIL.UnidentifiedImageError, PIL.Image.DecompressionBombError)


class UndecodableImageError(Exception):
    """The image's bytes (or file) cannot be opened or decoded; the decoder's own error is the cause."""


def _leaf_transforms(transform) -> list:
    """The transforms of a (possibly nested) v2.Compose, flattened in the order they run."""
    if isinstance(transform, v2.Compose):
        return [leaf for inner in transform.transforms for leaf in _leaf_transforms(inner)]
    return [transform]


def draft_applies(pipeline: Pipeline) -> bool:
    """Whether the pipeline is a training one that starts with a RandomResizedCrop, the transform the fast path
    replaces."""
    leaves = _leaf_transforms(pipeline.cpu_transform)
    return pipeline.train and bool(leaves) and isinstance(leaves[0], v2.RandomResizedCrop)


FAST_DECODERS: tuple[str, ...] = ("pil_draft", "simplejpeg", "turbojpeg")


def resolve_decoder(decoder: str | None, pipeline: Pipeline) -> str:
    """`auto` (or None) -> the fast path where the pipeline begins with a random-resized crop (same crops and flips):
    `turbojpeg` or else `simplejpeg` where its package is installed, else `pil_draft`; `pil` for every other
    pipeline. A fast decoder on a pipeline without such a crop decodes in full, as `pil` does."""
    decoder = "auto" if decoder is None else decoder
    if decoder not in IMAGE_DECODERS:
        raise ValueError(f"image decoder must be one of {', '.join(IMAGE_DECODERS)}; got {decoder!r}.")
    check_decoder_installed(decoder)
    if decoder == "auto":
        if not draft_applies(pipeline):
            return "pil"
        if turbojpeg_available():
            return "turbojpeg"
        return "simplejpeg" if simplejpeg_available() else "pil_draft"
    return decoder


def auto_decoder(augmentation: str) -> str:
    """What `auto` decodes the training images of the `augmentation` preset with on this machine."""
    pipeline = build_pipeline(augmentation, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), train=True)
    return resolve_decoder("auto", pipeline)


def open_image(image: bytes | str | PIL.Image.Image) -> PIL.Image.Image:
    """A lazily opened image (header read, pixels not yet decoded) from encoded bytes or a path."""
    if isinstance(image, PIL.Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return PIL.Image.open(io.BytesIO(bytes(image)))
    return PIL.Image.open(image)


def _pixels_hwc(image: PIL.Image.Image) -> torch.Tensor:
    """A uint8 (h, w, c) view of an RGB image's pixels: Pillow's own 4-byte-per-pixel buffer through its Arrow export
    where it has one (Pillow >= 11.2; no copy), else a packed copy."""
    array = None
    if hasattr(image, "__arrow_c_array__"):
        import pyarrow  # a dependency of 🤗 datasets

        try:
            pixels = pyarrow.array(image)
        except (ValueError, TypeError, pyarrow.ArrowException):
            pixels = None  # e.g. an image stored in several blocks: no single buffer to export
        if pixels is not None and pyarrow.types.is_fixed_size_list(pixels.type) and pixels.offset == 0:
            channels = pixels.type.list_size
            data = pixels.values.buffers()[1]
            array = np.frombuffer(data, dtype=np.uint8, count=len(pixels) * channels)
            array = array.reshape(image.size[1], image.size[0], channels)
    if array is None:
        array = np.asarray(image)
    with warnings.catch_warnings():
        # Read-only memory (Pillow's buffer, or the bytes of a copy): the tensor is only read, never written.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _resize_region(region: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (h, w, c) uint8 crop of a decoded image resized to `size` (h, w) by PyTorch's antialiased bilinear uint8
    kernel, the one torchvision's `resized_crop` uses on uint8 tensors: (c, h, w)."""
    # The kernel's vectorised path reads a dense channels-last image: copying the crop into one first is faster than
    # letting it read the crop in place, a strided view of the whole decoded image.
    dense = region.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    return F.interpolate(dense, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _window(full: int, scaled: int, start: int, length: int, out: int) -> tuple[int, int]:
    """Along one axis, the pixels [first, end) of an image decoded at a reduced scale (`scaled` pixels in all, of
    `full` at full scale) that Pillow's resize of the crop's [start, start + length) to `out` pixels reads: the
    scaled box, its filter's support (an output pixel's footprint, at least one pixel) and a pixel more each side."""
    factor = scaled / full
    support = max(1.0, length * factor / out)
    first = max(0, math.floor(start * factor - support) - 1)
    end = min(scaled, math.ceil((start + length) * factor + support) + 1)
    return first, end


def _windows(full: tuple[int, int], scaled: tuple[int, int], params: dict, size: tuple[int, int]) -> tuple:
    """The rows and the columns (each [first, end)) of `_window` for the crop `params` of an image of `full`
    (width, height) decoded at `scaled` (width, height), resized to `size` (h, w)."""
    rows = _window(full[1], scaled[1], params["top"], params["height"], size[0])
    columns = _window(full[0], scaled[0], params["left"], params["width"], size[1])
    return rows, columns


def _rgbx_image(pixels: np.ndarray) -> PIL.Image.Image:
    """A Pillow RGBX image over (h, w, 4) uint8 pixels (copied first where their rows are not contiguous)."""
    height, width = pixels.shape[:2]
    return PIL.Image.frombuffer("RGBX", (width, height), np.ascontiguousarray(pixels), "raw", "RGBX", 0, 1)


def _resize_window(
    window: PIL.Image.Image, origin: tuple[int, int], scale: tuple[float, float], params: dict, size: tuple[int, int]
) -> torch.Tensor:
    """Pillow's antialiased bilinear resize of the crop's exact (fractional) box, from `window`, the pixels from
    `origin` (row, column) on of an image decoded at `scale` (x, y) of the full size: a uint8 (3, h, w) tensor.

    Pillow is handed exactly the pixels its filter reads (`_windows`), because its rounding depends on the box's
    offset in the image and its choice of pass order on the image's size: the result is the same whether the image
    was decoded whole, only down to below the crop, or only the crop's region."""
    scale_x, scale_y = scale
    row, column = origin
    top, left, height, width = params["top"], params["left"], params["height"], params["width"]
    box = (
        left * scale_x - column,
        top * scale_y - row,
        (left + width) * scale_x - column,
        (top + height) * scale_y - row,
    )
    resized = window.resize((size[1], size[0]), PIL.Image.Resampling.BILINEAR, box=box)
    return _pixels_hwc(resized)[..., :3].permute(2, 0, 1)


def _dct_scale(full: tuple[int, int], wanted: tuple[int, int]) -> int:
    """The largest of libjpeg's DCT downscaling denominators (8, 4, 2, 1) that keeps both sides >= `wanted`, as
    Pillow's `draft` picks it."""
    ratio = min(full[0] // wanted[0], full[1] // wanted[1])
    return next(scale for scale in (8, 4, 2, 1) if ratio >= scale)


# Start-of-frame markers of sequential Huffman-coded JPEGs (baseline, extended): the one scan of such a file holds
# every row in order, so the image's first rows decode from the data's first part. Other kinds (progressive,
# arithmetic, lossless) are decoded whole.
_SEQUENTIAL_FRAMES = (0xC0, 0xC1)
_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_LOSSLESS_FRAMES = (0xC3, 0xC7, 0xCB, 0xCF)
_EXIF_OR_XMP = 0xE1  # APP1: where Exif and XMP store an orientation, which Pillow then applies
_START_OF_SCAN, _END_OF_IMAGE = 0xDA, b"\xff\xd9"


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    """What the fast path needs from a JPEG's markers, read up to its first scan."""

    size: tuple[int, int]  # (width, height)
    height_at: int  # offset of the frame header's 2-byte image height
    mcu_rows: int  # pixel rows per row of MCUs (8 x the largest vertical sampling factor)
    mcu_columns: int  # pixel columns per column of MCUs (8 x the largest horizontal sampling factor)
    plain: bool  # 8-bit lossy coding of 1 or 3 components (grayscale, YCbCr or RGB): what libjpeg-turbo turns to RGB
    one_scan: bool  # sequential Huffman coding with every component in its first scan
    complete: bool  # an end-of-image marker follows the first scan: the file is not cut short
    orientation_carrier: bool  # an APP1 segment (Exif or XMP), where an orientation may be stored


def read_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG (its markers up to the first scan), or None for another format or a malformed one."""
    if data[:2] != b"\xff\xd8":
        return None
    at, frame, carrier = 2, None, False
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2:
            return None
        if marker in _FRAMES:
            components = data[at + 9] if at + 9 < len(data) else 0
            sampling = data[at + 11 : at + 11 + 3 * components : 3]
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            if not components or len(sampling) != components or not height or not width:
                return None
            frame = (
                marker,
                at + 5,
                (width, height),
                (8 * max(factor & 0x0F for factor in sampling), 8 * max(factor >> 4 for factor in sampling)),
                components,
                data[at + 4] == 8 and marker not in _LOSSLESS_FRAMES and components in (1, 3),
            )
        elif marker == _EXIF_OR_XMP:
            carrier = True
        elif marker == _START_OF_SCAN:
            if frame is None or at + 4 >= len(data):
                return None
            kind, height_at, size, (mcu_rows, mcu_columns), components, plain = frame
            scan_end = at + 2 + length
            return JpegHeader(
                size=size,
                height_at=height_at,
                mcu_rows=mcu_rows,
                mcu_columns=mcu_columns,
                plain=plain,
                one_scan=kind in _SEQUENTIAL_FRAMES and data[at + 4] == components,
                # Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker.
                complete=data.rfind(_END_OF_IMAGE) >= scan_end,
                orientation_carrier=carrier,
            )
        at += 2 + length
    return None


def _simplejpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a YCbCr or grayscale JPEG without an APP1 segment (where an orientation could be), of a size
    libjpeg-turbo reads alike; None for anything else (another format, CMYK, a possible orientation), which Pillow
    then opens."""
    import simplejpeg

    header = read_jpeg_header(data)
    if header is None or header.orientation_carrier:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB") or (width, height) != header.size:
        return None
    return header


def _first_rows(data: bytes, header: JpegHeader | None, rows: int) -> bytes:
    """The JPEG with its frame header saying `rows` rows (rounded up to a row of MCUs), where its coding allows:
    libjpeg-turbo then decodes those rows exactly as in the whole image, but the last (whose chroma would be
    interpolated with the next row's) and stops, skipping the rest of the scan unread."""
    if header is None or not header.one_scan or not header.complete:
        return data
    rows = -(-rows // header.mcu_rows) * header.mcu_rows
    if rows >= header.size[1]:
        return data
    return data[: header.height_at] + rows.to_bytes(2, "big") + data[header.height_at + 2 :]


def _simplejpeg_resized_crop(
    data: bytes, header: JpegHeader | None, full: tuple[int, int], size: tuple[int, int], params: dict
) -> torch.Tensor:
    """`resized_crop`'s steps with libjpeg-turbo through simplejpeg: the same DCT scale, the same resize, decoding
    the rows down to a little below the crop only."""
    import simplejpeg

    out_h, out_w = size
    full_w, full_h = full
    top, left, height, width = params["top"], params["left"], params["height"], params["width"]
    factor = max(out_w / width, out_h / height)
    scale = _dct_scale(full, (math.ceil(full_w * factor), math.ceil(full_h * factor))) if factor < 1.0 else 1
    scaled_w, scaled_h = -(-full_w // scale), -(-full_h // scale)  # libjpeg's size at 1/scale
    # The rows the result depends on, and below them a row of MCUs: where a shortened image is decoded, its last row
    # (whose chroma lacks the next row's) stays outside.
    if scale == 1:
        (first, end), columns = (top, top + height), (left, left + width)
    else:
        (first, end), columns = _windows(full, (scaled_w, scaled_h), params, size)
    cut = _first_rows(data, header, end * scale + (header.mcu_rows if header else 0))
    try:
        # libjpeg-turbo decodes at the smallest n/8 scale leaving the image at least this size: 1/scale exactly.
        # Recoverable damage (corrupt entropy-coded data) is tolerated as Pillow tolerates it; a file cut short is
        # not (strict where no end-of-image marker follows the scan), again as in Pillow.
        pixels = simplejpeg.decode_jpeg(
            cut,
            # Pillow keeps RGB in 4 bytes per pixel: RGBX is what it can resize in place, without a copy.
            colorspace="RGB" if scale == 1 else "RGBX",
            min_height=scaled_h if cut is data else 0,
            min_width=scaled_w,
            strict=header is None or not header.complete,
        )
    except ValueError as error:
        raise UndecodableImageError(f"{type(error).__name__}: {error}") from error
    if scale == 1:
        return _resize_region(torch.from_numpy(pixels)[top : top + height, left : left + width], size)
    window = _rgbx_image(pixels[first:end, columns[0] : columns[1]])
    return _resize_window(window, (first, columns[0]), (scaled_w / full_w, scaled_h / full_h), params, size)


def _turbojpeg_header(data: bytes) -> JpegHeader | None:
    """The header of an 8-bit lossy grayscale, YCbCr or RGB JPEG without an APP1 segment (where an orientation could
    be); None for anything else, which Pillow then opens."""
    header = read_jpeg_header(data)
    if header is None or header.orientation_carrier or not header.plain:
        return None
    return header


def _turbojpeg_resized_crop(data: bytes, header: JpegHeader, size: tuple[int, int], params: dict) -> torch.Tensor:
    """`resized_crop`'s steps with libjpeg-turbo reconstructing only the crop's region (at full scale) or the
    window its resize reads (at a reduced scale): the same pixels as the other fast decoders."""
    from .libturbojpeg import TurboJpegError, decode_region

    out_h, out_w = size
    full_w, full_h = header.size
    top, left, height, width = params["top"], params["left"], params["height"], params["width"]
    factor = max(out_w / width, out_h / height)
    scale = _dct_scale(header.size, (math.ceil(full_w * factor), math.ceil(full_h * factor))) if factor < 1.0 else 1
    scaled = (-(-full_w // scale), -(-full_h // scale))  # libjpeg's size at 1/scale
    if scale == 1:
        rows, columns = (top, top + height), (left, left + width)
    else:
        rows, columns = _windows(header.size, scaled, params, size)
    # A file cut short is read to its end, strictly, so that it fails as in Pillow (which decodes every row); damage
    # inside a complete file is tolerated, as Pillow tolerates it.
    strict = not header.complete
    try:
        pixels = decode_region(
            data,
            header.size,
            header.mcu_columns,
            scale,
            (0, scaled[1]) if strict else rows,
            columns,
            strict=strict,
            mode="RGB" if scale == 1 else "RGBX",
        )
    except TurboJpegError as error:
        raise UndecodableImageError(f"{type(error).__name__}: {error}") from error
    if strict:
        pixels = pixels[rows[0] : rows[1]]
    if scale == 1:
        return _resize_region(torch.from_numpy(pixels), size)
    window = _rgbx_image(pixels)
    return _resize_window(window, (rows[0], columns[0]), (scaled[0] / full_w, scaled[1] / full_h), params, size)


# The fast decoders that read a JPEG's bytes themselves, each with its header check (None: Pillow opens the image).
_BYTE_DECODERS = {"simplejpeg": _simplejpeg_header, "turbojpeg": _turbojpeg_header}


def resized_crop(image: PIL.Image.Image, size: tuple[int, int], params: dict) -> torch.Tensor:
    """The crop `params` (top, left, height, width on the full image) of a lazily opened image, resized to `size`
    (h, w), decoding a JPEG only at the scale the crop needs: a uint8 (3, h, w) tensor. Raises
    `UndecodableImageError` where the image cannot be decoded."""
    out_h, out_w = size
    full_w, full_h = image.size
    top, left, height, width = params["top"], params["left"], params["height"], params["width"]
    drafted = False
    try:
        if image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
            # draft() keeps each side >= the requested one: request the full size scaled so that the crop region
            # stays at least the output size in both directions.
            factor = max(out_w / width, out_h / height)
            if factor < 1.0:
                drafted = image.draft(image.mode, (math.ceil(full_w * factor), math.ceil(full_h * factor))) is not None
        image.load()
    except DECODE_ERRORS as error:
        raise UndecodableImageError(f"{type(error).__name__}: {error}") from error
    # Orientation 1 here (prepare_image's turn would be a copy of the whole image): only the RGB conversion acts.
    image = to_rgb(image)
    if drafted and image.size != (full_w, full_h):
        # The crop's box in the reduced image is fractional: Pillow resamples exactly that region.
        scaled_w, scaled_h = image.size
        (first, end), columns = _windows((full_w, full_h), image.size, params, size)
        pixels = _pixels_hwc(image)
        if pixels.shape[2] == 4:  # Pillow's own buffer (RGB in 4 bytes a pixel)
            window = _rgbx_image(pixels[first:end, columns[0] : columns[1]].numpy())
        else:
            window = image.crop((columns[0], first, columns[1], end))
        origin = (first, columns[0])
        return _resize_window(window, origin, (scaled_w / full_w, scaled_h / full_h), params, size)
    # Pillow stores an RGB pixel in 4 bytes: resized along (4 dense channels resize faster than 3 cut from 4) and
    # dropped after.
    return _resize_region(_pixels_hwc(image)[top : top + height, left : left + width], size)[:3]


@functools.lru_cache(maxsize=16)
def _log_ratio_bounds(ratio: tuple[float, float]) -> tuple[float, float]:
    # In float32, as torchvision's RandomResizedCrop keeps them, so that the same draws give the same aspect ratios.
    low, high = torch.log(torch.tensor(ratio)).tolist()
    return low, high


def draw_box(crop: v2.RandomResizedCrop, size: tuple[int, int], generator: torch.Generator) -> dict:
    """A random-resized-crop box {top, left, height, width} of an image of `size` (width, height), from `generator`.

    The Inception-style sampling of `crop`'s scale and ratio ranges: up to 10 tries of an area fraction (uniform in
    `scale`) and a log aspect ratio (uniform in log `ratio`) whose rounded box fits, placed uniformly; else the whole
    image, cut to the nearest allowed ratio and centred. The random numbers are drawn in torchvision's order and
    precision (float32 uniforms, then integer offsets), so a generator seeded as torch's global one gives the box
    torchvision's `RandomResizedCrop` draws there (tested seed for seed), without swapping the global state.
    """
    width, height = size
    area = width * height
    log_low, log_high = _log_ratio_bounds(tuple(crop.ratio))
    for _ in range(10):
        fraction = torch.empty(1).uniform_(crop.scale[0], crop.scale[1], generator=generator).item()
        aspect = torch.empty(1).uniform_(log_low, log_high, generator=generator).exp_().item()
        box_w = int(round(math.sqrt(area * fraction * aspect)))
        box_h = int(round(math.sqrt(area * fraction / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(torch.randint(0, height - box_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - box_w + 1, (1,), generator=generator))
            return {"top": top, "left": left, "height": box_h, "width": box_w}
    image_ratio = width / height
    if image_ratio < min(crop.ratio):
        box_w, box_h = width, int(round(width / min(crop.ratio)))
    elif image_ratio > max(crop.ratio):
        box_w, box_h = int(round(height * max(crop.ratio))), height
    else:
        box_w, box_h = width, height
    return {"top": (height - box_h) // 2, "left": (width - box_w) // 2, "height": box_h, "width": box_w}


def prepare(
    pipeline: Pipeline, image: bytes | str | PIL.Image.Image, generator: torch.Generator, decoder: str
) -> torch.Tensor:
    """Decode and augment one example: uint8 (3, h, w), a pure function of the image and `generator`.

    `decoder="pil"` is exactly `pipeline(full decode, generator)`; `"pil_draft"`, `"simplejpeg"` and `"turbojpeg"` are
    the fast path above (same random draws, see the module docstring). Raises `UndecodableImageError` where the image
    cannot be opened or decoded.
    """
    fast = decoder in FAST_DECODERS and draft_applies(pipeline)
    data = size = opened = header = None
    try:
        if fast and decoder in _BYTE_DECODERS and not isinstance(image, PIL.Image.Image):
            if isinstance(image, str):
                with open(image, "rb") as handle:
                    image = handle.read()
            data = bytes(image)
            header = _BYTE_DECODERS[decoder](data)
            size = header.size if header is not None else None
        if size is None:
            opened = open_image(image)
            # An EXIF rotation turns the crop's frame: such images (a minority) take the full decode, the same draws.
            if opened.getexif().get(PIL.ExifTags.Base.Orientation, 1) != 1:
                fast = False
            if not fast:
                opened.load()
            size = opened.size
    except DECODE_ERRORS as error:
        raise UndecodableImageError(f"{type(error).__name__}: {error}") from error
    if not fast:
        return pipeline(opened, generator)
    leaves = _leaf_transforms(pipeline.cpu_transform)
    crop, rest = leaves[0], leaves[1:]
    # The same seed derivation as Pipeline.__call__, so both paths consume the same random numbers.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    # The transforms' own stream: what Pipeline.__call__ seeds torch's global generator with, here a local generator
    # of the same kind, so that no global state is saved and restored unless a later transform draws from it.
    stream = torch.Generator().manual_seed(seed)
    params = draw_box(crop, size, stream)
    # The byte decoders take an RGB or grayscale JPEG, also one Pillow opened to read its (upright) orientation.
    from_bytes = data is not None and (opened is None or (opened.format == "JPEG" and opened.mode in ("RGB", "L")))
    if from_bytes and header is None:  # opened by Pillow: the header is read here
        header = read_jpeg_header(data)
        header = header if header is not None and header.size == size else None
    if from_bytes and decoder == "turbojpeg" and header is not None and header.plain:
        result = _turbojpeg_resized_crop(data, header, tuple(crop.size), params)
    elif from_bytes and decoder == "simplejpeg":
        result = _simplejpeg_resized_crop(data, header, size, tuple(crop.size), params)
    else:
        result = resized_crop(opened, tuple(crop.size), params)
    if len(rest) >= 2 and type(rest[0]) is v2.RandomHorizontalFlip and type(rest[1]) is v2.PILToTensor:
        # Flip then PILToTensor, decided as torchvision's flip decides (`torch.rand(1) < p`, the next draw) but done
        # on the uint8 tensor: the same pixels without a PIL transpose and two v2 dispatches.
        flip = bool(torch.rand(1, generator=stream) < rest[0].p)
        if flip:
            result = result.flip(-1)
        rest = rest[2:]
    else:
        # Later transforms (RandAugment) run on the PIL image, as in the full decode's pipeline.
        result = PIL.Image.fromarray(result.permute(1, 2, 0).numpy())
    if rest:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.set_state(stream.get_state())  # continue the same stream
            for transform in rest:
                result = transform(result)
    # Left in the resize's channels-last memory: `collate` stacks such images into a channels-last batch, which
    # saves transposing each one here.
    return result

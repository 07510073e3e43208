"""libjpeg-turbo's TurboJPEG 3 API through ctypes: a JPEG's region decoded alone, at a DCT scale.

TurboJPEG 3's partial decompression (`tj3SetCroppingRegion`) decodes only the rows and columns of a region: the rows
above it still cost their entropy decoding, but not their inverse DCT, upsampling and colour conversion, and the
columns beside it are never reconstructed; decoding stops below the region. No other wheel on PyPI exposes it, so
this module calls the library that the `turbojpeg` wheel bundles (`pip install 'vit_accel[jpeg]'`; Linux x86_64 and
macOS), never that package's own Python API.

The wheel's library is libjpeg-turbo 2.1.92 (3.0 beta 2): only 8-bit lossy JPEGs are decoded through it (its 12-bit
and lossless decoders were new in that release, and fixed after it), with a scan limit against progressive files of
thousands of scans.

The region's pixels are libjpeg-turbo's pixels of the whole image, except next to a region's left or right edge,
where chroma upsampling lacks its neighbour: `decode_region` widens the region by one MCU on either side and returns
the inner part, identical to the whole image's decode (tested bit for bit).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

# turbojpeg.h (TurboJPEG 3).
_INIT_DECOMPRESS = 1
_STOP_ON_WARNING, _SUBSAMP, _PRECISION, _SCAN_LIMIT, _LOSSLESS = 0, 4, 7, 13, 15
_ERROR_WARNING = 0
_PIXEL_FORMATS = {"RGB": 0, "RGBX": 2}
# libjpeg-turbo's advice for untrusted input: a progressive file of thousands of scans costs minutes to decode.
_MAX_SCANS = 500


class _Region(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_int), ("w", ctypes.c_int), ("h", ctypes.c_int)]


class _Scale(ctypes.Structure):
    _fields_ = [("num", ctypes.c_int), ("denom", ctypes.c_int)]


class TurboJpegError(ValueError):
    """libjpeg-turbo could not decode the data (its own message)."""


def _library_file() -> Path | None:
    """The TurboJPEG library inside the installed `turbojpeg` wheel (auditwheel's `turbojpeg.libs` on Linux,
    delocate's `turbojpeg.dylibs` on macOS), or None."""
    spec = importlib.util.find_spec("turbojpeg")
    if spec is None or spec.origin is None:
        return None
    where = Path(spec.origin).parent
    found = sorted(where.glob("turbojpeg.libs/libturbojpeg*.so*")) + sorted(where.glob("turbojpeg.dylibs/*.dylib"))
    return found[0] if found else None


@functools.cache
def _library() -> ctypes.CDLL | None:
    path = _library_file()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
        functions = {
            "tj3Init": ([ctypes.c_int], ctypes.c_void_p),
            "tj3Set": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int], ctypes.c_int),
            "tj3Get": ([ctypes.c_void_p, ctypes.c_int], ctypes.c_int),
            "tj3DecompressHeader": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
            "tj3SetScalingFactor": ([ctypes.c_void_p, _Scale], ctypes.c_int),
            "tj3SetCroppingRegion": ([ctypes.c_void_p, _Region], ctypes.c_int),
            "tj3Decompress8": (
                [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int, ctypes.c_int],
                ctypes.c_int,
            ),
            "tj3GetErrorStr": ([ctypes.c_void_p], ctypes.c_char_p),
            "tj3GetErrorCode": ([ctypes.c_void_p], ctypes.c_int),
        }
        for name, (arguments, result) in functions.items():
            function = getattr(lib, name)  # an older library (TurboJPEG 2) lacks them: AttributeError
            function.argtypes, function.restype = arguments, result
    except (OSError, AttributeError):
        return None
    return lib


def available() -> bool:
    """Whether the TurboJPEG 3 library of the `turbojpeg` wheel can be loaded."""
    return _library() is not None


_local = threading.local()


def _handle(lib: ctypes.CDLL) -> int:
    """This thread's decompressor, made again in a forked process (a handle holds one decode's state)."""
    if getattr(_local, "pid", None) != os.getpid():
        handle = lib.tj3Init(_INIT_DECOMPRESS)
        if not handle:
            raise MemoryError("tj3Init failed")
        lib.tj3Set(handle, _SCAN_LIMIT, _MAX_SCANS)
        _local.handle, _local.pid = handle, os.getpid()
    return _local.handle


def _error(lib: ctypes.CDLL, handle: int) -> TurboJpegError:
    return TurboJpegError((lib.tj3GetErrorStr(handle) or b"unknown error").decode(errors="replace"))


def decode_region(
    data: bytes,
    size: tuple[int, int],
    mcu_width: int,
    scale: int,
    rows: tuple[int, int],
    columns: tuple[int, int],
    strict: bool,
    mode: str,
) -> np.ndarray:
    """Rows [first, end) x columns [first, end) of a JPEG of `size` (width, height) and `mcu_width` pixels per MCU
    column, decoded at 1/`scale` (1, 2, 4 or 8): a uint8 (rows, columns, 3 or 4) array in `mode` (RGB or RGBX), the
    same pixels as there in the whole image's decode.

    `strict`: a warning (corrupt data libjpeg recovers from, or data cut short) fails the decode; else it is accepted,
    as Pillow accepts damage inside a complete file. Raises `TurboJpegError`."""
    lib = _library()
    handle = _handle(lib)
    if lib.tj3DecompressHeader(handle, data, len(data)) != 0 or lib.tj3SetScalingFactor(handle, _Scale(1, scale)):
        raise _error(lib, handle)
    if lib.tj3Get(handle, _PRECISION) != 8 or lib.tj3Get(handle, _LOSSLESS) == 1:
        raise TurboJpegError("not an 8-bit lossy JPEG (12-bit and lossless ones are left to Pillow)")
    width, height = (-(-side // scale) for side in size)  # libjpeg's size at 1/scale
    top, bottom = rows
    if lib.tj3Get(handle, _SUBSAMP) < 0:
        # Sampling factors TurboJPEG has no name for: it decodes such a file only whole (an all-zero region).
        left, right, first, end = 0, width, 0, height
        region = _Region(0, 0, 0, 0)
    else:
        # One MCU more on either side (the region's left edge on an MCU boundary, as the library requires): there
        # the upsampled chroma differs from the whole image's.
        mcu = max(1, mcu_width // scale)
        left, right, first, end = max(0, (columns[0] // mcu - 1) * mcu), min(width, columns[1] + mcu), top, bottom
        region = _Region(left, first, right - left, end - first)
    out = np.empty((end - first, right - left, 3 if mode == "RGB" else 4), dtype=np.uint8)
    if lib.tj3SetCroppingRegion(handle, region) != 0 or lib.tj3Set(handle, _STOP_ON_WARNING, int(strict)) != 0:
        raise _error(lib, handle)
    status = lib.tj3Decompress8(handle, data, len(data), out.ctypes.data, 0, _PIXEL_FORMATS[mode])
    if status != 0 and (strict or lib.tj3GetErrorCode(handle) != _ERROR_WARNING):
        raise _error(lib, handle)
    return out[top - first : bottom - first, columns[0] - left : columns[1] - left]

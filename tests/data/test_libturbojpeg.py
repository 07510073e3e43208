"""libjpeg-turbo's partial decode through ctypes: a region's pixels are the whole image's, at every DCT scale."""

import io

import numpy as np
import PIL.Image
import pytest
import simplejpeg
from sklearn.datasets import load_sample_images

from vit_accel.data import libturbojpeg

pytestmark = pytest.mark.skipif(
    not libturbojpeg.available(), reason="the turbojpeg wheel (Linux x86_64 and macOS, Python <= 3.13) is not installed"
)


def photo(width: int, height: int, subsampling: int, mode: str = "RGB") -> bytes:
    image = PIL.Image.fromarray(load_sample_images().images[0]).resize((width, height), PIL.Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="JPEG", quality=90, subsampling=subsampling)
    return buffer.getvalue()


@pytest.mark.parametrize("subsampling, mcu_width", [(0, 8), (1, 16), (2, 16)])
@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_a_regions_pixels_are_the_whole_images(subsampling, mcu_width, scale):
    size = (517, 333)
    data = photo(*size, subsampling)
    whole = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-size[0] // scale), min_height=1)
    assert whole.shape[1] == -(-size[0] // scale)
    rng = np.random.default_rng(scale * 10 + subsampling)
    for _ in range(12):
        top, left = int(rng.integers(0, whole.shape[0] - 1)), int(rng.integers(0, whole.shape[1] - 1))
        bottom, right = int(rng.integers(top + 1, whole.shape[0] + 1)), int(rng.integers(left + 1, whole.shape[1] + 1))
        for mode, channels in (("RGB", 3), ("RGBX", 4)):
            region = libturbojpeg.decode_region(
                data, size, mcu_width, scale, (top, bottom), (left, right), strict=True, mode=mode
            )
            assert region.shape == (bottom - top, right - left, channels)
            np.testing.assert_array_equal(region[..., :3], whole[top:bottom, left:right])


def test_a_grayscale_jpeg_comes_out_rgb():
    data = photo(300, 200, 0, "L")
    gray = np.asarray(PIL.Image.open(io.BytesIO(data)))
    region = libturbojpeg.decode_region(data, (300, 200), 8, 1, (10, 150), (33, 250), strict=True, mode="RGB")
    for channel in range(3):
        np.testing.assert_array_equal(region[..., channel], gray[10:150, 33:250])


def test_bad_data_is_a_turbojpeg_error_and_a_warning_fails_only_when_strict():
    data = photo(300, 200, 2)
    with pytest.raises(libturbojpeg.TurboJpegError):
        libturbojpeg.decode_region(b"not a jpeg", (300, 200), 16, 1, (0, 10), (0, 10), strict=False, mode="RGB")
    cut = data[: len(data) // 2]  # rows from the middle on are missing: libjpeg warns and fills them in
    with pytest.raises(libturbojpeg.TurboJpegError, match="Premature end"):
        libturbojpeg.decode_region(cut, (300, 200), 16, 1, (0, 200), (0, 300), strict=True, mode="RGB")
    filled = libturbojpeg.decode_region(cut, (300, 200), 16, 1, (0, 200), (0, 300), strict=False, mode="RGB")
    assert filled.shape == (200, 300, 3)


def test_sampling_turbojpeg_cannot_name_is_decoded_whole_then_cut(monkeypatch):
    """TurboJPEG decodes a JPEG of sampling factors it has no name for only whole: the region is then cut from it."""
    library = libturbojpeg._library()

    regions = []

    class Unnamed:
        def __getattr__(self, name):
            return getattr(library, name)

        @staticmethod
        def tj3Get(handle, parameter):
            return -1 if parameter == libturbojpeg._SUBSAMP else library.tj3Get(handle, parameter)

        @staticmethod
        def tj3SetCroppingRegion(handle, region):
            regions.append((region.x, region.y, region.w, region.h))
            return library.tj3SetCroppingRegion(handle, region)

    data = photo(300, 200, 2)
    expected = libturbojpeg.decode_region(data, (300, 200), 16, 2, (7, 61), (21, 93), strict=True, mode="RGB")
    monkeypatch.setattr(libturbojpeg, "_library", Unnamed)
    got = libturbojpeg.decode_region(data, (300, 200), 16, 2, (7, 61), (21, 93), strict=True, mode="RGB")
    assert regions == [(0, 0, 0, 0)]  # uncropped
    np.testing.assert_array_equal(got, expected)

"""The DCT-domain decode path: the same crops and flips as the full decode, pixels close, chosen automatically."""

import io

import numpy as np
import PIL.ExifTags
import PIL.Image
import pytest
import torch
from factories import png_bytes, random_rgb
from sklearn.datasets import load_sample_images
from torchvision.transforms import v2

from vit_accel.data import build_pipeline
from vit_accel.data.decode import prepare, resolve_decoder

HALF = (0.5, 0.5, 0.5)


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photo (scikit-learn's 427x640 sample) enlarged to 854x1280, as a JPEG: large enough that most 224-px
    random-resized crops allow a reduced DCT scale."""
    image = PIL.Image.fromarray(load_sample_images().images[0])
    return jpeg_bytes(np.asarray(image.resize((1280, 854), PIL.Image.Resampling.BICUBIC)))


def both(pipeline, encoded, seed):
    full = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "pil")
    fast = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "pil_draft")
    return full, fast


@pytest.mark.parametrize("preset", ["inception", "randaugment"])
def test_same_crops_and_flips_as_the_full_decode(photo, preset, monkeypatch):
    """Both paths draw the same crop boxes (recorded from torchvision's own make_params) and the same flips; the
    drafted pixels stay close to the full decode's."""
    recorded = []
    original = v2.RandomResizedCrop.make_params

    def record(self, flat_inputs):
        params = original(self, flat_inputs)
        recorded.append(params)
        return params

    monkeypatch.setattr(v2.RandomResizedCrop, "make_params", record)
    pipeline = build_pipeline(preset, 224, HALF, HALF, train=True)
    differences = []
    for seed in range(12):
        recorded.clear()
        full, fast = both(pipeline, photo, seed)
        assert len(recorded) == 2 and recorded[0] == recorded[1]
        assert full.shape == fast.shape == (3, 224, 224)
        difference = (full.float() - fast.float()).abs().mean().item()
        flipped = (full.float() - fast.flip(-1).float()).abs().mean().item()
        differences.append(difference)
        if preset == "inception":
            assert difference < 3.0 and difference < flipped / 5  # same region, same orientation
    if preset == "inception":
        assert np.mean(differences) < 1.5
        assert sum(d > 0 for d in differences) >= 3  # the reduced scale was really used


def test_bitwise_equal_where_no_reduced_scale_is_used():
    """A PNG (no DCT scaling) and a JPEG too small to shrink: both paths give the very same pixels, seed by seed."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    small_jpeg = jpeg_bytes(np.asarray(random_rgb(3, (200, 150))))
    png = png_bytes(np.asarray(random_rgb(4, (500, 375))))
    for encoded in (png, small_jpeg):
        for seed in range(16):
            full, fast = both(pipeline, encoded, seed)
            assert torch.equal(full, fast)


def test_crop_statistics_match_torchvisions(photo):
    """Over many seeds the drafted crops cover the image as torchvision's RandomResizedCrop does: the mean pixel of
    the crops (a function of where and how large they are) and the flip rate agree with the full decode's."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    full_means, fast_means = [], []
    for seed in range(100, 140):
        full, fast = both(pipeline, photo, seed)
        full_means.append(full.float().mean().item())
        fast_means.append(fast.float().mean().item())
    assert np.std(full_means) > 5  # the crops really vary
    assert abs(np.mean(full_means) - np.mean(fast_means)) < 1.0
    assert np.corrcoef(full_means, fast_means)[0, 1] > 0.99


@pytest.mark.parametrize(
    "preset,train,expected",
    [
        ("inception", True, "pil_draft"),
        ("randaugment", True, "pil_draft"),
        ("inception", False, "pil"),
        ("cifar", True, "pil"),
        ("none", True, "pil"),
    ],
)
def test_auto_picks_the_draft_path_for_random_resized_crops(preset, train, expected):
    pipeline = build_pipeline(preset, 224, HALF, HALF, train=train)
    assert resolve_decoder("auto", pipeline) == expected
    assert resolve_decoder("pil", pipeline) == "pil"


def test_random_erasing_runs_after_the_drafted_crop(photo):
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True, random_erasing=1.0)
    assert resolve_decoder("auto", pipeline) == "pil_draft"
    full, fast = both(pipeline, photo, 5)
    # Erased rectangles are filled with the mean colour (128 in [-1, 1] units): the same rectangle in both.
    assert ((full == 128) & (fast == 128)).float().mean() > 0.01


def test_an_exif_rotated_jpeg_is_turned_upright_as_the_full_decode_does(photo):
    """A camera JPEG with an Orientation tag: the DCT-domain path gives exactly the full decode's (upright) result."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    exif = PIL.Image.Exif()
    exif[PIL.ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    PIL.Image.open(io.BytesIO(photo)).transpose(PIL.Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif)
    for seed in range(6):
        full, fast = both(pipeline, buffer.getvalue(), seed)
        assert torch.equal(full, fast)

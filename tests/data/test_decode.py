"""The DCT-domain decode path: the same crops and flips as the full decode, pixels close, chosen automatically."""

import functools
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
from vit_accel.data.arguments import decoder_installed
from vit_accel.data.decode import FAST_DECODERS, prepare, resolve_decoder
from vit_accel.data.libturbojpeg import available as turbojpeg_available

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


NO_TURBOJPEG = "the turbojpeg wheel (Linux x86_64 and macOS, Python <= 3.13) is not installed here"
TURBOJPEG = pytest.param("turbojpeg", marks=pytest.mark.skipif(not turbojpeg_available(), reason=NO_TURBOJPEG))
FAST = ["pil_draft", "simplejpeg", TURBOJPEG]
# For loops over the decoders: those installed here.
INSTALLED_FAST = [decoder for decoder in FAST_DECODERS if decoder_installed(decoder)]


def both(pipeline, encoded, seed, fast_decoder="pil_draft"):
    full = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "pil")
    fast = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), fast_decoder)
    return full, fast


@pytest.mark.parametrize("preset", ["inception", "randaugment"])
def test_same_crops_and_flips_as_the_full_decode(photo, preset, monkeypatch):
    """Both paths crop the same boxes (the full path's recorded from torchvision's own make_params) and flip the
    same examples; the drafted pixels stay close to the full decode's."""
    recorded = []
    original = v2.RandomResizedCrop.make_params

    def record(self, flat_inputs):
        params = original(self, flat_inputs)
        recorded.append((params["top"], params["left"], params["height"], params["width"]))
        return params

    pipeline = build_pipeline(preset, 224, HALF, HALF, train=True)
    fast_boxes = boxes_of_the_fast_path(monkeypatch, pipeline, photo, range(12))
    monkeypatch.undo()
    monkeypatch.setattr(v2.RandomResizedCrop, "make_params", record)
    differences = []
    for seed in range(12):
        recorded.clear()
        full, fast = both(pipeline, photo, seed)
        assert recorded == [fast_boxes[seed]]  # make_params ran once: in the full path
        assert full.shape == fast.shape == (3, 224, 224)
        difference = (full.float() - fast.float()).abs().mean().item()
        flipped = (full.float() - fast.flip(-1).float()).abs().mean().item()
        differences.append(difference)
        if preset == "inception":
            assert difference < 3.0 and difference < flipped / 5  # same region, same orientation
    if preset == "inception":
        assert np.mean(differences) < 1.5
        assert sum(d > 0 for d in differences) >= 3  # the reduced scale was really used


def photo_of(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG of width x height resampled from one of scikit-learn's sample photos."""
    image = PIL.Image.fromarray(load_sample_images().images[seed % 2])
    return jpeg_bytes(np.asarray(image.resize((width, height), PIL.Image.Resampling.BICUBIC)))


@functools.lru_cache(maxsize=4)
def decoded_tensor(encoded: bytes) -> torch.Tensor:
    pixels = np.asarray(PIL.Image.open(io.BytesIO(encoded)).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def torchvision_on_tensors(pipeline, encoded: bytes, seed: int) -> torch.Tensor:
    """torchvision's own RandomResizedCrop + RandomHorizontalFlip of the preset, run on the full decode's uint8
    tensor, on the random stream `prepare` derives from `seed`."""
    crop, flip = pipeline.cpu_transform.transforms[:2]
    tensor = decoded_tensor(encoded)
    derived = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived)
        return v2.Compose([crop, flip])(tensor)


@pytest.mark.parametrize("size", [(500, 375), (200, 150)])
@pytest.mark.parametrize("fast_decoder", FAST)
def test_full_scale_crops_are_torchvisions_tensor_path_bit_for_bit(size, fast_decoder):
    """Where no reduced DCT scale applies (most crops of ImageNet-sized photos), the fast path gives exactly what
    torchvision's RandomResizedCrop and flip give on the decoded uint8 tensor; and within 1 level of 255 of the
    preset's PIL path (the same filter in Pillow's fixed point)."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    encoded = photo_of(*size)
    for seed in range(12):
        full, fast = both(pipeline, encoded, seed, fast_decoder)
        assert torch.equal(fast, torchvision_on_tensors(pipeline, encoded, seed))
        assert (full.int() - fast.int()).abs().max() <= 1


def test_png_takes_the_uint8_resize_without_a_draft():
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    png = png_bytes(np.asarray(random_rgb(4, (500, 375))))
    for seed in range(8):
        full, fast = both(pipeline, png, seed)
        assert torch.equal(fast, torchvision_on_tensors(pipeline, png, seed))
        assert (full.int() - fast.int()).abs().max() <= 1


@pytest.mark.parametrize("fast_decoder", FAST)
def test_drafted_crops_stay_within_the_stated_bound(fast_decoder):
    """Crops of a 1024x768 photo at least 448 px both ways decode at 1/2 scale (or less): pixels differ from the full
    decode's by libjpeg's DCT-domain downscaling, under 2.5 levels of 255 on average per example, under 1 overall."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    encoded = photo_of(1024, 768, seed=1)
    means = []
    for seed in range(16):
        full, fast = both(pipeline, encoded, seed, fast_decoder)
        means.append((full.float() - fast.float()).abs().mean().item())
    drafted = [m for m in means if m > 0.15]  # full-scale crops sit far below (<= 1 level, almost all 0)
    assert len(drafted) >= 4
    assert max(means) < 2.5 and np.mean(means) < 1.0


def test_crop_statistics_match_torchvisions(photo):
    """Over many seeds the drafted crops cover the image as torchvision's RandomResizedCrop does: the mean pixel of
    the crops (a function of where and how large they are) and the flip rate agree with the full decode's."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    full_means, fast_means = [], []
    for seed in range(100, 116):
        full, fast = both(pipeline, photo, seed)
        full_means.append(full.float().mean().item())
        fast_means.append(fast.float().mean().item())
    assert np.std(full_means) > 5  # the crops really vary
    assert abs(np.mean(full_means) - np.mean(fast_means)) < 1.0
    assert np.corrcoef(full_means, fast_means)[0, 1] > 0.99


@pytest.mark.parametrize("installed", [("turbojpeg", "simplejpeg"), ("simplejpeg",), ()])
@pytest.mark.parametrize(
    "preset,train,fast",
    [("inception", True, True), ("randaugment", True, True), ("inception", False, False), ("cifar", True, False)],
)
def test_auto_picks_the_fast_path_for_random_resized_crops(preset, train, fast, installed, monkeypatch):
    """turbojpeg, else simplejpeg, whichever is installed, else Pillow's draft; the full decode for pipelines
    without the crop."""
    from vit_accel.data import decode

    monkeypatch.setattr(decode, "simplejpeg_available", lambda: "simplejpeg" in installed)
    monkeypatch.setattr(decode, "turbojpeg_available", lambda: "turbojpeg" in installed)
    pipeline = build_pipeline(preset, 224, HALF, HALF, train=train)
    expected = (installed[0] if installed else "pil_draft") if fast else "pil"
    assert resolve_decoder("auto", pipeline) == resolve_decoder(None, pipeline) == expected
    assert resolve_decoder("pil", pipeline) == "pil"


def test_simplejpeg_without_its_package_is_one_line(monkeypatch):
    from vit_accel.data import DataArguments, arguments
    from vit_accel.errors import UserError

    monkeypatch.setattr(arguments.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"needs the simplejpeg package: pip install 'vit_accel\[jpeg\]'"):
        DataArguments(dataset_name="x", image_decoder="simplejpeg")
    with pytest.raises(UserError, match="simplejpeg package"):
        resolve_decoder("simplejpeg", build_pipeline("inception", 224, HALF, HALF, train=True))


def test_turbojpeg_without_its_library_is_one_line(monkeypatch):
    from vit_accel.data import DataArguments, libturbojpeg
    from vit_accel.errors import UserError

    monkeypatch.setattr(libturbojpeg, "available", lambda: False)
    with pytest.raises(UserError, match=r"needs the turbojpeg wheel's library: pip install 'vit_accel\[jpeg\]'"):
        DataArguments(dataset_name="x", image_decoder="turbojpeg")
    with pytest.raises(UserError, match="turbojpeg wheel"):
        resolve_decoder("turbojpeg", build_pipeline("inception", 224, HALF, HALF, train=True))


def test_simplejpeg_decodes_pillows_pixels():
    """At full scale and at each DCT scale, libjpeg-turbo through simplejpeg and through Pillow give the same
    pixels, so the two fast decoders differ only in speed."""
    import simplejpeg

    encoded = photo_of(1024, 768)
    for scale in (1, 2, 4, 8):
        image = PIL.Image.open(io.BytesIO(encoded))
        image.draft("RGB", (1024 // scale, 768 // scale))
        ours = simplejpeg.decode_jpeg(encoded, colorspace="RGB", min_height=768 // scale, min_width=1024 // scale)
        assert np.array_equal(ours, np.asarray(image.convert("RGB"))), scale


def test_random_erasing_runs_after_the_drafted_crop(photo):
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True, random_erasing=1.0)
    full, fast = both(pipeline, photo, 5)
    # Erased rectangles are filled with the mean colour (128 in [-1, 1] units): the same rectangle in both.
    assert ((full == 128) & (fast == 128)).float().mean() > 0.01


@pytest.mark.parametrize("fast_decoder", FAST)
def test_an_exif_rotated_jpeg_is_turned_upright_as_the_full_decode_does(photo, fast_decoder):
    """A camera JPEG with an Orientation tag: the DCT-domain path gives exactly the full decode's (upright) result."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    exif = PIL.Image.Exif()
    exif[PIL.ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    PIL.Image.open(io.BytesIO(photo)).transpose(PIL.Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif)
    for seed in range(6):
        full, fast = both(pipeline, buffer.getvalue(), seed, fast_decoder)
        assert torch.equal(full, fast)


def boxes_of_the_fast_path(monkeypatch, pipeline, encoded: bytes, seeds) -> list[tuple[int, int, int, int]]:
    """The (top, left, height, width) boxes the fast path crops, one per seed (the pixels are not decoded)."""
    from vit_accel.data import decode

    boxes = []

    def record(image, size, params, data=None):
        boxes.append((params["top"], params["left"], params["height"], params["width"]))
        return torch.zeros((3, *size), dtype=torch.uint8)

    monkeypatch.setattr(decode, "resized_crop", record)
    for seed in seeds:
        prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "pil_draft")
    return boxes


def test_boxes_are_torchvisions_get_params_seed_for_seed(monkeypatch):
    """The box of each example is what torchvision's (v1) RandomResizedCrop.get_params draws from the same seed."""
    from torchvision import transforms as v1

    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    encoded = photo_of(640, 480)
    seeds = range(60)
    boxes = boxes_of_the_fast_path(monkeypatch, pipeline, encoded, seeds)
    image = PIL.Image.open(io.BytesIO(encoded))
    expected = []
    for seed in seeds:
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed))))
        expected.append(v1.RandomResizedCrop.get_params(image, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)))
    assert boxes == expected


@pytest.mark.parametrize("size", [(640, 480), (37, 500), (900, 40), (224, 224)])
@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.9, 1.0)])
def test_draw_box_is_torchvisions_make_params_seed_for_seed(size, scale):
    """The box sampler gives torchvision's v2 RandomResizedCrop boxes from a generator seeded as its global stream,
    seed for seed, including the centred fallback (elongated images with a large scale fall back often), and leaves
    the generator where torchvision leaves its stream (the next draw, the flip's, agrees too)."""
    from vit_accel.data.decode import draw_box

    crop = v2.RandomResizedCrop(224, scale=scale, antialias=True)
    stand_in = torch.empty(1, 1, 1).expand(1, size[1], size[0])
    fallbacks = 0
    for seed in range(300):
        stream = torch.Generator().manual_seed(seed)
        ours = draw_box(crop, size, stream)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            assert ours == crop.make_params([stand_in]), seed
            assert torch.equal(torch.rand(1, generator=stream), torch.rand(1))
        fallbacks += ours["top"] == (size[1] - ours["height"]) // 2 and ours["left"] == (size[0] - ours["width"]) // 2
    if size in ((37, 500), (900, 40)) and scale == (0.9, 1.0):
        assert fallbacks > 100


def test_box_distribution_matches_torchvisions(monkeypatch):
    """Over many draws, the boxes' area fraction, log aspect ratio and centre follow torchvision's get_params
    (two-sample Kolmogorov-Smirnov on independent draws: seeds here, torch's global stream there)."""
    from scipy.stats import ks_2samp
    from torchvision import transforms as v1

    pipeline = build_pipeline("randaugment", 224, HALF, HALF, train=True)  # torchvision's default scale (0.08, 1)
    width, height = 500, 375
    encoded = photo_of(width, height)
    ours = np.array(boxes_of_the_fast_path(monkeypatch, pipeline, encoded, range(10_000, 10_300)), dtype=float)
    image = PIL.Image.new("RGB", (width, height))
    torch.manual_seed(123)
    theirs = np.array([v1.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(1500)])

    def features(boxes):
        top, left, h, w = boxes.T
        return {
            "area": h * w / (width * height),
            "log_ratio": np.log(w / h),
            "centre_x": (left + w / 2) / width,
            "centre_y": (top + h / 2) / height,
        }

    mine, reference = features(ours), features(theirs.astype(float))
    for name in mine:
        assert ks_2samp(mine[name], reference[name]).pvalue > 1e-3, name
    # And the test would see a wrong distribution: torchvision's own boxes at another scale range are rejected.
    torch.manual_seed(7)
    other = np.array([v1.RandomResizedCrop.get_params(image, (0.3, 1.0), (3 / 4, 4 / 3)) for _ in range(400)])
    assert ks_2samp(features(other.astype(float))["area"], reference["area"]).pvalue < 1e-6


@pytest.mark.parametrize("fast_decoder", FAST)
def test_flips_are_torchvisions_draws_at_rate_one_half(fast_decoder):
    """Flipped or not, seed for seed as torchvision's flip on the same stream; about half of them."""
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    unflipped = build_pipeline("inception", 224, HALF, HALF, train=True)
    unflipped.cpu_transform.transforms[1].p = 0.0
    encoded = photo_of(256, 192)
    flips = []
    for seed in range(40):
        fast = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), fast_decoder)
        assert torch.equal(fast, torchvision_on_tensors(pipeline, encoded, seed))
        straight = torchvision_on_tensors(unflipped, encoded, seed)
        assert torch.equal(fast, straight) or torch.equal(fast, straight.flip(-1))
        flips.append(not torch.equal(fast, straight))
    assert 10 <= sum(flips) <= 30  # Binomial(40, 0.5): outside this with probability < 3e-3


@pytest.mark.parametrize("fast_decoder", FAST)
def test_grayscale_and_cmyk_jpegs_come_out_rgb_and_close(fast_decoder):
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    photo = PIL.Image.fromarray(load_sample_images().images[0]).resize((900, 600))
    for mode in ("L", "CMYK"):
        buffer = io.BytesIO()
        photo.convert(mode).save(buffer, format="JPEG", quality=90)
        for seed in range(6):
            full, fast = both(pipeline, buffer.getvalue(), seed, fast_decoder)
            assert fast.shape == full.shape == (3, 224, 224)
            assert (full.float() - fast.float()).abs().mean() < 2.5


def test_pixels_are_read_the_same_without_pillows_arrow_export(monkeypatch):
    """Pillow's buffer read without a copy and the packed copy (older Pillow, or an image in several blocks) give
    the same pixels."""
    from vit_accel.data import decode

    image = PIL.Image.fromarray(random_rgb(5, (300, 200)))
    shared = decode._pixels_hwc(image)
    assert torch.equal(shared[..., :3], torch.from_numpy(np.asarray(image)))
    import pyarrow

    def refuse(*args, **kwargs):
        raise ValueError("several blocks")

    monkeypatch.setattr(pyarrow, "array", refuse)
    assert torch.equal(decode._pixels_hwc(image), torch.from_numpy(np.asarray(image)))


def test_an_undecodable_image_is_one_clear_error():
    from vit_accel.data.decode import UndecodableImageError

    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    truncated = photo_of(500, 375)[:3000]
    for decoder in ("pil", *INSTALLED_FAST):
        with pytest.raises(UndecodableImageError, match="OSError|Premature end of JPEG"):
            prepare(pipeline, truncated, torch.Generator().manual_seed(0), decoder)
        with pytest.raises(UndecodableImageError, match="UnidentifiedImageError"):
            prepare(pipeline, b"not an image", torch.Generator().manual_seed(0), decoder)


@pytest.mark.parametrize("fast_decoder", FAST)
def test_an_upright_exif_jpeg_takes_the_fast_path(fast_decoder):
    """Camera JPEGs carry an Exif block even when upright (orientation 1): Pillow reads the tag, and the crop is the
    fast path's, bit for bit torchvision's on the uint8 tensor."""
    exif = PIL.Image.Exif()
    exif[PIL.ExifTags.Base.Orientation] = 1
    buffer = io.BytesIO()
    PIL.Image.open(io.BytesIO(photo_of(500, 375))).save(buffer, "JPEG", quality=90, exif=exif)
    encoded = buffer.getvalue()
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    for seed in range(6):
        fast = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), fast_decoder)
        assert torch.equal(fast, torchvision_on_tensors(pipeline, encoded, seed))


def encode(width: int, height: int, mode: str = "RGB", **options) -> bytes:
    """A JPEG of a sample photo at width x height in `mode`, saved with Pillow's `options` (subsampling, ...)."""
    image = PIL.Image.fromarray(load_sample_images().images[1]).resize((width, height), PIL.Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def test_the_jpeg_header_is_read_from_its_markers():
    from vit_accel.data.decode import read_jpeg_header

    # 4:4:4, 4:2:2 and 4:2:0 chroma: a row of MCUs is 8, 8 and 16 pixel rows.
    for subsampling, mcu_rows in ((0, 8), (1, 8), (2, 16)):
        header = read_jpeg_header(encode(321, 203, subsampling=subsampling))
        assert (header.size, header.mcu_rows, header.one_scan, header.complete) == ((321, 203), mcu_rows, True, True)
        assert not header.orientation_carrier
    assert read_jpeg_header(encode(64, 48, "L")).mcu_rows == 8
    assert not read_jpeg_header(encode(64, 48, progressive=True)).one_scan
    exif = PIL.Image.Exif()
    exif[PIL.ExifTags.Base.Orientation] = 1
    assert read_jpeg_header(encode(64, 48, exif=exif)).orientation_carrier
    whole = encode(320, 240)
    assert not read_jpeg_header(whole[: len(whole) // 2]).complete
    assert read_jpeg_header(whole + b"trailing bytes").complete
    for other in (png_bytes(random_rgb(0, (8, 8))), b"not an image", whole[:100], b"\xff\xd8\xff\xc0\x00"):
        assert read_jpeg_header(other) is None


@pytest.mark.parametrize(
    "size, mode, options",
    [
        ((1001, 757), "RGB", {"subsampling": 2}),
        ((1001, 757), "RGB", {"subsampling": 1}),
        ((1001, 757), "RGB", {"subsampling": 0}),
        ((500, 375), "RGB", {"subsampling": 2}),
        ((700, 1100), "L", {}),
        ((900, 600), "RGB", {"restart_marker_rows": 1}),
    ],
)
def test_decoding_only_the_rows_down_to_the_crop_changes_no_pixel(size, mode, options, monkeypatch):
    """simplejpeg decodes a sequential JPEG only down to a row of MCUs below the crop; the result is bit for bit
    `pil_draft`'s, which decodes every row (at the same DCT scale and with the same resize), at full and reduced
    scales, for each chroma subsampling, grayscale and a JPEG with restart markers; and most crops were cut short."""
    import simplejpeg

    encoded = encode(*size, mode, **options)
    decoded_rows = []
    original = simplejpeg.decode_jpeg

    def spy(data, *args, **kwargs):
        pixels = original(data, *args, **kwargs)
        decoded_rows.append(pixels.shape[0] / (pixels.shape[1] * size[1] / size[0]))
        return pixels

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    for seed in range(30):
        fast = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "simplejpeg")
        assert torch.equal(fast, prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "pil_draft")), seed
    assert sum(fraction < 0.97 for fraction in decoded_rows) >= 5


def test_damaged_scan_data_decodes_as_pillow_decodes_it():
    """A complete JPEG with damaged entropy-coded data, which libjpeg recovers from with a warning: Pillow's plugin
    decodes it, and so does every decoder here (a strict libjpeg-turbo call would refuse it, failing with the fast
    path a run that the full decode accepts). A file cut short still fails with each (the test above)."""
    import simplejpeg

    from vit_accel.data.decode import read_jpeg_header

    encoded = photo_of(500, 375)
    start = read_jpeg_header(encoded).height_at + 200
    for position in range(start, len(encoded) - 10, 97):
        damaged = bytearray(encoded)
        damaged[position] ^= 0x5A
        try:
            simplejpeg.decode_jpeg(bytes(damaged))
        except ValueError:
            break
    else:
        pytest.fail("no damage that libjpeg-turbo warns about was found")
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    for decoder in ("pil", *INSTALLED_FAST):
        for seed in range(4):
            prepared = prepare(pipeline, bytes(damaged), torch.Generator().manual_seed(seed), decoder)
            assert prepared.shape == (3, 224, 224)


ROWS_AND_REGIONS = [
    ((1001, 757), "RGB", {"subsampling": 2}),
    ((1001, 757), "RGB", {"subsampling": 1}),
    ((1001, 757), "RGB", {"subsampling": 0}),
    ((500, 375), "RGB", {"subsampling": 2}),
    ((700, 1100), "L", {}),
    ((900, 600), "RGB", {"restart_marker_rows": 1}),
    ((900, 600), "RGB", {"progressive": True}),
]


@pytest.mark.skipif(not turbojpeg_available(), reason=NO_TURBOJPEG)
@pytest.mark.parametrize("size, mode, options", ROWS_AND_REGIONS)
def test_reconstructing_only_the_crops_region_changes_no_pixel(size, mode, options, monkeypatch):
    """turbojpeg reconstructs only the crop's region (or the window its reduced-scale resize reads); the result is
    bit for bit `pil_draft`'s, which decodes the whole image, for each chroma subsampling, grayscale, restart markers
    and a progressive JPEG; and most regions were a small part of the image."""
    from vit_accel.data import libturbojpeg

    encoded = encode(*size, mode, **options)
    fractions = []
    original = libturbojpeg.decode_region

    def spy(data, size, mcu_width, scale, rows, columns, **kwargs):
        pixels = original(data, size, mcu_width, scale, rows, columns, **kwargs)
        fractions.append(pixels.shape[0] * pixels.shape[1] * scale * scale / (size[0] * size[1]))
        return pixels

    monkeypatch.setattr(libturbojpeg, "decode_region", spy)
    pipeline = build_pipeline("inception", 224, HALF, HALF, train=True)
    for seed in range(30):
        fast = prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "turbojpeg")
        assert torch.equal(fast, prepare(pipeline, encoded, torch.Generator().manual_seed(seed), "pil_draft")), seed
    assert len(fractions) == 30 and sum(fraction < 0.7 for fraction in fractions) >= 10

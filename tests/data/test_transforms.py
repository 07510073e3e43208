"""Augmentation presets: output shape, dtype and range; RGB conversion; seeded randomness."""

import numpy as np
import PIL.Image
import pytest
import torch
from factories import random_rgb, write_exif_rotated_pair

from vit_accel.data import AUGMENTATIONS, build_pipeline, prepare_image, resize_batch, to_rgb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("preset", AUGMENTATIONS)
def test_preset_shapes_dtypes_and_ranges(preset, train):
    size = 48
    pipeline = build_pipeline(preset, size, MEAN, STD, train=train)
    images = [PIL.Image.fromarray(random_rgb(i, (32 + 9 * i, 30 + 5 * i))) for i in range(4)]  # mixed sizes
    pixels = [pipeline(image, generator(i)) for i, image in enumerate(images)]
    native = 32 if preset == "cifar" else size
    for example in pixels:
        assert example.dtype == torch.uint8 and example.shape == (3, native, native)
    out = pipeline.on_device(torch.stack(pixels))
    assert out.dtype == torch.float32 and out.shape == (4, 3, size, size)
    mean, std = (0.5,) * 3 if preset == "inception" else MEAN, (0.5,) * 3 if preset == "inception" else STD
    for c in range(3):
        low, high = (0 - mean[c]) / std[c], (1 - mean[c]) / std[c]
        assert out[:, c].min() >= low - 1e-5 and out[:, c].max() <= high + 1e-5
        assert out[:, c].max() - out[:, c].min() > 0.5 * (high - low)  # random images span most of the range


def test_inception_forces_minus_one_to_one():
    pipeline = build_pipeline("inception", 40, MEAN, STD, train=True)
    assert pipeline.mean == (0.5,) * 3 and pipeline.std == (0.5,) * 3
    white = torch.full((1, 3, 40, 40), 255, dtype=torch.uint8)
    black = torch.zeros((1, 3, 40, 40), dtype=torch.uint8)
    assert torch.allclose(pipeline.on_device(white), torch.ones(1)) and torch.allclose(
        pipeline.on_device(black), -torch.ones(1)
    )


def test_on_device_resizes_and_normalises_exactly():
    pipeline = build_pipeline("cifar", 64, MEAN, STD, train=False)
    grey = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    out = pipeline.on_device(grey)
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert out.shape == (2, 3, 64, 64)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-5)
    # Already at size: values pass through untouched except for the normalisation.
    at_size = build_pipeline("none", 32, (0.0,) * 3, (1.0,) * 3, train=False)
    batch = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(at_size.on_device(batch), batch.float() / 255, atol=1e-6, rtol=0)


def test_uint8_cpu_resize_matches_float_resize():
    batch = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    fast = resize_batch(batch, 96)
    reference = resize_batch(batch.float(), 96)  # the float path, as on an accelerator
    assert fast.dtype == torch.uint8 and fast.shape == (3, 3, 96, 96) and fast.is_contiguous()
    assert (fast.float() - reference).abs().max() <= 1.0  # rounding to uint8 only
    assert resize_batch(batch, 32) is batch


def test_cifar_eval_keeps_32px_images_untouched():
    array = random_rgb(5)
    pixels = build_pipeline("cifar", 224, MEAN, STD, train=False)(PIL.Image.fromarray(array), generator(0))
    assert torch.equal(pixels, torch.from_numpy(array).permute(2, 0, 1))


@pytest.mark.parametrize("preset", ["cifar", "inception", "randaugment"])
def test_train_randomness_comes_from_the_generator_only(preset):
    pipeline = build_pipeline(preset, 32, MEAN, STD, train=True)
    image = PIL.Image.fromarray(random_rgb(1))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = pipeline(image, generator(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is left as it was (forked)
    torch.manual_seed(999)  # a different global RNG state must not matter
    assert torch.equal(first, pipeline(image, generator(7)))
    outputs = {pipeline(image, generator(seed)).numpy().tobytes() for seed in range(8)}
    assert len(outputs) > 4  # different seeds, different augmentations


def test_eval_pipelines_are_deterministic():
    image = PIL.Image.fromarray(random_rgb(2, (50, 40)))
    for preset in AUGMENTATIONS:
        pipeline = build_pipeline(preset, 32, MEAN, STD, train=False)
        assert torch.equal(pipeline(image, generator(0)), pipeline(image, generator(1)))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="'mixup'.*cifar, inception, randaugment, mae, none"):
        build_pipeline("mixup", 224, MEAN, STD, train=True)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: PIL.Image.new("L", (8, 8), 100), (100, 100, 100)),
        (lambda: PIL.Image.new("LA", (8, 8), (100, 255)), (100, 100, 100)),
        (lambda: PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 255)), (10, 20, 30)),
        (lambda: PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white
        (lambda: PIL.Image.new("CMYK", (8, 8), (0, 0, 0, 0)), (255, 255, 255)),
        (lambda: PIL.Image.new("CMYK", (8, 8), (255, 0, 0, 0)), (0, 255, 255)),
        (lambda: PIL.Image.new("I;16", (8, 8), 65535), (255, 255, 255)),
        (lambda: PIL.Image.new("1", (8, 8), 1), (255, 255, 255)),
    ],
)
def test_to_rgb(make, expected):
    image = to_rgb(make())
    assert image.mode == "RGB"
    assert tuple(np.asarray(image)[3, 3]) == expected


def test_float_images_are_scaled_by_their_range_not_clipped():
    ramp = np.linspace(0.0, 1000.0, 64, dtype=np.float32).reshape(8, 8)  # a mode-F TIFF's raw values
    grey = np.asarray(to_rgb(PIL.Image.fromarray(ramp, mode="F")))[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and 120 <= grey[4, 0] <= 135  # not saturated white
    assert np.all(np.diff(grey.ravel().astype(int)) >= 0)  # the ramp stays a ramp
    signed = np.asarray(to_rgb(PIL.Image.fromarray(np.full((4, 4), -1.0, np.float32), mode="F")))
    assert int(signed.max()) == 0  # the low end of [-1, 1] is black
    unit = PIL.Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F")  # already in [0, 1]
    assert tuple(np.asarray(to_rgb(unit))[0, 0]) == (128, 128, 128)


def test_palette_images_with_and_without_transparency():
    palette = PIL.Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    assert tuple(np.asarray(to_rgb(palette))[0, 0]) == (200, 10, 20)
    palette.info["transparency"] = 1
    assert tuple(np.asarray(to_rgb(palette))[0, 0]) == (255, 255, 255)
    # And through a pipeline: 3 channels out whatever comes in.
    pixels = build_pipeline("none", 16, MEAN, STD, train=True)(PIL.Image.new("L", (20, 20), 7), generator(0))
    assert pixels.shape == (3, 16, 16) and int(pixels.min()) == int(pixels.max()) == 7


@pytest.mark.parametrize("preset", ["cifar", "randaugment"])
def test_random_erasing_is_torchvisions_on_the_same_stream_and_fills_with_the_mean(preset):
    from torchvision.transforms import v2

    image = PIL.Image.fromarray(random_rgb(3))
    plain = build_pipeline(preset, 32, MEAN, STD, train=True)
    erasing = build_pipeline(preset, 32, MEAN, STD, train=True, random_erasing=1.0)
    fill = [round(255 * m) for m in MEAN]
    erased_any = False
    for seed in range(6):
        got = erasing(image, generator(seed))
        # The reference: the same per-example stream, the preset's own ops, then torchvision's RandomErasing.
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator(seed))))
        want = v2.RandomErasing(p=1.0, value=fill)(plain.cpu_transform(image))
        assert torch.equal(got, want)
        changed = got != plain(image, generator(seed))
        if changed.any():
            erased_any = True
            # Changed pixels hold the mean colour (in 0-255 units), i.e. 0 once normalised.
            for c in range(3):
                assert (got[c][changed[c]] == fill[c]).all()
    assert erased_any
    # Evaluation never erases.
    evaluation = build_pipeline(preset, 32, MEAN, STD, train=False, random_erasing=1.0)
    assert torch.equal(
        evaluation(image, generator(0)), build_pipeline(preset, 32, MEAN, STD, train=False)(image, generator(0))
    )


def test_random_erasing_outside_zero_one_names_the_flag():
    from vit_accel.errors import UserError

    with pytest.raises(UserError, match="--random_erasing"):
        build_pipeline("none", 32, MEAN, STD, train=True, random_erasing=1.5)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("preset", AUGMENTATIONS)
def test_a_photo_with_exif_orientation_gets_the_pixels_of_its_upright_copy(preset, train, tmp_path):
    jpeg, png = write_exif_rotated_pair(tmp_path, size=(24, 16))
    pipeline = build_pipeline(preset, 24, MEAN, STD, train=train)
    with PIL.Image.open(jpeg) as photo, PIL.Image.open(png) as upright:
        assert photo.size == (16, 24) and upright.size == (24, 16)  # stored turned
        assert torch.equal(pipeline(photo, generator(3)), pipeline(upright, generator(3)))
        # The same upright pixels as 🤗 datasets' decoding and transformers' load_image give.
        from datasets import Image
        from transformers.image_utils import load_image

        decoded = Image().decode_example({"path": str(jpeg), "bytes": None})
        assert np.array_equal(np.asarray(prepare_image(photo)), np.asarray(decoded.convert("RGB")))
        assert np.array_equal(np.asarray(prepare_image(photo)), np.asarray(load_image(str(jpeg))))
        assert np.array_equal(np.asarray(prepare_image(photo)), np.asarray(upright))


def test_the_mae_preset_is_maes_crop_and_flip_on_torchvisions_stream():
    """MAE pre-trains on a bicubic random resized crop of 20-100% of the area and a flip, nothing else: the preset
    gives torchvision's own transforms' pixels from the same random stream."""
    from torchvision.transforms import v2

    image = PIL.Image.fromarray(random_rgb(3, (80, 60)))
    pipeline = build_pipeline("mae", 48, MEAN, STD, train=True)
    expected = v2.Compose(
        [
            v2.RandomResizedCrop(48, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
        ]
    )
    for seed in range(4):
        seeded = int(torch.randint(0, 2**62, (1,), generator=generator(seed)))
        torch.manual_seed(seeded)
        assert torch.equal(pipeline(image, generator(seed)), expected(image))
    crops = {tuple(pipeline(image, generator(seed)).float().mean(dim=(1, 2)).tolist()) for seed in range(6)}
    assert len(crops) == 6  # random: the crops differ
    evaluation = build_pipeline("mae", 48, MEAN, STD, train=False)
    centre = v2.Compose(
        [v2.Resize(55, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(48), v2.PILToTensor()]
    )
    assert torch.equal(evaluation(image, generator(0)), centre(image))

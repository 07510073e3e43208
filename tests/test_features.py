"""`vit-accel features`: the pooled features of images, equal to the model's own outputs, every call alike."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import write_exif_rotated_pair
from PIL import Image
from safetensors.torch import load_file

from vit_accel.cli import main

TINY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)  # fmt: skip
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _processor(folder: Path) -> None:
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=MEAN, image_std=STD).save_pretrained(folder)


def _models(root: Path) -> dict[str, Path]:
    """Tiny random models of the kinds features reads: our classifiers (CLS and mean pooling), our MAE pre-training
    directory (no image processor: MAE's ImageNet mean and std), a transformers `ViTModel` directory and a timm
    model in timm's Hub layout (its `pretrained_cfg` mean and std)."""
    import timm
    from timm.models import save_for_hf
    from transformers import ViTConfig, ViTModel

    from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelForPreTraining, ViTAccelMAEConfig

    torch.manual_seed(0)
    folders = {name: root / name for name in ("cls", "mean", "mae", "transformers", "timm")}
    ViTAccelForImageClassification(ViTAccelConfig(**TINY, num_labels=3)).save_pretrained(folders["cls"])
    ViTAccelForImageClassification(ViTAccelConfig(**TINY, num_labels=3, pooling="mean")).save_pretrained(
        folders["mean"]
    )
    decoder = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                   decoder_intermediate_size=32)  # fmt: skip
    ViTAccelForPreTraining(ViTAccelMAEConfig(**TINY, **decoder)).save_pretrained(folders["mae"])
    ViTModel(ViTConfig(**TINY, hidden_act="gelu")).save_pretrained(folders["transformers"])
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32,
                               depth=2, num_heads=2, mlp_ratio=2.0, num_classes=7)  # fmt: skip
    save_for_hf(theirs, folders["timm"], safe_serialization=True)
    for name in ("cls", "mean", "transformers"):
        _processor(folders[name])
    return folders


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return _models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Five 16x16 images (the models' size: no resampling), in a folder with a subfolder."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(5):
        folder = root / ("sub" if index >= 3 else "")
        folder.mkdir(exist_ok=True)
        path = folder / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _features(model: Path, inputs: list, out: Path, *flags: str) -> tuple[torch.Tensor, list[str]]:
    assert main(["features", "--model", str(model), *map(str, inputs), "--output_dir", str(out), *flags]) == 0
    return load_file(out / "features.safetensors")["features"], json.loads((out / "images.json").read_text())


def _pixels(paths: list[str], mean, std) -> torch.Tensor:
    """The images as the models take them, by numpy (not the pipeline under test)."""
    arrays = np.stack([np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255 for path in paths])
    normalised = (arrays - np.asarray(mean)) / np.asarray(std)
    return torch.from_numpy(normalised).permute(0, 3, 1, 2).float()


def _direct(kind: str, folder: Path, pixels: torch.Tensor) -> torch.Tensor:
    """Each model's own output for the features it stands for, computed by the model itself."""
    from transformers import ViTModel

    from vit_accel import ViTAccelForImageClassification, ViTAccelForPreTraining

    with torch.no_grad():
        if kind == "timm":  # the pre-logits features its head reads
            import timm

            theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            return theirs.forward_head(theirs.forward_features(pixels), pre_logits=True)
        if kind == "transformers":  # what its ViTForImageClassification reads: the CLS token, not the pooler
            return ViTModel.from_pretrained(folder).eval()(pixels).last_hidden_state[:, 0]
        if kind == "mae":
            model = ViTAccelForPreTraining.from_pretrained(folder).eval()
            model.config.mask_ratio = 0.0
            latent, mask, _ = model.vit.forward_visible(pixels)
            assert not mask.any()
            return latent[:, 0]
        outputs = ViTAccelForImageClassification.from_pretrained(folder).eval().vit(pixels)
        return outputs.last_hidden_state[:, 0] if kind == "cls" else outputs.pooler_output


@pytest.mark.parametrize("kind", ["cls", "mean", "mae", "transformers", "timm"])
def test_features_of_a_folder_equal_the_models_own_output_every_call(models, images, kind, tmp_path, capsys):
    from vit_accel.weights.transformers_families import PREPROCESSING

    folder = images[0].parent
    features, files = _features(models[kind], [folder], tmp_path / "a")
    assert "5 images x 32 features" in capsys.readouterr().out
    assert files == sorted(str(path) for path in images)  # every image below the folder, sorted
    if kind == "mae":
        mean, std = PREPROCESSING["vit_mae"]["image_mean"], PREPROCESSING["vit_mae"]["image_std"]
    elif kind == "timm":
        cfg = json.loads((models[kind] / "config.json").read_text())["pretrained_cfg"]
        mean, std = cfg["mean"], cfg["std"]
    else:
        mean, std = MEAN, STD
    expected = _direct(kind, models[kind], _pixels(files, mean, std))
    assert features.shape == expected.shape == (5, 32)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)
    again, _ = _features(models[kind], [folder], tmp_path / "b")
    assert torch.equal(features, again)  # deterministic: an MAE encoder masks nothing, in patch order


def test_single_images_keep_the_order_given_and_exif_is_applied(models, images, tmp_path):
    jpeg, png = write_exif_rotated_pair(tmp_path / "photos")
    order = [images[4], jpeg, images[0], png]
    features, files = _features(models["cls"], order, tmp_path / "out")
    assert files == [str(path) for path in order]
    whole, listed = _features(models["cls"], [images[0].parent], tmp_path / "folder")
    torch.testing.assert_close(features[0], whole[listed.index(str(images[4]))], atol=1e-6, rtol=0)
    torch.testing.assert_close(features[1], features[3], atol=1e-5, rtol=0)  # the photo is seen upright


def _refused(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_naming_it_and_writes_nothing(models, images, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    model = ["--model", str(models["cls"])]
    cases = {
        "no images": ([*model, str(empty)], f"{empty}: a folder with no image files"),
        "unreadable": ([*model, str(images[0]), str(broken)], f"Cannot read image {broken}"),
        "missing": ([*model, str(tmp_path / "nope.png")], f"No such image file: {tmp_path / 'nope.png'}"),
        "not a model": (["--model", str(empty), str(images[0])], str(empty)),
        "a config without weights": (["--model", str(tmp_path / "half"), str(images[0])], str(tmp_path / "half")),
    }
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text((models["cls"] / "config.json").read_text())
    for name, (argv, expected) in cases.items():
        err = _refused(["features", *argv, "--output_dir", str(out)], capsys)
        assert expected in err, (name, err)
    assert not (out / "features.safetensors").exists()
    # Earlier features are kept unless --overwrite.
    _features(models["cls"], [images[0]], out)
    capsys.readouterr()
    before = (out / "features.safetensors").read_bytes()
    err = _refused(["features", *model, str(images[1]), "--output_dir", str(out)], capsys)
    assert "--output_dir" in err and "--overwrite" in err
    assert (out / "features.safetensors").read_bytes() == before
    _features(models["cls"], [images[1]], out, "--overwrite")
    assert (out / "features.safetensors").read_bytes() != before

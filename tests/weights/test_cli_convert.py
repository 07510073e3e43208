"""`vit-accel convert` and `vit-accel export`: files written, progress shown, outputs load where users are."""

import json

import pytest
import torch
from factories import write_google_npz
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTForImageClassification

from vit_accel import ViTAccelForImageClassification
from vit_accel.cli import main
from vit_accel.weights import convert, google_npz

ATOL = 1e-4


def test_convert_npz_then_export_to_transformers_and_timm(tmp_path, capsys):
    npz = write_google_npz(tmp_path / "vit.npz", num_classes=21, representation_size=48)
    out = tmp_path / "ours"
    assert main(["convert", str(npz), str(out), "--image_size", "48", "--num_labels", "10"]) == 0
    captured = capsys.readouterr()
    assert "reading: 42/42 tensors" in captured.err and "writing: 40/40 tensors" in captured.err
    assert "image 48, 10 labels" in captured.out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vit_accel" and config["image_size"] == 48 and len(config["id2label"]) == 10
    assert {"model.safetensors", "modeling_vit_accel.py", "configuration_vit_accel.py"} <= {
        p.name for p in out.iterdir()
    }

    converted = ViTAccelForImageClassification.from_pretrained(out)  # a directory of ours: the standard path
    direct = ViTAccelForImageClassification.from_pretrained(npz, image_size=48, num_labels=10, head_init="normal")
    with torch.no_grad():  # give the (zero) head values so the logits compare something
        converted.classifier.weight.copy_(direct.classifier.weight)
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = direct(pixels).logits
        torch.testing.assert_close(converted(pixels).logits, expected, atol=0, rtol=0)
    converted.save_pretrained(out)

    assert main(["export", str(out), str(tmp_path / "hf")]) == 0
    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.layer_norm_eps == 1e-6
    with torch.no_grad():
        torch.testing.assert_close(hf(pixels).logits, expected, atol=ATOL, rtol=0)

    assert main(["export", str(out), str(tmp_path / "timm"), "--to", "timm"]) == 0
    args = json.loads((tmp_path / "timm" / "config.json").read_text())["model_args"]
    timm_model = VisionTransformer(**args).eval()
    timm_model.load_state_dict(load_file(tmp_path / "timm" / "model.safetensors"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(pixels), expected, atol=ATOL, rtol=0)


def test_convert_reports_bad_sources(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not weights")
    assert main(["convert", str(tmp_path / "notes.txt"), str(tmp_path / "out")]) == 2
    assert "notes.txt: unknown checkpoint format" in capsys.readouterr().err
    npz = write_google_npz(tmp_path / "vit.npz")
    assert main(["convert", str(npz), str(tmp_path / "out"), "--variant", "vit-base-p16-224", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'vit.embeddings.patch_embeddings.projection.weight' has shape (48, 3, 8, 8)" in err
    assert "expects (768, 3, 16, 16)" in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("layout", [{}, {"prefix": "params/", "big_vision": True, "scanned": True}])
def test_streamed_conversion_writes_exactly_what_from_pretrained_loads(tmp_path, monkeypatch, layout):
    # Every array above the threshold is planned as a placeholder and read back while the file is written; with
    # threshold 0 that is every array of this small file, so the streaming path is what this test exercises.
    monkeypatch.setattr(google_npz, "LAZY_THRESHOLD", 0)
    npz = write_google_npz(tmp_path / "vit.npz", num_classes=7, **layout)
    convert(npz, tmp_path / "out", num_labels=7, image_size=48)
    written = load_file(tmp_path / "out" / "model.safetensors")
    expected = ViTAccelForImageClassification.from_pretrained(npz, num_labels=7, image_size=48).state_dict()
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(written[key], value), key
    assert written["classifier.weight"].abs().sum() > 0  # the 7-class head was kept and streamed, not re-initialised

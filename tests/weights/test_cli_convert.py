"""`vit-accel convert` and `vit-accel export`: files written, progress shown, outputs load where users are."""

import json

import pytest
import torch
from factories import tiny_config_kwargs, write_google_npz
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTForImageClassification

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.cli import main
from vit_accel.weights import convert, export, google_npz

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
    assert main(["convert", "vit-bse-p16-224", str(tmp_path / "out"), "--num_labels", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'vit-bse-p16-224' is not a named variant; did you mean 'vit-base-p16-224'?" in err


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


def test_convert_keeps_a_trained_timm_head_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)
    reference = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                                  num_classes=6).eval()  # fmt: skip
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.1)
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, tmp_path / "timm.pth")
    assert main(["convert", str(tmp_path / "timm.pth"), str(tmp_path / "out"), "--num_heads", "4", "--quiet"]) == 0
    assert "6 labels" in capsys.readouterr().out
    converted = ViTAccelForImageClassification.from_pretrained(tmp_path / "out")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


@pytest.fixture
def ours(tmp_path):
    torch.manual_seed(0)
    labels = {i: f"digit_{i}" for i in range(5)}
    model = ViTAccelForImageClassification(
        ViTAccelConfig(**tiny_config_kwargs(id2label=labels, label2id={v: k for k, v in labels.items()}))
    ).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "ours")
    (tmp_path / "ours" / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImageProcessor"}')
    return model, tmp_path / "ours"


def test_export_to_onnx_runs_in_onnxruntime_with_any_batch(ours, tmp_path, capsys):
    import onnxruntime

    model, source = ours
    assert main(["export", str(source), str(tmp_path / "onnx"), "--to", "onnx"]) == 0
    assert f"wrote onnx export to {tmp_path / 'onnx'}" in capsys.readouterr().out
    assert {"model.onnx", "config.json", "preprocessor_config.json"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["id2label"]["4"] == "digit_4"
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        with torch.no_grad():
            expected = model(pixels).logits
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=ATOL, rtol=0)


def test_export_to_exported_program_reloads_with_any_batch(ours, tmp_path):
    model, source = ours
    assert main(["export", str(source), str(tmp_path / "ep"), "--to", "exported-program"]) == 0
    program = torch.export.load(str(tmp_path / "ep" / "model.pt2"))
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(pixels), model(pixels).logits, atol=ATOL, rtol=0)


def test_export_refusals_are_one_line_and_write_nothing(ours, tmp_path, capsys, monkeypatch):
    from vit_accel.weights import graph_export

    _, source = ours
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    assert main(["export", str(source), str(source), "--to", "timm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"vit-accel export: error: {source}: is the source {source} itself" in err
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    monkeypatch.setattr(graph_export, "installed", lambda name: name != "onnxscript")
    assert main(["export", str(source), str(tmp_path / "onnx"), "--to", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err == "vit-accel export: error: export --to onnx needs onnxscript, which is not installed: pip install " \
                  "'vit_accel[onnx]'.\n"  # fmt: skip
    assert not (tmp_path / "onnx").exists()


def test_convert_writes_the_source_preprocessing_so_predict_can_use_it(tmp_path, capsys):
    from PIL import Image

    npz = write_google_npz(tmp_path / "vit.npz", num_classes=7)
    assert main(["convert", str(npz), str(tmp_path / "from_npz"), "--image_size", "48", "--quiet"]) == 0
    processor = json.loads((tmp_path / "from_npz" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 48, "width": 48}
    assert processor["image_mean"] == [0.5] * 3 and processor["image_std"] == [0.5] * 3  # Google's [-1, 1]
    pixels = torch.randint(0, 256, (48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(pixels.numpy()).save(tmp_path / "image.png")
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "from_npz"), str(tmp_path / "image.png"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["predictions"]
    model = ViTAccelForImageClassification.from_pretrained(npz, image_size=48)
    with torch.no_grad():
        scores = model((pixels.permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5).logits.softmax(-1)[0]
    top = scores.topk(5)
    assert [p["label"] for p in got] == [model.config.id2label[i] for i in top.indices.tolist()]
    assert [p["score"] for p in got] == pytest.approx(top.values.tolist(), abs=1e-4)

    # A directory of ours: its own processor goes along, at the new size.
    ours = tmp_path / "ours"
    ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).save_pretrained(ours)
    settings = {"image_processor_type": "ViTImageProcessor", "size": {"height": 32, "width": 32},
                "image_mean": [0.3, 0.4, 0.5], "image_std": [0.2, 0.2, 0.2], "resample": 3}  # fmt: skip
    (ours / "preprocessor_config.json").write_text(json.dumps(settings))
    assert main(["convert", str(ours), str(tmp_path / "ours64"), "--image_size", "64", "--quiet"]) == 0
    copied = json.loads((tmp_path / "ours64" / "preprocessor_config.json").read_text())
    assert copied == {**settings, "size": {"height": 64, "width": 64}}

    # A bare timm state dict does not say how its images were normalised: no guess, and the user is told.
    torch.save(VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=4).state_dict(),
               tmp_path / "timm.pth")  # fmt: skip
    capsys.readouterr()
    argv = ["convert", str(tmp_path / "timm.pth"), str(tmp_path / "from_timm"), "--num_heads", "4", "--quiet"]
    assert main(argv) == 0
    assert "so " + str(tmp_path / "from_timm") + " has no preprocessor_config.json" in capsys.readouterr().err
    assert not (tmp_path / "from_timm" / "preprocessor_config.json").exists()
    assert main(["predict", "--model", str(tmp_path / "from_timm"), str(tmp_path / "image.png")]) == 2
    err = capsys.readouterr().err
    assert "preprocessor_config.json is missing" in err and "ViTImageProcessor" in err and err.count("\n") == 1


def test_convert_and_export_write_only_into_a_new_or_empty_directory(ours, tmp_path, capsys):
    from vit_accel.errors import UserError

    _, source = ours
    npz = write_google_npz(tmp_path / "vit.npz")
    target = tmp_path / "target"
    target.mkdir()
    (target / "README.md").write_text("a model card")
    for call in (
        lambda: convert(npz, target),
        lambda: export(source, target, to="timm"),
        lambda: export(source, target, to="onnx"),
    ):
        with pytest.raises(UserError, match=r"target: not empty \(it holds README.md\).*Choose a new directory"):
            call()
    assert [p.name for p in target.iterdir()] == ["README.md"] and (target / "README.md").read_text() == "a model card"
    (target / "README.md").unlink()
    assert main(["convert", str(npz), str(target), "--quiet"]) == 0  # an empty directory is a new one
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in target.iterdir()}


def test_a_one_class_head_is_refused(tmp_path, capsys):
    from vit_accel.cli import main

    assert main(["convert", "vit-tiny-p16-224", str(tmp_path / "out"), "--num_labels", "1"]) == 2
    err = capsys.readouterr().err
    assert "vit-accel convert: error: --num_labels 1: a classifier needs at least two classes." in err
    assert not (tmp_path / "out").exists()

"""Our own directories and safetensors files as sources: whichever names save_pretrained or convert wrote."""

import pytest
import torch
from factories import tiny_config_kwargs
from safetensors.torch import save_file

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import convert, read_checkpoint


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(representation_size=40))).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model


def test_save_pretrained_directory_converts_and_reads_back(model, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    checkpoint = read_checkpoint(tmp_path / "saved")
    assert checkpoint.format == "vit_accel" and set(checkpoint.state_dict) == set(model.state_dict())
    convert(tmp_path / "saved", tmp_path / "converted", representation_size=40)
    again = ViTAccelForImageClassification.from_pretrained(tmp_path / "converted")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(pixels).logits, model(pixels).logits, atol=0, rtol=0)


def test_bare_files_of_ours_load_into_either_class(model, tmp_path):
    save_file(model.state_dict(), tmp_path / "classifier.safetensors")
    save_file(model.vit.state_dict(), tmp_path / "base.safetensors")  # no "vit." prefix, a pooler of width 40
    pixels = torch.randn(2, 3, 32, 32)
    # A bare file does not record the number of heads (a directory's config.json does).
    heads = {"num_attention_heads": 4}
    classifier = ViTAccelForImageClassification.from_pretrained(tmp_path / "classifier.safetensors", **heads)
    base = ViTAccelModel.from_pretrained(tmp_path / "base.safetensors", **heads)
    with torch.no_grad():
        expected = model.vit(pixels)
        torch.testing.assert_close(classifier(pixels).logits, model(pixels).logits, atol=0, rtol=0)
        torch.testing.assert_close(base(pixels).pooler_output, expected.pooler_output, atol=0, rtol=0)

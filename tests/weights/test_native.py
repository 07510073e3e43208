"""Our own directories and safetensors files as sources: whichever names save_pretrained or convert wrote."""

import pytest
import torch
from factories import tiny_config_kwargs
from safetensors.torch import save_file

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.errors import UserError
from vit_accel.modeling_vit_accel import resample_position_embeddings
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


def test_a_directory_of_ours_at_another_image_size_resamples_its_position_embeddings(model, tmp_path):
    # The keywords train.py passes for `--model_name_or_path <run> --image_size 64`: labels and the new size.
    model.config.drop_path_rate = 0.1  # a saved setting the shapes do not tell: it must survive the new size
    labels = {i: f"class_{i}" for i in range(5)}
    model.config.id2label, model.config.label2id = labels, {v: k for k, v in labels.items()}
    model.save_pretrained(tmp_path / "run")
    keywords = {"num_labels": 5, "id2label": labels, "label2id": model.config.label2id}
    bigger = ViTAccelForImageClassification.from_pretrained(tmp_path / "run", image_size=64, **keywords)
    assert bigger.config.image_size == 64 and bigger.config.drop_path_rate == 0.1
    assert bigger.config.id2label == labels and bigger.config.representation_size == 40
    saved, got = model.state_dict(), bigger.state_dict()
    key = "vit.embeddings.position_embeddings"
    expected = resample_position_embeddings(saved[key], (8, 8), old_grid=(4, 4), mode="bicubic")
    assert got[key].shape == (1, 65, 48)
    torch.testing.assert_close(got[key], expected, atol=0, rtol=0)
    assert all(torch.equal(got[name], value) for name, value in saved.items() if name != key)  # head included
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 64, 64)).logits.shape == (1, 5)
    # transformers' Auto class hands the new size over inside the config it builds: the same model.
    from transformers import AutoModelForImageClassification

    auto = AutoModelForImageClassification.from_pretrained(tmp_path / "run", image_size=64)
    assert type(auto) is ViTAccelForImageClassification
    assert all(torch.equal(auto.state_dict()[name], value) for name, value in got.items())
    # The same size is transformers' own path, unchanged.
    same = ViTAccelForImageClassification.from_pretrained(tmp_path / "run", image_size=32)
    assert all(torch.equal(same.state_dict()[name], value) for name, value in saved.items())


def test_a_directory_of_ours_keeps_its_trained_head_at_another_size_unless_told(model, tmp_path):
    model.save_pretrained(tmp_path / "run")
    with pytest.raises(UserError, match=r"run: the checkpoint's head has shape \(5, 40\).*ignore_mismatched_sizes"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "run", image_size=64, num_labels=3)
    replaced = ViTAccelForImageClassification.from_pretrained(
        tmp_path / "run", image_size=64, num_labels=3, ignore_mismatched_sizes=True
    )
    assert replaced.classifier.weight.shape == (3, 40) and len(replaced.config.id2label) == 3
    torch.testing.assert_close(  # the rest is still the trained model's, resampled
        replaced.vit.embeddings.position_embeddings,
        resample_position_embeddings(model.vit.embeddings.position_embeddings, (8, 8)),
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {
            "layer_scale_init_value": 1e-5,
            "num_register_tokens": 4,
            "prefix_position_embeddings": False,
            "pooling": "cls_mean",
        },
        {"use_cls_token": False, "pooling": "map"},
        {"pre_norm": True, "patch_embedding_bias": False, "pooling": "mean", "hidden_act": "quick_gelu"},
    ],
    ids=["dinov2-registers", "siglip", "clip-mean"],
)
def test_family_directory_loads_at_another_resolution_keeping_its_family(tmp_path, fields):
    """Our own directory of a family, read through the converter (here: to resample its positions)."""
    torch.manual_seed(0)
    config = ViTAccelConfig(**tiny_config_kwargs(**fields))
    model = ViTAccelForImageClassification(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "saved")
    size = config.image_size + config.patch_size
    again = ViTAccelForImageClassification.from_pretrained(tmp_path / "saved", image_size=size)
    for name, value in fields.items():
        assert getattr(again.config, name) == value, name
    table = "vit.embeddings.position_embeddings"
    mine, read = model.state_dict(), again.state_dict()
    assert set(read) == set(mine)
    for key, value in mine.items():
        if key == table:
            assert read[key].shape[1] == (size // config.patch_size) ** 2 + config.num_prefix_positions
        else:
            assert torch.equal(read[key], value), key

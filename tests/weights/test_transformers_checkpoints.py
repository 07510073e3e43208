"""transformers ViT checkpoints (legacy on-disk names, v5 names, ViTModel, Hub id) and the export to transformers."""

import json

import pytest
import torch
from factories import tiny_config_kwargs
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import export, read_checkpoint
from vit_accel.weights.transformers_vit import rename_state_dict

ATOL = 1e-4


def hf_model(cls=ViTForImageClassification, **overrides):
    torch.manual_seed(0)
    kwargs = tiny_config_kwargs(**overrides)
    model = cls(ViTConfig(**kwargs, hidden_act="gelu", attn_implementation="eager"))  # eps: ViTConfig's 1e-12
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


def test_legacy_names_directory_matches_transformers(tmp_path):
    reference = hf_model()
    reference.save_pretrained(tmp_path / "hf")  # transformers 5 writes the legacy names on disk
    assert any(".encoder.layer.0.attention.attention.query" in key for key in read_safetensors_keys(tmp_path / "hf"))
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "hf")
    assert ours.config.layer_norm_eps == 1e-12 and ours.config.num_labels == 5  # read from the source config
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels).logits, atol=ATOL, rtol=0)


def test_legacy_key_map_is_explicit():
    renamed = rename_state_dict(
        {
            "vit.encoder.layer.3.attention.attention.query.weight": torch.zeros(1),
            "vit.encoder.layer.3.attention.output.dense.bias": torch.zeros(1),
            "vit.encoder.layer.3.intermediate.dense.weight": torch.zeros(1),
            "vit.encoder.layer.3.output.dense.weight": torch.zeros(1),
            "encoder.layer.0.layernorm_before.weight": torch.zeros(1),
            "pooler.dense.weight": torch.zeros(1),
        }
    )
    assert sorted(renamed) == [
        "vit.layers.0.layernorm_before.weight",
        "vit.layers.3.attention.o_proj.bias",
        "vit.layers.3.attention.q_proj.weight",
        "vit.layers.3.mlp.fc1.weight",
        "vit.layers.3.mlp.fc2.weight",
        "vit.pooler.dense.weight",
    ]


def test_v5_in_memory_names_file_matches_transformers(tmp_path):
    reference = hf_model()
    state_dict = reference.state_dict()
    assert "vit.layers.0.attention.q_proj.weight" in state_dict
    save_file(state_dict, tmp_path / "v5.safetensors")
    ours = ViTAccelForImageClassification.from_pretrained(
        tmp_path / "v5.safetensors", num_labels=5, num_attention_heads=4, layer_norm_eps=1e-12
    )
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels).logits, atol=ATOL, rtol=0)


def test_vit_model_with_pooler_and_resampling(tmp_path):
    reference = hf_model(ViTModel)  # no "vit." prefix; its pooler is the 21k pre_logits
    reference.save_pretrained(tmp_path / "base")
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = reference(pixels, interpolate_pos_encoding=True)  # transformers resamples bicubic at forward time
    base = ViTAccelModel.from_pretrained(tmp_path / "base", image_size=48, representation_size=48)
    with torch.no_grad():
        got = base(pixels)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=ATOL, rtol=0)
    classifier = ViTAccelForImageClassification.from_pretrained(tmp_path / "base", num_labels=100, image_size=48)
    assert classifier.vit.pooler is None and not classifier.classifier.weight.any()  # pre_logits dropped, zero head


def test_hub_id_from_the_local_hub_cache(tmp_path, monkeypatch):
    reference = hf_model(ViTModel)
    snapshot = tmp_path / "hub" / "models--google--vit-tiny-test-in21k" / "snapshots" / ("0" * 40)
    reference.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--google--vit-tiny-test-in21k" / "refs").mkdir()
    (tmp_path / "hub" / "models--google--vit-tiny-test-in21k" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ours = ViTAccelModel.from_pretrained("google/vit-tiny-test-in21k", cache_dir=str(tmp_path / "hub"))
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(pixels).last_hidden_state, reference(pixels).last_hidden_state, atol=ATOL, rtol=0
        )


def test_round_trip_ours_to_transformers_export(tmp_path):
    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(5)}
    ours = ViTAccelForImageClassification(
        ViTAccelConfig(**tiny_config_kwargs(id2label=labels, label2id={v: k for k, v in labels.items()}))
    ).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_(0, 0.1)
    export(ours, tmp_path / "hf", to="transformers")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "vit" and config["layer_norm_eps"] == 1e-6
    loaded = ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert loaded.config.id2label == labels
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, ours(pixels).logits, atol=ATOL, rtol=0)
    # and back: the exported directory is itself a source we read
    again = ViTAccelForImageClassification.from_pretrained(tmp_path / "hf")
    assert read_checkpoint(tmp_path / "hf").format == "transformers"
    with torch.no_grad():
        torch.testing.assert_close(again(pixels).logits, ours(pixels).logits, atol=0, rtol=0)


def test_export_refuses_pre_logits(tmp_path):
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(representation_size=48)))
    with pytest.raises(ValueError, match="no pre_logits"):
        export(model, tmp_path / "hf", to="transformers")


def read_safetensors_keys(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        return list(handle.keys())

"""The head rule and the pooler: what a checkpoint's classifier and pre_logits/pooler become in our models."""

import logging

import numpy as np
import pytest
import torch
from factories import google_npz_arrays, tiny_config_kwargs, write_google_npz
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer, _load_weights
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import export

ATOL = 1e-4
POLICY_LOGGER = "vit_accel.weights.policy"


def warnings_from_policy(caplog):
    return [r.getMessage() for r in caplog.records if r.name == POLICY_LOGGER and r.levelno >= logging.WARNING]


def test_trained_npz_head_is_kept_without_num_labels_and_matches_timm(tmp_path, caplog):
    path = write_google_npz(tmp_path / "finetuned.npz", num_classes=10)
    reference = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2,
                                  num_classes=10).eval()  # fmt: skip
    _load_weights(reference, str(path))
    with caplog.at_level(logging.INFO):
        ours = ViTAccelForImageClassification.from_pretrained(path)
    assert ours.config.num_labels == 10 and ours.config.id2label[9] == "LABEL_9"
    assert warnings_from_policy(caplog) == []
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = reference(pixels), ours(pixels).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert got.abs().max() > 0.1


def test_zero_21k_head_gives_a_new_default_head_and_one_log_line(tmp_path, caplog):
    path = write_google_npz(tmp_path / "in21k.npz", num_classes=21, representation_size=48, zero_head=True)
    with caplog.at_level(logging.INFO):
        model = ViTAccelForImageClassification.from_pretrained(path)
    assert model.config.num_labels == 2 and model.classifier.weight.shape == (2, 48)
    assert not model.classifier.weight.any() and model.vit.pooler is None  # zeros (head_init), pre_logits dropped
    assert warnings_from_policy(caplog) == [
        f"{path} has an all-zero head, so the model gets a new 2-class head (head_init); pass num_labels= (or "
        "id2label=) for your classes."
    ]
    caplog.clear()
    headless = write_google_npz(tmp_path / "headless.npz", num_classes=0)
    with caplog.at_level(logging.INFO):
        assert ViTAccelForImageClassification.from_pretrained(headless).config.num_labels == 2
    assert len(warnings_from_policy(caplog)) == 1 and "has no classifier" in warnings_from_policy(caplog)[0]


def test_head_on_pre_logits_keeps_pre_logits(tmp_path):
    arrays = google_npz_arrays(num_classes=5, representation_size=48)  # as wide as the encoder: only a rule tells
    np.savez(tmp_path / "vit.npz", **arrays)
    model = ViTAccelForImageClassification.from_pretrained(tmp_path / "vit.npz")
    assert model.config.representation_size == 48 and model.config.num_labels == 5
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = model.vit(pixels).last_hidden_state[:, 0]
        got = model(pixels).logits
    pre = torch.tanh(cls @ torch.from_numpy(arrays["pre_logits/kernel"]) + torch.from_numpy(arrays["pre_logits/bias"]))
    expected = pre @ torch.from_numpy(arrays["head/kernel"]) + torch.from_numpy(arrays["head/bias"])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_transformers_labels_go_with_their_head(tmp_path):
    labels = {0: "cat", 1: "dog", 2: "fish", 3: "bird", 4: "frog"}
    torch.manual_seed(0)
    reference = ViTForImageClassification(
        ViTConfig(**tiny_config_kwargs(id2label=labels, label2id={v: k for k, v in labels.items()}))
    ).eval()
    reference.save_pretrained(tmp_path / "hf")
    kept = ViTAccelForImageClassification.from_pretrained(tmp_path / "hf")
    assert kept.config.id2label == labels and kept.config.label2id["frog"] == 4
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(kept(pixels).logits, reference(pixels).logits, atol=ATOL, rtol=0)
    new = ViTAccelForImageClassification.from_pretrained(tmp_path / "hf", num_labels=3)
    assert new.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"} and not new.classifier.weight.any()


def test_timm_head_and_label_names_are_kept(tmp_path):
    labels = {i: f"class_{i}" for i in range(4)}
    torch.manual_seed(0)
    ours = ViTAccelForImageClassification(
        ViTAccelConfig(**tiny_config_kwargs(num_labels=4, id2label=labels, label2id={v: k for k, v in labels.items()}))
    ).eval()
    export(ours, tmp_path / "timm", to="timm")  # timm's Hub layout: model.safetensors + config.json (label_names)
    again = ViTAccelForImageClassification.from_pretrained(tmp_path / "timm")
    assert again.config.id2label == labels and again.config.num_attention_heads == 4
    save_file(load_file(tmp_path / "timm" / "model.safetensors"), tmp_path / "bare.safetensors")
    bare = ViTAccelForImageClassification.from_pretrained(tmp_path / "bare.safetensors", num_attention_heads=4)
    assert bare.config.num_labels == 4  # a bare timm file: the class count, no names
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for model in (again, bare):
            torch.testing.assert_close(model(pixels).logits, ours(pixels).logits, atol=ATOL, rtol=0)


def test_bare_model_pooler_from_vit_model_npz_pre_logits_or_fresh(tmp_path, caplog):
    torch.manual_seed(0)
    reference = ViTModel(ViTConfig(**tiny_config_kwargs(), pooler_output_size=32, pooler_act="tanh")).eval()
    reference.save_pretrained(tmp_path / "vit_model")
    base = ViTAccelModel.from_pretrained(tmp_path / "vit_model")
    assert base.pooler.dense.weight.shape == (32, 48)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base(pixels).pooler_output, reference(pixels).pooler_output, atol=ATOL, rtol=0)

    arrays = google_npz_arrays(num_classes=21, representation_size=40, zero_head=True)
    np.savez(tmp_path / "in21k.npz", **arrays)
    base = ViTAccelModel.from_pretrained(tmp_path / "in21k.npz")
    with torch.no_grad():
        out = base(pixels)
    pre = torch.tanh(
        out.last_hidden_state[:, 0] @ torch.from_numpy(arrays["pre_logits/kernel"])
        + torch.from_numpy(arrays["pre_logits/bias"])
    )
    torch.testing.assert_close(out.pooler_output, pre, atol=ATOL, rtol=0)

    with caplog.at_level(logging.INFO):
        fresh = ViTAccelModel.from_pretrained(write_google_npz(tmp_path / "plain.npz"))
    assert fresh.pooler.dense.weight.shape == (48, 48) and fresh.pooler.dense.weight.std() > 0.01
    assert not fresh.pooler.dense.bias.any()
    assert warnings_from_policy(caplog) == [
        f"{tmp_path / 'plain.npz'} has no pooler (pre_logits) of width 48: the model's pooler is newly initialised."
    ]


@pytest.mark.parametrize("num_labels", [7, 3])
def test_asked_label_count_keeps_or_replaces_the_head(tmp_path, num_labels):
    path = write_google_npz(tmp_path / "vit.npz", num_classes=7)
    model = ViTAccelForImageClassification.from_pretrained(path, num_labels=num_labels)
    assert model.classifier.weight.shape == (num_labels, 48)
    assert bool(model.classifier.weight.any()) == (num_labels == 7)

"""MAE checkpoints (transformers' ViTMAE directories and Hub repos, Meta's original .pth, our own MAE directories):
continuing pre-training from them, and fine-tuning their encoder with a new head."""

import argparse
import json

import httpx
import huggingface_hub
import pytest
import torch
import torch.nn.functional as F
from factories import tiny_config_kwargs
from huggingface_hub import errors
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from vit_accel import (
    ViTAccelConfig,
    ViTAccelForImageClassification,
    ViTAccelForPreTraining,
    ViTAccelMAEConfig,
    ViTAccelModel,
)
from vit_accel.errors import UserError
from vit_accel.weights import CheckpointError

ATOL = 1e-5
DECODER = dict(
    decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=64
)


def hf_mae(**overrides) -> ViTMAEForPreTraining:
    """A tiny transformers MAE with every tensor random, sin-cos tables included (a fresh one holds zeros there)."""
    kwargs = tiny_config_kwargs(**DECODER)
    kwargs.pop("num_labels")
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**kwargs, attn_implementation="eager"))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.normal_(0, 0.1)
    return model.eval()


def same_outputs(ours, reference, batch=2):
    pixels, noise = torch.randn(batch, 3, 32, 32), torch.rand(batch, 16)
    with torch.no_grad():
        mine, theirs = ours(pixels, noise=noise), reference(pixels, noise=noise)
    torch.testing.assert_close(mine.logits, theirs.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=ATOL, rtol=0)


def meta_state_dict(reference: ViTMAEForPreTraining) -> dict:
    """The reference's weights under the names of Meta's MAE code (timm blocks, qkv fused)."""
    sd = reference.state_dict()
    out = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"],
        "norm.bias": sd["vit.layernorm.bias"],
    }
    for name in ("mask_token", "decoder_embed.weight", "decoder_embed.bias", "decoder_pos_embed", "decoder_norm.weight",
                 "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"):  # fmt: skip
        out[name] = sd[f"decoder.{name}"]
    blocks = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.o_proj": "attn.proj",
              "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}  # fmt: skip
    for ours, theirs, depth in (("vit.layers", "blocks", 2), ("decoder.decoder_layers", "decoder_blocks", 2)):
        for i in range(depth):
            for kind in ("weight", "bias"):
                qkv = [sd[f"{ours}.{i}.attention.{n}_proj.{kind}"] for n in "qkv"]
                out[f"{theirs}.{i}.attn.qkv.{kind}"] = torch.cat(qkv)
                for module, meta in blocks.items():
                    out[f"{theirs}.{i}.{meta}.{kind}"] = sd[f"{ours}.{i}.{module}.{kind}"]
    return {key: value.clone() for key, value in out.items()}


def test_transformers_vitmae_directory_continues_pretraining(tmp_path):
    reference = hf_mae(mask_ratio=0.6)  # norm_pix_loss left at ViTMAEConfig's False, eps at its 1e-12
    reference.save_pretrained(tmp_path / "hf")
    ours = ViTAccelForPreTraining.from_pretrained(tmp_path / "hf")
    assert (ours.config.mask_ratio, ours.config.norm_pix_loss, ours.config.layer_norm_eps) == (0.6, False, 1e-12)
    assert ours.config.num_attention_heads == 4 and ours.config.decoder_num_attention_heads == 4
    same_outputs(ours, reference)
    ours.train()
    assert all(p.requires_grad for p in ours.parameters()) and "decoder.decoder_pos_embed" in dict(ours.named_buffers())


def test_meta_pth_loads_weights_only(tmp_path, monkeypatch):
    reference = hf_mae(layer_norm_eps=1e-6, norm_pix_loss=True)  # Meta's eps; its released runs' loss
    torch.save({"model": meta_state_dict(reference)}, tmp_path / "mae_pretrain.pth")
    unsafe = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unsafe.append(k.get("weights_only")) or real_load(*a, **k))
    # Meta's .pth does not record the heads: they are asked for, never guessed.
    for given, missing in (({}, "num_attention_heads"), ({"num_attention_heads": 4}, "decoder_num_attention_heads")):
        with pytest.raises(CheckpointError, match=f"does not record {missing} .*pass {missing}=") as caught:
            ViTAccelForPreTraining.from_pretrained(tmp_path / "mae_pretrain.pth", **given)
        assert "\n" not in str(caught.value)
    ours = ViTAccelForPreTraining.from_pretrained(
        tmp_path / "mae_pretrain.pth", num_attention_heads=4, decoder_num_attention_heads=4
    )
    assert unsafe and all(flag is True for flag in unsafe)  # every read of the file: weights_only=True
    assert ours.config.layer_norm_eps == 1e-6 and ours.config.norm_pix_loss is True
    same_outputs(ours, reference)


def test_a_pth_that_needs_unpickling_is_refused(tmp_path):
    reference = hf_mae()
    torch.save({"model": meta_state_dict(reference), "args": argparse.Namespace(lr=1.0)}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="ckpt.pth"):
        ViTAccelForPreTraining.from_pretrained(tmp_path / "ckpt.pth")


def encoder_features(reference: ViTMAEForPreTraining, pixels: torch.Tensor) -> torch.Tensor:
    """MAE's fine-tuning features: the mean of the patch tokens after the last block (no final norm). Averaging does
    not care that transformers' ViTMAE shuffles the tokens even with nothing masked."""
    reference.config.mask_ratio = 0.0
    with torch.no_grad():
        hidden = reference.vit(pixels, output_hidden_states=True).hidden_states[-1]
    return hidden[:, 1:].mean(dim=1)


@pytest.mark.parametrize("source", ["transformers", "meta", "ours"])
def test_mae_checkpoint_fine_tunes_its_encoder_with_mean_pooling(tmp_path, source):
    reference = hf_mae(layer_norm_eps=1e-6)
    if source == "transformers":
        reference.save_pretrained(tmp_path / "src")
        path = tmp_path / "src"
    elif source == "meta":
        path = tmp_path / "src.pth"
        torch.save({"model": meta_state_dict(reference)}, path)
    else:
        ViTAccelForPreTraining.from_pretrained(_saved(reference, tmp_path)).save_pretrained(tmp_path / "src")
        path = tmp_path / "src"
    heads = {"num_attention_heads": 4} if source == "meta" else {}
    model = ViTAccelForImageClassification.from_pretrained(path, num_labels=3, head_init="normal", **heads).eval()
    assert model.config.pooling == "mean" and model.vit.layernorm is None and model.num_labels == 3
    assert torch.equal(model.vit.fc_norm.weight, torch.ones(48)) and torch.equal(
        model.vit.fc_norm.bias, torch.zeros(48)
    )
    assert not [key for key in model.config.to_diff_dict() if "decoder" in key or "mask" in key]  # encoder only
    pixels = torch.randn(2, 3, 32, 32)
    features = F.layer_norm(encoder_features(reference, pixels), (48,), eps=1e-6)
    with torch.no_grad():
        logits = model(pixels).logits
    torch.testing.assert_close(
        logits, F.linear(features, model.classifier.weight, model.classifier.bias), atol=1e-4, rtol=0
    )

    # The pooling asked for wins: the CLS token after the encoder's final LayerNorm.
    cls = ViTAccelForImageClassification.from_pretrained(path, num_labels=3, pooling="cls", **heads)
    assert cls.config.pooling == "cls" and cls.vit.layernorm is not None
    # The bare encoder keeps its final LayerNorm.
    bare = ViTAccelModel.from_pretrained(path, **heads)
    assert torch.equal(bare.layernorm.weight, reference.vit.layernorm.weight)


def _saved(reference, tmp_path):
    reference.save_pretrained(tmp_path / "hf-for-ours")
    return tmp_path / "hf-for-ours"


@pytest.mark.parametrize("source", ["transformers", "meta", "ours"])
def test_mae_checkpoint_as_classifier_without_a_head_size_is_refused(tmp_path, source):
    reference = hf_mae()
    if source == "meta":
        path = tmp_path / "src.pth"
        torch.save({"model": meta_state_dict(reference)}, path)
    elif source == "transformers":
        path = _saved(reference, tmp_path)
    else:
        path = tmp_path / "ours"
        ViTAccelForPreTraining.from_pretrained(_saved(reference, tmp_path)).save_pretrained(path)
    with pytest.raises(
        UserError, match=r"an MAE pre-training checkpoint has no classifier; pass num_labels="
    ) as caught:
        ViTAccelForImageClassification.from_pretrained(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_only_an_mae_checkpoint_continues_pretraining(tmp_path):
    torch.manual_seed(0)
    ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).save_pretrained(tmp_path / "classifier")
    encoder_only = {k: v for k, v in meta_state_dict(hf_mae()).items() if not k.startswith(("decoder", "mask"))}
    torch.save(encoder_only, tmp_path / "timm.pth")
    for path in (tmp_path / "classifier", tmp_path / "timm.pth", "vit-base-p16-224"):
        with pytest.raises(UserError, match=r"not an MAE pre-training checkpoint \(it has no decoder\)") as caught:
            ViTAccelForPreTraining.from_pretrained(path)
        assert "\n" not in str(caught.value)


def test_another_resolution_gets_sincos_tables_for_its_grid(tmp_path):
    hf_mae().save_pretrained(tmp_path / "hf")
    ours = ViTAccelForPreTraining.from_pretrained(tmp_path / "hf", image_size=48)
    fresh = ViTAccelForPreTraining(ours.config)
    for name in ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"):
        torch.testing.assert_close(dict(ours.named_buffers())[name], dict(fresh.named_buffers())[name])
    assert ours.vit.embeddings.position_embeddings.shape == (1, 37, 48)


def test_vitmae_hub_repo_continues_pretraining(tmp_path, monkeypatch):
    reference = hf_mae()
    reference.save_pretrained(tmp_path / "repo")
    asked = []

    def hub(repo_id, filename, **kwargs):
        asked.append(filename)
        path = tmp_path / "repo" / filename
        if repo_id != "facebook/vit-mae-tiny" or not path.is_file():
            response = httpx.Response(404, request=httpx.Request("GET", f"https://hub.invalid/{repo_id}/{filename}"))
            raise errors.RemoteEntryNotFoundError(f"{filename} not found", response=response)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    ours = ViTAccelForPreTraining.from_pretrained("facebook/vit-mae-tiny")
    assert "model.safetensors" in asked
    same_outputs(ours, reference)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"mask_ratio": 1.0}, "mask_ratio"), ({"decoder_num_attention_heads": 5}, "decoder_num_attention_heads")],
)
def test_settings_mae_cannot_use_are_refused_in_one_line_naming_the_field(tmp_path, overrides, field):
    hf_mae().save_pretrained(tmp_path / "hf")
    with pytest.raises(UserError, match=field) as caught:
        ViTAccelForPreTraining.from_pretrained(tmp_path / "hf", **overrides)
    assert str(tmp_path / "hf") in str(caught.value) and "\n" not in str(caught.value)
    # A classifier has no decoder and no mask: those keywords would do nothing there, so they are refused by name.
    with pytest.raises(TypeError, match=f"unexpected keyword '{next(iter(overrides))}'"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "hf", num_labels=3, **overrides)


def test_convert_writes_the_encoder_as_a_classifier_with_maes_normalisation(tmp_path):
    from vit_accel.weights import convert

    reference = hf_mae()
    torch.save({"model": meta_state_dict(reference)}, tmp_path / "mae.pth")
    with pytest.raises(UserError, match="pass num_labels="):
        convert(tmp_path / "mae.pth", tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    convert(tmp_path / "mae.pth", tmp_path / "out", num_labels=3, num_attention_heads=4)
    model = ViTAccelForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.pooling == "mean" and model.num_labels == 3
    torch.testing.assert_close(model.vit.layers[1].mlp.fc2.weight, reference.vit.layers[1].mlp.fc2.weight)
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["image_std"] == [0.229, 0.224, 0.225]


def test_a_layerscale_mae_directory_of_ours_reloads_and_fine_tunes(tmp_path):
    fields = {**tiny_config_kwargs(**DECODER), "layer_scale_init_value": 0.1, "prefix_position_embeddings": False}
    fields.pop("num_labels")
    torch.manual_seed(0)
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**fields)).eval()
    model.save_pretrained(tmp_path / "mae")
    loaded = ViTAccelForPreTraining.from_pretrained(tmp_path / "mae").eval()
    assert loaded.config.layer_scale_init_value == 0.1 and not loaded.config.prefix_position_embeddings
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded(pixels, noise=noise).logits, model(pixels, noise=noise).logits)
    classifier = ViTAccelForImageClassification.from_pretrained(tmp_path / "mae", num_labels=2)
    assert torch.equal(classifier.vit.layers[0].layer_scale1.lambda1, model.vit.layers[0].layer_scale1.lambda1)
    assert classifier.config.pooling == "mean" and classifier.vit.embeddings.position_embeddings.shape == (1, 16, 48)

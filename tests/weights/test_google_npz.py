"""Google npz checkpoints: ours against timm's own `_load_weights`, head policy, prefixes, big_vision, bad input."""

import numpy as np
import pytest
import torch
from factories import google_npz_arrays, tiny_config_kwargs, write_google_npz
from timm.models.vision_transformer import VisionTransformer, _load_weights

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import CheckpointError, google_npz, read_checkpoint

ATOL = 1e-4


def timm_vit(image_size=32, num_classes=7, **kwargs):
    model = VisionTransformer(
        img_size=image_size,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=4,
        mlp_ratio=2,
        num_classes=num_classes,
        **kwargs,
    )
    return model.eval()


@pytest.mark.parametrize("image_size", [32, 48, 56])  # 4x4 grid as stored; 6x6 and 7x7 resampled (bilinear, as timm)
def test_npz_logits_match_timm_load_weights(tmp_path, image_size):
    path = write_google_npz(tmp_path / "vit.npz")
    reference = timm_vit(image_size)
    _load_weights(reference, str(path))
    ours = ViTAccelForImageClassification.from_pretrained(path, num_labels=7, image_size=image_size)
    assert ours.config.hidden_act == "gelu" and ours.config.num_attention_heads == 4
    pixels = torch.randn(3, 3, image_size, image_size)
    with torch.no_grad():
        expected, got = reference(pixels), ours(pixels).logits
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert got.abs().max() > 0.1  # a real comparison, not zeros against zeros


def test_new_head_features_match_timm_and_head_is_zero_or_normal(tmp_path):
    path = write_google_npz(tmp_path / "vit.npz", num_classes=21, representation_size=48, zero_head=True)
    reference = timm_vit(48, num_classes=100)
    _load_weights(reference, str(path))  # skips the 21-class head, ignores pre_logits
    ours = ViTAccelForImageClassification.from_pretrained(path, num_labels=100, image_size=48)
    assert ours.config.representation_size is None and ours.vit.pooler is None  # pre_logits dropped
    assert ours.classifier.weight.shape == (100, 48) and not ours.classifier.weight.any()
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
        got = ours.vit(pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    normal = ViTAccelForImageClassification.from_pretrained(path, num_labels=100, head_init="normal")
    std = normal.classifier.weight.std().item()
    assert 0.015 < std < 0.025 and not normal.classifier.bias.any()  # transformers: trunc normal(0.02), zero bias
    with pytest.raises(ValueError, match="head_init"):
        ViTAccelForImageClassification.from_pretrained(path, num_labels=100, head_init="xavier")


def test_21k_head_and_pre_logits_kept_when_asked(tmp_path):
    arrays = google_npz_arrays(num_classes=21, representation_size=40)
    np.savez(tmp_path / "vit.npz", **arrays)
    model = ViTAccelForImageClassification.from_pretrained(tmp_path / "vit.npz", num_labels=21, representation_size=40)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = model.vit(pixels).last_hidden_state[:, 0]
        got = model(pixels).logits
    pre = torch.tanh(cls @ torch.from_numpy(arrays["pre_logits/kernel"]) + torch.from_numpy(arrays["pre_logits/bias"]))
    expected = pre @ torch.from_numpy(arrays["head/kernel"]) + torch.from_numpy(arrays["head/bias"])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(CheckpointError, match="width 40, not representation_size=32"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "vit.npz", num_labels=21, representation_size=32)


@pytest.mark.parametrize(
    "layout", [{"prefix": "opt/target/"}, {"prefix": "params/", "big_vision": True, "scanned": True}]
)
def test_prefixed_and_big_vision_scanned_files_match_timm(tmp_path, layout):
    path = write_google_npz(tmp_path / "vit.npz", **layout)
    # big_vision adds position embeddings to the grid only (timm: no_embed_class); we give CLS a zero row instead.
    reference = timm_vit(48, no_embed_class=layout.get("big_vision", False))
    _load_weights(reference, str(path))
    ours = ViTAccelForImageClassification.from_pretrained(path, num_labels=7, image_size=48)
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


def test_base_model_loads_without_head(tmp_path):
    path = write_google_npz(tmp_path / "vit.npz")
    base = ViTAccelModel.from_pretrained(path)
    full = ViTAccelForImageClassification.from_pretrained(path, num_labels=7)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(base(pixels).last_hidden_state, full.vit(pixels).last_hidden_state, atol=0, rtol=0)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    path = write_google_npz(tmp_path / "vit.npz")
    config = ViTAccelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                            image_size=32, patch_size=8, num_labels=3)  # fmt: skip
    key = r"'vit\.embeddings\.patch_embeddings\.projection\.weight'"
    with pytest.raises(
        CheckpointError, match=rf"vit.npz: checkpoint tensor {key} has shape \(48, 3, 8, 8\).*\(64, 3, 8, 8\)"
    ):
        ViTAccelForImageClassification.from_pretrained(path, config=config)
    with pytest.raises(CheckpointError, match=rf"{key} has shape \(48, 3, 8, 8\).*expects \(768, 3, 16, 16\)"):
        ViTAccelForImageClassification.from_pretrained(path, variant="vit-base-p16-224", num_labels=3)


def test_pickled_and_malformed_npz_are_refused(tmp_path):
    arrays = google_npz_arrays()
    arrays["cls"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "objects.npz", **arrays)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "objects.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match=r"other.npz: not a Google ViT npz: no 'embedding/kernel'"):
        read_checkpoint(tmp_path / "other.npz")
    gap = google_npz_arrays(prefix="params/", big_vision=True)
    del gap["params/cls"]
    np.savez(tmp_path / "gap.npz", **gap)
    with pytest.raises(CheckpointError, match="no 'cls' token"):
        read_checkpoint(tmp_path / "gap.npz")


def test_transformers_keywords_accepted_and_typos_refused(tmp_path):
    path = write_google_npz(tmp_path / "vit.npz")
    labels = {0: "cat", 1: "dog", 2: "fish"}
    model = ViTAccelForImageClassification.from_pretrained(
        path,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        ignore_mismatched_sizes=True,
        dtype="bfloat16",
    )
    assert model.config.num_labels == 3 and model.config.id2label == labels
    assert model.classifier.weight.dtype == torch.bfloat16 and not model.training
    with pytest.raises(TypeError, match="unexpected keyword 'num_lables'"):
        ViTAccelForImageClassification.from_pretrained(path, num_lables=3)


@pytest.mark.parametrize("rows, cols", [(1100, 700), (64, 512), (3, 200)])  # 2x18 tiles, exactly one, part of one
def test_tiled_transpose_equals_plain_copy(rows, cols):
    source = torch.randn(rows, cols)
    out = torch.empty(cols, rows)
    assert torch.equal(google_npz._copy_transposed(out, source.t()), source.t())
    kernel = torch.randn(4, 4, 3, 8)  # not a transposed matrix (the conv kernel's HWIO -> OIHW): a plain copy
    assert torch.equal(
        google_npz._copy_transposed(torch.empty(8, 3, 4, 4), kernel.permute(3, 2, 0, 1)), kernel.permute(3, 2, 0, 1)
    )


def test_streamed_read_of_a_file_cut_short_names_the_member(tmp_path):
    # The central directory is read when the file is opened; a member that ends past the end of the file (the file
    # was cut after that) must be an error naming it, not a crash (SIGBUS) when its mapped pages are touched.
    path = write_google_npz(tmp_path / "vit.npz")
    planned = google_npz._Planned(google_npz.open_npz(path), threshold=0)
    key = "head/kernel"
    assert planned.read(key).shape == planned.header(key)[0]
    info = planned.npz.zip.getinfo(key + ".npy")
    with open(path, "r+b") as handle:
        # past the local header and the .npy header (about 200 bytes), well before the end of the 1,344 data bytes
        handle.truncate(info.header_offset + 30 + len(info.filename) + 256)
    with pytest.raises(CheckpointError, match=r"vit.npz: member 'head/kernel' ends after \d+ of \d+ bytes"):
        planned.read(key)


def test_streamed_read_falls_back_to_plain_reads_where_files_cannot_be_mapped(tmp_path, monkeypatch):
    path = write_google_npz(tmp_path / "vit.npz")
    planned = google_npz._Planned(google_npz.open_npz(path), threshold=0)
    mapped = planned.read("head/kernel").copy()

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap raises on a file system without mmap support

    monkeypatch.setattr(google_npz.mmap, "mmap", refuse)
    assert np.array_equal(planned.read("head/kernel"), mapped)


@pytest.mark.parametrize("representation_size", [None, 40])
def test_written_npz_reads_back_and_timm_loads_it(tmp_path, representation_size):
    torch.manual_seed(0)
    config = ViTAccelConfig(**tiny_config_kwargs(num_labels=7, representation_size=representation_size))
    ours = ViTAccelForImageClassification(config).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_(0, 0.1)
    path = google_npz.write(ours, tmp_path / "written.npz")
    assert google_npz.detect(np.load(path).files)
    again = ViTAccelForImageClassification.from_pretrained(path)  # its trained head and pre_logits kept
    for key, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    if representation_size is None:  # timm's VisionTransformer has no pre_logits layer to load into
        reference = timm_vit(32)
        _load_weights(reference, str(path))
        pixels = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(reference(pixels), ours(pixels).logits, atol=ATOL, rtol=0)

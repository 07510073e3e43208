"""Named weights fetched for real over HTTP from a server on 127.0.0.1: normal fetch, resume, corrupt files, offline."""

import socket

import pytest
import torch
from factories import cache_files, npz_bytes
from timm.models.vision_transformer import VisionTransformer, _load_weights

from vit_accel import ViTAccelForImageClassification
from vit_accel.weights import WeightsDownloadError, download

B16 = "imagenet21k/ViT-B_16.npz"
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


def test_named_variant_downloads_converts_caches_and_resamples_like_timm(server, tmp_path):
    server.files[B16] = data = npz_bytes(patch=16, grid=14, num_classes=21, representation_size=48, zero_head=True)
    model = ViTAccelForImageClassification.from_pretrained("vit-base-p16-384", num_labels=100, **TINY)
    assert server.requests == [None]
    assert cache_files(tmp_path / "hub") == ["ViT-B_16.npz", "ViT-B_16.safetensors"]
    assert (tmp_path / "hub" / "vit_accel" / "ViT-B_16.npz").read_bytes() == data
    assert model.config.image_size == 384 and model.vit.embeddings.position_embeddings.shape == (1, 577, 48)
    assert model.vit.pooler is None and model.classifier.weight.shape == (100, 48) and not model.classifier.weight.any()
    reference = VisionTransformer(img_size=384, patch_size=16, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2)
    _load_weights(reference.eval(), str(tmp_path / "hub" / "vit_accel" / "ViT-B_16.npz"))  # bilinear 14 -> 24
    pixels = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(model.vit(pixels).last_hidden_state[:, 0], expected, atol=1e-4, rtol=0)
    # The second load reads the cached safetensors: no request, same weights.
    again = ViTAccelForImageClassification.from_pretrained("vit-base-p16-384", num_labels=100, **TINY)
    assert server.requests == [None]
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.files[B16] = data = npz_bytes()
    folder = tmp_path / "hub" / "vit_accel"
    folder.mkdir(parents=True)
    (folder / "ViT-B_16.npz.incomplete").write_bytes(data[:1000])  # left by a killed process
    server.cut_next = True  # and this transfer drops halfway through the rest
    path = download.fetch(B16, verify=download_verify, quiet=True)
    assert path.read_bytes() == data
    assert server.requests[0] == "bytes=1000-"
    resumed_at = int(server.requests[1].split("=")[1].rstrip("-"))
    assert 1000 < resumed_at < len(data)
    assert cache_files(tmp_path / "hub") == ["ViT-B_16.npz"]


def download_verify(path):
    from vit_accel.weights.google_npz import verify_npz

    verify_npz(path)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_download_is_refused_and_not_cached(server, tmp_path, damage):
    data = bytearray(npz_bytes())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]  # the server itself has a short file: the transfer "succeeds"
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(64)  # same length, flipped bytes inside an array: CRC mismatch
    server.files[B16] = bytes(data)
    with pytest.raises(WeightsDownloadError, match=r"ViT-B_16.npz but the file is not valid and was deleted"):
        ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", num_labels=10, **TINY)
    assert cache_files(tmp_path / "hub") == []


def test_unreachable_and_offline_errors_name_the_url_and_the_local_alternative(server, tmp_path, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("VIT_ACCEL_WEIGHTS_URL", f"http://127.0.0.1:{port}/")
    url = f"http://127.0.0.1:{port}/imagenet21k/ViT-L_32.npz"
    with pytest.raises(WeightsDownloadError, match=rf"Could not download {url}: .*pass its path"):
        ViTAccelForImageClassification.from_pretrained("vit-large-p32-384", num_labels=10)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsDownloadError, match=r"ViT-L_32.npz: HF_HUB_OFFLINE is set.*from_pretrained\('/path/to/"):
        ViTAccelForImageClassification.from_pretrained("vit-large-p32-384", num_labels=10)
    with pytest.raises(WeightsDownloadError, match=r"No public ImageNet-21k .* for vit-tiny-p32-224"):
        ViTAccelForImageClassification.from_pretrained("vit-tiny-p32-224", num_labels=10)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("VIT_ACCEL_WEIGHTS_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    with pytest.raises(WeightsDownloadError, match=r"HTTP 404"):
        ViTAccelForImageClassification.from_pretrained("vit-large-p32-224", num_labels=10)
    assert cache_files(tmp_path / "hub") == []


def test_weight_table_uses_googles_public_names():
    assert download.weight_file("vit-base-p16-384") == "imagenet21k/ViT-B_16.npz"
    assert download.weight_file("vit-large-p16-224", "augreg").startswith("augreg/L_16-i21k-300ep-")
    assert download.weight_file("vit-small-p16-224").startswith("augreg/S_16-i21k-300ep-lr_0.001-aug_light1")
    assert download.DEFAULT_BASE_URL == "https://storage.googleapis.com/vit_models/"

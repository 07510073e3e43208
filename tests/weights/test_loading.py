"""The converting from_pretrained's keywords: each is checked for its effect, or for its refusal by name."""

import httpx
import huggingface_hub
import pytest
import torch
from factories import FAKE_TOKEN, cache_files, npz_bytes, tiny_config_kwargs, write_google_npz
from huggingface_hub import errors
from safetensors.torch import save_file
from transformers import ViTConfig, ViTModel

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.errors import UserError
from vit_accel.weights import CheckpointError, WeightsDownloadError, convert, read_checkpoint
from vit_accel.weights.loading import build

B16 = "imagenet21k/ViT-B_16.npz"
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


@pytest.fixture
def npz(tmp_path):
    return write_google_npz(tmp_path / "vit.npz", num_classes=7)


def logits(model, pixels):
    with torch.no_grad():
        return model(pixels).logits


def test_device_map_places_the_model_and_offloads_to_disk_as_transformers_does(npz, tmp_path):
    reference = ViTAccelForImageClassification.from_pretrained(npz)
    pixels = torch.randn(2, 3, 32, 32)
    expected = logits(reference, pixels)
    for device_map in ("cpu", "auto", {"": "cpu"}):
        model = ViTAccelForImageClassification.from_pretrained(npz, device_map=device_map)
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        torch.testing.assert_close(logits(model, pixels), expected, atol=0, rtol=0)
    layers_on_disk = {"vit.embeddings": "cpu", "vit.layers.0": "cpu", "vit.layers.1": "disk", "vit.layernorm": "cpu",
                      "classifier": "cpu"}  # fmt: skip
    model = ViTAccelForImageClassification.from_pretrained(
        npz, device_map=layers_on_disk, offload_folder=tmp_path / "offload"
    )
    assert model.hf_device_map == layers_on_disk
    assert model.vit.layers[1].mlp.fc1.weight.device.type == "meta"  # read from the offload folder when it runs
    assert model.vit.layers[0].mlp.fc1.weight.device.type == "cpu"
    assert any(p.name.startswith("vit.layers.1.") for p in (tmp_path / "offload").iterdir())
    torch.testing.assert_close(logits(model, pixels), expected, atol=0, rtol=0)
    # "auto" with a memory budget under the model's size: accelerate's planner sends the rest to disk.
    budget = sum(p.numel() * p.element_size() for p in reference.parameters()) * 3 // 4
    model = ViTAccelForImageClassification.from_pretrained(
        npz, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path / "auto_offload"
    )
    assert set(model.hf_device_map.values()) == {"cpu", "disk"}
    torch.testing.assert_close(logits(model, pixels), expected, atol=0, rtol=0)


def test_attn_implementation_takes_effect_as_in_transformers(npz, monkeypatch):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def spy(*args, **kwargs):  # a registered backend, as hub kernels are: counts its calls, computes as SDPA
        calls.append(1)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "vit_accel_test_spy", spy)
    pixels = torch.randn(2, 3, 32, 32)
    eager = ViTAccelForImageClassification.from_pretrained(npz, attn_implementation="eager")
    expected = logits(eager, pixels)
    assert calls == []
    spied = ViTAccelForImageClassification.from_pretrained(npz, attn_implementation="vit_accel_test_spy")
    assert spied.config._attn_implementation == "vit_accel_test_spy"
    torch.testing.assert_close(logits(spied, pixels), expected, atol=1e-5, rtol=0)
    assert len(calls) == 2  # one per block
    spied.set_attn_implementation("eager")
    logits(spied, pixels)
    assert len(calls) == 2


def test_dtype_attn_implementation_and_loading_info(npz):
    model = ViTAccelForImageClassification.from_pretrained(npz, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model = ViTAccelForImageClassification.from_pretrained(npz, torch_dtype="float16")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert ViTAccelForImageClassification.from_pretrained(npz).dtype == torch.float32  # "auto": the file's dtype
    # Set the way transformers sets it: on the config, before the model is built, checked by the model.
    model = ViTAccelForImageClassification.from_pretrained(npz, attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    with pytest.raises((ValueError, ImportError), match="not_a_backend"):
        ViTAccelForImageClassification.from_pretrained(npz, attn_implementation="not_a_backend")
    model, info = ViTAccelForImageClassification.from_pretrained(npz, num_labels=3, output_loading_info=True)
    assert info["missing_keys"] == {"classifier.weight", "classifier.bias"}  # the new 3-class head
    assert info["unexpected_keys"] == {"classifier.weight", "classifier.bias"}  # the checkpoint's 7-class one
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []


def test_low_cpu_mem_usage_the_converted_tensors_become_the_parameters(tmp_path):
    torch.manual_seed(0)
    source = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).state_dict()
    save_file(source, tmp_path / "ours.safetensors")
    checkpoint = read_checkpoint(tmp_path / "ours.safetensors")  # memory-mapped tensors

    for low in (True, False):  # transformers 5 has one path, meta-device first; so has this one
        model = ViTAccelForImageClassification.from_pretrained(
            tmp_path / "ours.safetensors", low_cpu_mem_usage=low, num_attention_heads=4
        )
        assert torch.equal(model.classifier.weight, source["classifier.weight"])
    model = build(ViTAccelForImageClassification, checkpoint, num_attention_heads=4)
    # No second copy: the parameter is the very tensor that was read.
    read = checkpoint.state_dict["vit.layers.0.mlp.fc1.weight"]
    assert model.vit.layers[0].mlp.fc1.weight.data_ptr() == read.data_ptr()


def test_refused_keywords_are_named(npz):
    with pytest.raises(TypeError, match=r"unexpected keyword 'num_lables' \(did you mean 'num_labels'\?\)"):
        ViTAccelForImageClassification.from_pretrained(npz, num_lables=3)
    for key, value in (("quantization_config", {}), ("tp_plan", "auto"), ("gguf_file", "x.gguf"), ("key_mapping", {})):
        with pytest.raises(TypeError, match=rf"unexpected keyword '{key}'"):
            ViTAccelForImageClassification.from_pretrained(npz, **{key: value})
    with pytest.raises(UserError, match="weights_only=False.*never unpickles"):
        ViTAccelForImageClassification.from_pretrained(npz, weights_only=False)
    with pytest.raises(UserError, match=r"revision='v2'.*local path, which has no revisions"):
        ViTAccelForImageClassification.from_pretrained(npz, revision="v2")
    with pytest.raises(CheckpointError, match=r"use_safetensors=True, but this is a npz file"):
        ViTAccelForImageClassification.from_pretrained(npz, use_safetensors=True)
    with pytest.raises(CheckpointError, match=r"head has shape \(7, 48\).*ignore_mismatched_sizes=False forbids"):
        ViTAccelForImageClassification.from_pretrained(npz, num_labels=3, ignore_mismatched_sizes=False)
    assert ViTAccelForImageClassification.from_pretrained(npz, num_labels=3, ignore_mismatched_sizes=True)
    with pytest.raises(UserError, match=r"'vit-bse-p16-224' is not a named variant.*did you mean 'vit-base-p16-224'"):
        ViTAccelForImageClassification.from_pretrained(npz, variant="vit-bse-p16-224")


def test_values_no_model_can_take_are_user_errors_naming_the_field(npz, tmp_path):
    for num_labels in (0, -1):  # a 0-wide head (and -1 quietly read as 0) would be written and "converted"
        with pytest.raises(UserError, match=rf"num_labels must be a positive integer.*got {num_labels}"):
            ViTAccelForImageClassification.from_pretrained(npz, num_labels=num_labels)
        with pytest.raises(UserError, match="num_labels"):
            convert(npz, tmp_path / "out", num_labels=num_labels)
    for fields, message in (
        ({"image_size": 18}, "image_size 18 must be a multiple of patch_size 8"),
        ({"image_size": -16}, "image_size -16 and patch_size 8 must be positive integers"),
        ({"num_attention_heads": 5}, r"hidden_size \(48\) must be divisible by num_attention_heads \(5\)"),
        ({"representation_size": -3}, "representation_size must be None or a positive integer, got -3"),
    ):
        with pytest.raises(UserError, match=rf"vit.npz: .*{message}"):
            ViTAccelForImageClassification.from_pretrained(npz, **fields)
    assert not (tmp_path / "out").exists()


def test_no_name_is_refused_at_once_not_read_as_the_current_directory_or_a_hub_repo(tmp_path, monkeypatch):
    # None used to become a Hub lookup of a repo named "None" (five retries without a network).
    ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    monkeypatch.chdir(tmp_path)  # a model of ours in the current directory must not be picked up by ""
    for name in ("", " "):
        with pytest.raises(UserError, match=r"an empty name; pass '\.' for the current directory"):
            ViTAccelForImageClassification.from_pretrained(name)
    with pytest.raises(UserError, match=r"from_pretrained\(None\): give a named variant, a local file"):
        ViTAccelForImageClassification.from_pretrained(None)
    assert ViTAccelForImageClassification.from_pretrained(".").config.num_labels == 5


# ---------------------------------------------------------------------------------------------------------------------
# named variants: the real download path, against a server on 127.0.0.1 (see conftest.py)


def test_named_variant_offline_never_downloads_and_names_the_cache(server, tmp_path, monkeypatch):
    server.files[B16] = npz_bytes(patch=16, grid=14, num_classes=21, zero_head=True)
    with pytest.raises(TypeError, match="unexpected keyword 'num_lables'"):  # refused before anything is fetched
        ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", num_lables=3, **TINY)
    cache = tmp_path / "hub" / "vit_accel" / "ViT-B_16.npz"
    with pytest.raises(WeightsDownloadError, match=rf"local_files_only=True, and the cache has no copy.*at {cache}"):
        ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", local_files_only=True, **TINY)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsDownloadError, match=rf"HF_HUB_OFFLINE is set.*place it at {cache} \(the cache\)"):
        ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", **TINY)
    assert server.requests == []  # not one request
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    online = ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", num_labels=3, **TINY)
    assert server.requests == [None]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now cached: offline loads work, still without a request
    for offline in ({}, {"local_files_only": True}):
        again = ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", num_labels=3, **offline, **TINY)
        assert torch.equal(again.vit.layers[1].mlp.fc2.weight, online.vit.layers[1].mlp.fc2.weight)
    assert server.requests == [None]


def test_named_variant_cache_dir_force_download_revision_token(server, tmp_path, monkeypatch):
    server.files[B16] = first = npz_bytes(patch=16, grid=14, num_classes=21, zero_head=True, seed=1)
    own = tmp_path / "own_cache"
    model = ViTAccelForImageClassification.from_pretrained(
        "vit-base-p16-224", cache_dir=own, token=FAKE_TOKEN, num_labels=3, **TINY
    )
    assert cache_files(own) == ["ViT-B_16.npz", "ViT-B_16.safetensors"] and cache_files(tmp_path / "hub") == []
    assert (own / "vit_accel" / "ViT-B_16.npz").read_bytes() == first
    assert server.headers[-1].get("Authorization") is None  # a Hub token never goes to the weights server
    server.files[B16] = second = npz_bytes(patch=16, grid=14, num_classes=21, zero_head=True, seed=2)
    cached = ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", cache_dir=own, num_labels=3, **TINY)
    assert len(server.requests) == 1 and torch.equal(cached.vit.layernorm.weight, model.vit.layernorm.weight)
    forced = ViTAccelForImageClassification.from_pretrained(
        "vit-base-p16-224", cache_dir=own, force_download=True, num_labels=3, **TINY
    )
    assert len(server.requests) == 2 and (own / "vit_accel" / "ViT-B_16.npz").read_bytes() == second
    assert not torch.equal(forced.vit.layernorm.weight, model.vit.layernorm.weight)  # reconverted from the new file
    with pytest.raises(UserError, match=r"revision='v2': vit-base-p16-224 is one fixed file .*no revisions"):
        ViTAccelForImageClassification.from_pretrained("vit-base-p16-224", revision="v2", cache_dir=own, **TINY)


# ---------------------------------------------------------------------------------------------------------------------
# Hub ids: huggingface_hub's download replaced by a local one that records what it was asked


class FakeHub:
    """`hf_hub_download` over local folders `repos[repo_id][revision]`, recording every call's keywords."""

    def __init__(self, repos):
        self.repos, self.calls = repos, []

    def __call__(self, repo_id, filename, **kwargs):
        self.calls.append({"repo_id": repo_id, "filename": filename, **kwargs})
        response = httpx.Response(404, request=httpx.Request("GET", f"https://hub.invalid/{repo_id}/{filename}"))
        if repo_id not in self.repos:
            raise errors.RepositoryNotFoundError(f"{repo_id} not found", response=response)
        revisions = self.repos[repo_id]
        folder = revisions.get(kwargs.get("revision") or "main")
        if folder is None:
            raise errors.RevisionNotFoundError("no such revision", response=response)
        path = folder / (kwargs.get("subfolder") or "") / filename
        if not path.is_file():
            raise errors.RemoteEntryNotFoundError(f"{filename} not found", response=response)
        return str(path)


def vit_model_dir(path, seed):
    torch.manual_seed(seed)
    model = ViTModel(ViTConfig(**tiny_config_kwargs(), hidden_act="gelu", layer_norm_eps=1e-6)).eval()
    model.save_pretrained(path)
    return model


def test_hub_keywords_reach_the_hub_download(tmp_path, monkeypatch, caplog):
    main, v2 = vit_model_dir(tmp_path / "main", 0), vit_model_dir(tmp_path / "v2" / "sub", 1)
    hub = FakeHub({"org/vit": {"main": tmp_path / "main", "v2": tmp_path / "v2"}})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    pixels = torch.randn(1, 3, 32, 32)
    ours = ViTAccelModel.from_pretrained("org/vit")
    torch.testing.assert_close(ours(pixels).pooler_output, main(pixels).pooler_output, atol=1e-4, rtol=0)
    defaults = {"subfolder": None, "revision": None, "cache_dir": None, "force_download": False,
                "local_files_only": False, "token": None}  # fmt: skip
    assert hub.calls[0] == {"repo_id": "org/vit", "filename": "config.json", **defaults}
    hub.calls.clear()
    with caplog.at_level("DEBUG"):
        ours = ViTAccelModel.from_pretrained(
            "org/vit", revision="v2", subfolder="sub", cache_dir=tmp_path / "c", token=FAKE_TOKEN, force_download=True
        )
    torch.testing.assert_close(ours(pixels).pooler_output, v2(pixels).pooler_output, atol=1e-4, rtol=0)
    for call in hub.calls:
        assert (call["revision"], call["subfolder"], call["cache_dir"]) == ("v2", "sub", tmp_path / "c")
        assert call["token"] == FAKE_TOKEN and call["force_download"] is True
    assert FAKE_TOKEN not in caplog.text
    hub.calls.clear()
    ViTAccelModel.from_pretrained("org/vit", local_files_only=True)
    assert {call["local_files_only"] for call in hub.calls} == {True}
    hub.calls.clear()
    ViTAccelModel.from_pretrained("org/vit", use_safetensors=True)
    assert [call["filename"] for call in hub.calls if call["filename"] != "config.json"] == ["model.safetensors"]
    with pytest.raises(CheckpointError, match=r"org/vit: the Hub repo has no revision 'v3'"):
        ViTAccelModel.from_pretrained("org/vit", revision="v3")
    with pytest.raises(CheckpointError, match=r"a transformers ViT repo without pytorch_model.bin"):
        ViTAccelModel.from_pretrained("org/vit", use_safetensors=False)

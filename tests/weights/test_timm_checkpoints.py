"""timm state dicts (.pth and .safetensors, fused qkv): logits against timm itself, resampling, export, refusals."""

import pickle

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from vit_accel import ViTAccelForImageClassification
from vit_accel.weights import CheckpointError, export, read_checkpoint

ATOL = 1e-4


def timm_vit(image_size=32, num_classes=6, **kwargs):
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=image_size,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2,
        num_classes=num_classes,
        **kwargs,
    )
    with torch.no_grad():  # timm zero-initialises some parts; random everywhere makes the comparison meaningful
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_logits_match_timm(tmp_path, suffix):
    reference = timm_vit()
    path = tmp_path / f"vit{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)  # timm's training checkpoint layout
    else:
        save_file(reference.state_dict(), path)
    assert read_checkpoint(path).format == "timm"
    ours = ViTAccelForImageClassification.from_pretrained(path, num_labels=6, num_attention_heads=4)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


def test_timm_checkpoint_resampled_like_timm(tmp_path):
    source = timm_vit(32)
    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    reference = timm_vit(48)
    # timm's own path for a checkpoint of another resolution: bicubic with antialias, CLS kept
    reference.load_state_dict(checkpoint_filter_fn(source.state_dict(), reference))
    ours = ViTAccelForImageClassification.from_pretrained(
        tmp_path / "vit.safetensors", num_labels=6, num_attention_heads=4, image_size=48
    )
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels).logits, reference(pixels), atol=ATOL, rtol=0)


def test_export_to_timm_round_trip(tmp_path):
    reference = timm_vit()
    save_file(reference.state_dict(), tmp_path / "vit.safetensors")
    ours = ViTAccelForImageClassification.from_pretrained(
        tmp_path / "vit.safetensors", num_labels=6, num_attention_heads=4
    )
    out = export(ours, tmp_path / "timm_out", to="timm")
    import json

    from safetensors.torch import load_file

    args = json.loads((out / "config.json").read_text())["model_args"]
    rebuilt = VisionTransformer(**args).eval()
    rebuilt.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_pickled_files_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"cls_token": Payload()}, handle)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "evil.pkl")
    torch.save({"state_dict": timm_vit().state_dict(), "args": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil.pth: refusing to unpickle"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "evil.pth")


class Custom:
    """A class of this test module: a file that pickles it needs this module's code to load."""


def test_files_torch_cannot_read_safely_say_what_they_are_and_never_advise_unpickling(tmp_path):
    torch.save({"state_dict": timm_vit().state_dict(), "args": Custom()}, tmp_path / "objects.pth")
    (tmp_path / "junk.bin").write_bytes(b"\x80\x04garbage" * 8)  # the first bytes of a pickle, then nonsense
    torch.save({"state_dict": timm_vit().state_dict()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "legacy.pth").read_bytes()[:40])
    torch.save({"a": 1}, tmp_path / "plain.pth")
    torch.save({"weight": torch.zeros(2), "epoch": 3, "note": "x"}, tmp_path / "mixed.pth")
    expected = {
        "objects.pth": r"objects.pth: refusing to unpickle: it holds Python objects \(\S*Custom\)",
        "junk.bin": r"junk.bin: not a readable torch checkpoint: corrupt, or no checkpoint at all",
        "cut.pth": r"cut.pth: not a readable torch checkpoint: the file ends too early \(truncated",
        "plain.pth": r"plain.pth: not a state dict: a dict of 'a': int, without any tensor\.",
        "mixed.pth": r"mixed.pth: not a plain state dict: besides tensors it holds 'epoch': int, 'note': str\.",
    }
    for name, message in expected.items():
        with pytest.raises(CheckpointError, match=message) as caught:
            read_checkpoint(tmp_path / name)
        text = str(caught.value)
        assert "weights_only" not in text and "\x1b[" not in text and "\n" not in text, text
    assert read_checkpoint(tmp_path / "legacy.pth").format == "timm"  # the uncut legacy file reads


def test_unknown_format_names_file_and_accepted_formats(tmp_path):
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(
        CheckpointError, match=r"weights.h5: unknown checkpoint format.*Accepted: a named variant.*\.npz"
    ):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "weights.h5")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"other.safetensors: tensors with unrecognised names"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "other.safetensors")
    avg = timm_vit(global_pool="avg", fc_norm=True)
    save_file(avg.state_dict(), tmp_path / "avg.safetensors")
    with pytest.raises(CheckpointError, match=r"fc_norm"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "avg.safetensors")

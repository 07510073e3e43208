"""Sources that cannot be read: one line naming the culprit, raised before any long work, nothing written."""

import httpx
import huggingface_hub
import pytest
import torch
from factories import tiny_config_kwargs
from huggingface_hub import errors

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.weights import CheckpointError, convert, export


@pytest.fixture
def ours_dir(tmp_path):
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    model.save_pretrained(tmp_path / "ours")
    return tmp_path / "ours"


def test_a_mistyped_local_path_is_not_blamed_on_the_hub_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "digits-data").mkdir(parents=True)
    # Offline (as the test session is): no network, the cache named, how to fill it.
    with pytest.raises(
        CheckpointError,
        match=r"^outputs/digits-dta: no such local file or directory, and the Hub could not be reached "
        r"\(HF_HUB_OFFLINE is set\) and the cache at .*models--outputs--digits-dta has no config.json; "
        r"fill it .* `hf download outputs/digits-dta`",
    ):
        ViTAccelForImageClassification.from_pretrained("outputs/digits-dta")

    def no_such_repo(repo_id, filename, **kwargs):
        response = httpx.Response(404, request=httpx.Request("GET", f"https://hub.invalid/{repo_id}"))
        raise errors.RepositoryNotFoundError("Repository Not Found", response=response)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_such_repo)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(
        CheckpointError,
        match=r"^outputs/digits-dta: no such local file or directory, and the Hub has no repo 'outputs/digits-dta'",
    ):
        ViTAccelForImageClassification.from_pretrained("outputs/digits-dta")
    with pytest.raises(CheckpointError, match=r"^\.\./digits: no such local file or directory \(nor a Hub repo id\)"):
        ViTAccelForImageClassification.from_pretrained("../digits")


def test_a_mistyped_variant_names_the_closest_one():
    with pytest.raises(ValueError, match=r"'vit-bse-p16-224' is not a named variant; did you mean 'vit-base-p16-224'"):
        ViTAccelForImageClassification.from_pretrained("vit-bse-p16-224", num_labels=10)


@pytest.mark.parametrize("kind", ["ours", "transformers"])
def test_a_corrupt_config_json_is_named(ours_dir, tmp_path, kind):
    folder = ours_dir
    if kind == "transformers":
        export(ours_dir, tmp_path / "hf")
        folder = tmp_path / "hf"
    (folder / "config.json").write_text('{"model_type": "vit", "hidden_size": 48,')  # cut short
    pattern = rf"{folder / 'config.json'}: not valid JSON"
    with pytest.raises(CheckpointError, match=pattern):
        ViTAccelForImageClassification.from_pretrained(folder)
    with pytest.raises(CheckpointError, match=pattern):
        convert(folder, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_truncated_safetensors_are_named_everywhere(ours_dir, tmp_path):
    weights = ours_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    pattern = (
        rf"{weights}: truncated safetensors file: its tensors need {len(data)} bytes, the file has {len(data) - 100}\b"
    )
    with pytest.raises(CheckpointError, match=pattern):
        ViTAccelForImageClassification.from_pretrained(ours_dir)  # our directory: checked before transformers reads it
    with pytest.raises(CheckpointError, match=pattern):
        ViTAccelForImageClassification.from_pretrained(weights)
    with pytest.raises(CheckpointError, match=pattern):
        convert(ours_dir, tmp_path / "converted")
    with pytest.raises(CheckpointError, match=pattern):
        export(ours_dir, tmp_path / "exported")
    assert not (tmp_path / "converted").exists() and not (tmp_path / "exported").exists()
    (tmp_path / "header_only.safetensors").write_bytes(data[:20])
    with pytest.raises(CheckpointError, match=r"header_only.safetensors: truncated safetensors file: the header alone"):
        ViTAccelForImageClassification.from_pretrained(tmp_path / "header_only.safetensors")


def test_outputs_that_would_clobber_are_refused_before_writing(ours_dir, tmp_path):
    before = {p.name: p.read_bytes() for p in ours_dir.iterdir()}
    for target in ("transformers", "timm", "exported-program"):
        with pytest.raises(ValueError, match=rf"{ours_dir}: is the source {ours_dir} itself"):
            export(ours_dir, ours_dir, to=target)
    with pytest.raises(ValueError, match=rf"{ours_dir}: is the source {ours_dir} itself"):
        convert(ours_dir, ours_dir)
    with pytest.raises(ValueError, match=rf"{ours_dir}: is the source .*model.safetensors itself"):
        convert(ours_dir / "model.safetensors", ours_dir)
    assert {p.name: p.read_bytes() for p in ours_dir.iterdir()} == before
    (tmp_path / "taken.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"taken.txt: exists and is a file"):
        export(ours_dir, tmp_path / "taken.txt")
    with pytest.raises(ValueError, match=r"taken.txt: exists and is a file"):
        convert(ours_dir, tmp_path / "taken.txt")
    assert (tmp_path / "taken.txt").read_text() == "keep me"

"""transformers' `Siglip2VisionModel` (a NaFlex model: patches cut by its processor, the position table resized to each
image's grid at run time) read at one fixed resolution, against transformers itself given the same images."""

import numpy as np
import pytest
import torch
import transformers
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

from vit_accel import ViTAccelForImageClassification, ViTAccelModel
from vit_accel.weights import CheckpointError, convert, read_checkpoint, transformers_families

ATOL = 1e-4
PATCH = 8
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def tiny_siglip2(num_patches=16):
    torch.manual_seed(0)
    config = transformers.Siglip2VisionConfig(**TINY, patch_size=PATCH, num_patches=num_patches)
    model = transformers.Siglip2VisionModel(config)
    with torch.no_grad():  # random everywhere (the probe, the position table) makes the comparison meaningful
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model.eval()


def siglip2_outputs(model, pixels):
    """Siglip2's outputs for whole images: patches as its processor cuts them, all of them real, and the grid."""
    height, width = pixels.shape[-2] // PATCH, pixels.shape[-1] // PATCH
    patches = torch.stack([convert_image_to_patches(image, PATCH) for image in pixels])
    mask = torch.ones(patches.shape[:2], dtype=torch.long)
    shapes = torch.tensor([[height, width]] * pixels.shape[0])
    with torch.no_grad():
        return model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)


@pytest.fixture
def saved(tmp_path):
    reference = tiny_siglip2()
    reference.save_pretrained(tmp_path / "siglip2")
    return reference, tmp_path / "siglip2"


@pytest.mark.parametrize("image_size", [None, 48, 24, [40, 56]], ids=["stored-grid", "larger", "smaller", "oblong"])
def test_outputs_equal_siglip2_at_a_fixed_size(saved, image_size):
    reference, folder = saved
    ours = ViTAccelModel.from_pretrained(folder, **({} if image_size is None else {"image_size": image_size}))
    assert read_checkpoint(folder).format == "transformers"
    height, width = (
        (32, 32) if image_size is None else (image_size, image_size) if isinstance(image_size, int) else image_size
    )
    assert ours.config.grid_size == (height // PATCH, width // PATCH)
    assert not ours.config.use_cls_token and ours.config.pooling == "map"
    pixels = torch.randn(2, 3, height, width)
    theirs = siglip2_outputs(reference, pixels)
    with torch.no_grad():
        mine = ours(pixels)
    torch.testing.assert_close(mine.last_hidden_state, theirs.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(mine.pooler_output, theirs.pooler_output, atol=ATOL, rtol=0)


def test_classifier_reads_the_attention_pooling(saved):
    reference, folder = saved
    classifier = ViTAccelForImageClassification.from_pretrained(folder, num_labels=3, head_init="normal")
    assert classifier.config.pooling == "map"
    pixels = torch.randn(2, 3, 32, 32)
    pooled = siglip2_outputs(reference, pixels).pooler_output
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixels).logits, classifier.classifier(pooled), atol=ATOL, rtol=0)


def test_image_size_off_the_patch_grid_is_refused_by_name(saved):
    _, folder = saved
    with pytest.raises(CheckpointError, match=r"image_size 36 must be a multiple of patch_size 8") as error:
        ViTAccelModel.from_pretrained(folder, image_size=36)
    assert "\n" not in str(error.value)


def test_whole_siglip2_model_is_refused_by_name(tmp_path):
    config = transformers.Siglip2Config(
        vision_config={**TINY, "patch_size": PATCH, "num_patches": 16},
        text_config={**TINY, "vocab_size": 32, "max_position_embeddings": 8},
    )
    transformers.Siglip2Model(config).save_pretrained(tmp_path / "whole")
    with pytest.raises(CheckpointError, match=r"a whole SigLIP2 model .*save its Siglip2VisionModel") as error:
        ViTAccelModel.from_pretrained(tmp_path / "whole")
    assert "\n" not in str(error.value)


def test_written_back_as_siglip_vision_model_computing_siglip2(saved, tmp_path):
    """SigLIP2 at a fixed resolution is SigLIP's architecture: the export is the SiglipVisionModel of that size."""
    reference, folder = saved
    ours = ViTAccelModel.from_pretrained(folder, image_size=48)
    assert transformers_families.export_class(ours.config, backbone_only=True) == "SiglipVisionModel"
    transformers_families.write(ours, tmp_path / "out")
    written = transformers.SiglipVisionModel.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(2, 3, 48, 48)
    theirs = siglip2_outputs(reference, pixels)
    with torch.no_grad():
        exported = written(pixels)
    torch.testing.assert_close(exported.last_hidden_state, theirs.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(exported.pooler_output, theirs.pooler_output, atol=ATOL, rtol=0)


def test_convert_writes_siglip2_preprocessing_at_the_fixed_size(saved, tmp_path):
    _, folder = saved
    convert(folder, tmp_path / "ours", image_size=48)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    assert processor.size == {"height": 48, "width": 48}


def test_convert_turns_siglip2s_patching_processor_into_a_whole_image_one(saved, tmp_path):
    """SigLIP2's own processor hands its model patches; the converted model takes whole images at its size."""
    _, folder = saved
    transformers.Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=16, image_mean=[0.4] * 3).save_pretrained(
        folder
    )
    convert(folder, tmp_path / "ours", image_size=48)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "ours")
    pixels = processor(np.zeros((40, 60, 3), dtype=np.uint8), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 48, 48)
    assert list(processor.image_mean) == [0.4] * 3

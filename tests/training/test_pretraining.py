"""pretrain.py's pieces: the start points (an MAE checkpoint of transformers' or Meta's, an encoder under a new
decoder, a new model), the seeded masks and the per-example loss."""

from __future__ import annotations

import pytest
import torch
from factories import tiny_config_kwargs
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from vit_accel import ViTAccelForImageClassification, ViTAccelForPreTraining
from vit_accel.training.pretraining import (
    IMAGENET_MEAN_STD,
    build_pretraining_model,
    mask_noise,
    per_example_losses,
)
from vit_accel.training.pretraining_arguments import PretrainingModelArguments

DECODER = dict(decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2)


def transformers_mae() -> ViTMAEForPreTraining:
    kwargs = tiny_config_kwargs(decoder_intermediate_size=64, **DECODER)
    kwargs.pop("num_labels")
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(ViTMAEConfig(**kwargs, norm_pix_loss=True, layer_norm_eps=1e-6))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.normal_(0, 0.1)
    return model.eval()


def assert_same_reconstruction(ours, reference) -> None:
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        mine, theirs = ours.eval()(pixels, noise=noise), reference(pixels, noise=noise)
    torch.testing.assert_close(mine.logits, theirs.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=0)


def test_a_transformers_vitmae_directory_is_continued_with_its_decoder(tmp_path):
    reference = transformers_mae()
    reference.save_pretrained(tmp_path / "hf")
    model, mean, std, start = build_pretraining_model(
        PretrainingModelArguments(model_name_or_path=str(tmp_path / "hf"))
    )
    assert start == "an MAE checkpoint (encoder and decoder)" and (mean, std) == IMAGENET_MEAN_STD
    assert model.config.decoder_hidden_size == 16 and model.config.mask_ratio == 0.75
    assert_same_reconstruction(model, reference)


def test_metas_pth_is_continued_with_the_heads_given(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "weights"))
    from test_mae import meta_state_dict

    reference = transformers_mae()
    torch.save({"model": meta_state_dict_of(reference, meta_state_dict)}, tmp_path / "mae.pth")
    args = PretrainingModelArguments(
        model_name_or_path=str(tmp_path / "mae.pth"),
        config_overrides="num_attention_heads=4",
        decoder_num_attention_heads=2,
    )
    model, *_ = build_pretraining_model(args)
    assert_same_reconstruction(model, reference)


def meta_state_dict_of(reference, convert) -> dict:
    """test_mae's converter assumes two decoder blocks; this reference has one."""
    sd = reference.state_dict()
    for key in list(sd):
        if key.startswith("decoder.decoder_layers.0."):
            sd[key.replace("decoder_layers.0.", "decoder_layers.1.")] = sd[key]
    padded = ViTMAEForPreTraining(ViTMAEConfig(**{**reference.config.to_dict(), "decoder_num_hidden_layers": 2}))
    padded.load_state_dict(sd)
    converted = convert(padded)
    return {key: value for key, value in converted.items() if not key.startswith("decoder_blocks.1.")}


def test_an_encoder_checkpoint_gets_a_new_decoder(tmp_path):
    from vit_accel import ViTAccelConfig

    torch.manual_seed(1)
    source = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    source.save_pretrained(tmp_path / "classifier")
    args = PretrainingModelArguments(model_name_or_path=str(tmp_path / "classifier"), **DECODER)
    model, _, _, start = build_pretraining_model(args)
    assert start == "an encoder checkpoint, with a new decoder"
    assert (model.config.decoder_hidden_size, model.config.decoder_intermediate_size) == (16, 64)
    encoder = source.vit.state_dict()
    for key, value in model.vit.state_dict().items():
        assert torch.equal(value, encoder[key]), key


def test_a_new_model_takes_the_variant_shape_and_maes_decoder_by_default():
    args = PretrainingModelArguments(model_name_or_path="vit-tiny-p16-224", from_scratch=True)
    with torch.device("meta"):
        model, mean, std, start = build_pretraining_model(args)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.image_size) == (192, 12, 224)
    assert (config.decoder_hidden_size, config.decoder_num_hidden_layers, config.decoder_num_attention_heads) == (
        512, 8, 16
    )  # fmt: skip
    assert config.decoder_intermediate_size == 2048 and start == "from scratch"


def test_an_examples_mask_depends_on_its_row_and_epoch_only():
    both = mask_noise(torch.tensor([3, 7]), 16, seed=1, epoch=0)
    alone = mask_noise(torch.tensor([7]), 16, seed=1, epoch=0)
    assert torch.equal(both[1], alone[0]) and not torch.equal(both[0], both[1])
    assert not torch.equal(mask_noise(torch.tensor([7]), 16, seed=1, epoch=1), alone)
    assert not torch.equal(mask_noise(torch.tensor([7]), 16, seed=2, epoch=0), alone)
    held_out = mask_noise(torch.tensor([7]), 16, seed=1, epoch=None)
    assert torch.equal(held_out, mask_noise(torch.tensor([7]), 16, seed=1, epoch=None))
    assert not torch.equal(held_out, alone)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_the_per_example_losses_average_to_the_models_loss(norm_pix_loss):
    from vit_accel.configuration_vit_accel import ViTAccelMAEConfig

    fields = tiny_config_kwargs(decoder_intermediate_size=32, norm_pix_loss=norm_pix_loss, **DECODER)
    fields.pop("num_labels")
    model = ViTAccelForPreTraining(ViTAccelMAEConfig(**fields)).eval()
    pixels = torch.randn(3, 3, 32, 32)
    outputs = model(pixels, noise=mask_noise(torch.arange(3), 16, 0, 0))
    losses = per_example_losses(model, pixels, outputs)
    assert losses.shape == (3,) and len(set(losses.tolist())) == 3
    torch.testing.assert_close(losses.mean(), outputs.loss)


def test_the_loader_draws_each_examples_noise_from_its_row_and_epoch(tmp_path):
    from vit_accel.data import DataArguments, build_pipeline, make_dataloader
    from vit_accel.data.unlabelled import load_unlabelled_dataset
    from vit_accel.training.pretraining import MaskedImageDataset

    folder = tmp_path / "images"
    folder.mkdir()
    import PIL.Image
    from factories import random_rgb

    for i in range(10):
        PIL.Image.fromarray(random_rgb(i)).save(folder / f"{i}.png")
    data = load_unlabelled_dataset(DataArguments(train_dir=str(folder), train_val_split=0.3), seed=0)
    pipeline = build_pipeline("mae", 16, *IMAGENET_MEAN_STD, train=True)
    train = MaskedImageDataset(data.train, pipeline, 4, "error", 16, held_out=False)
    held = MaskedImageDataset(data.validation, pipeline, 4, "error", 16, held_out=True)
    assert train.decoder != "pil"  # `auto`: MAE's random-resized crop takes the fast path ...
    assert MaskedImageDataset(data.train, pipeline, 4, "error", 16, False, "pil").decoder == "pil"  # ... unless told
    train.set_epoch(2)
    batch = next(iter(make_dataloader(train, 4, True, 4)))
    assert batch["noise"].shape == (4, 16)
    torch.testing.assert_close(batch["noise"], mask_noise(batch["labels"], 16, 4, 2), rtol=0, atol=0)
    held.set_epoch(5)  # the held-out images' noise is fixed: the epoch does not move it
    batch = next(iter(make_dataloader(held, 3, False, 4)))
    torch.testing.assert_close(batch["noise"], mask_noise(batch["labels"], 16, 4, None), rtol=0, atol=0)

"""DataArguments declared on another parser (`vit-accel evaluate`): the same flags, types, choices and defaults."""

import argparse
import dataclasses

import pytest
from transformers import HfArgumentParser

from vit_accel.data import EVALUATION_FIELDS, DataArguments, add_data_arguments


@pytest.mark.parametrize("resolved", [False, True])
def test_data_flags_are_declared_from_the_dataclass(resolved):
    if resolved:  # what a train.py run leaves behind in the process: HfArgumentParser resolves annotations in place
        HfArgumentParser(DataArguments)
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, EVALUATION_FIELDS, {"train_val_split": {"default": None}})
    args = parser.parse_args(["--dataset_name", "x", "--max_eval_samples", "7", "--train_val_split", "0.2"])
    assert (args.dataset_name, args.max_eval_samples, args.train_val_split) == ("x", 7, 0.2)
    defaults = {f.name: f.default for f in dataclasses.fields(DataArguments)}
    assert args.dataloader_num_workers == defaults["dataloader_num_workers"] and args.bad_images == "error"
    assert parser.parse_args([]).train_val_split is None  # the override
    with pytest.raises(SystemExit):
        parser.parse_args(["--bad_images", "maybe"])  # the dataclass's choices
    with pytest.raises(SystemExit):
        parser.parse_args(["--max_eval_samples", "many"])  # its type


@pytest.mark.parametrize("source", [{"dataset_name": "x"}, {"train_dir": "folder"}])
def test_image_decoder_applies_to_whole_datasets_too(source):
    """--image_decoder chooses the decoder of map-style and ImageFolder training as well as of streams."""
    assert DataArguments(**source, image_decoder="pil").image_decoder == "pil"
    assert DataArguments(**source).image_decoder is None  # auto
    from vit_accel.errors import UserError

    decoders = "auto, pil, pil_draft, simplejpeg, turbojpeg"
    with pytest.raises(UserError, match=f"--image_decoder must be one of {decoders}; got 'turbo'"):
        DataArguments(**source, image_decoder="turbo")

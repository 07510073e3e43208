"""pretrain.py's arguments: MAE's defaults, the base rate scaled by the global batch, and its recipe."""

from __future__ import annotations

import pytest

from vit_accel.training.arguments import parse_args, recorded_arguments
from vit_accel.training.pretraining_arguments import PRETRAINING_ARGUMENT_CLASSES
from vit_accel.training.resume import resume_settings


def parse(*argv: str):
    return parse_args(["--dataset_name", "somewhere", *argv], PRETRAINING_ARGUMENT_CLASSES, "pretrain.py")


def test_maes_defaults():
    model_args, data_args, args = parse()
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.9, 0.95, 0.05)
    assert (model_args.mask_ratio, model_args.norm_pix_loss, data_args.augmentation) == (0.75, True, "mae")
    assert model_args.decoder_fields(new=True) == {
        "decoder_hidden_size": 512, "decoder_num_hidden_layers": 8, "decoder_num_attention_heads": 16,
        "decoder_intermediate_size": 2048,
    }  # fmt: skip
    assert model_args.decoder_fields(new=False) == {} and args.metric_for_best_model == "eval_loss"
    assert parse("--no_norm_pix_loss")[0].norm_pix_loss is False


@pytest.mark.parametrize(
    "flags, processes, expected",
    [
        ((), 1, 1.5e-4 * 64 / 256),  # the default base rate, the default batch of 64
        (("--base_learning_rate", "1e-3", "--per_device_train_batch_size", "32"), 4, 1e-3 * 128 / 256),
        (("--base_learning_rate", "1e-3", "--gradient_accumulation_steps", "4"), 2, 1e-3 * 512 / 256),
        (("--learning_rate", "0.01"), 8, 0.01),  # a rate given is the rate
    ],
)
def test_the_base_rate_scales_with_the_global_batch(flags, processes, expected):
    args = parse(*flags)[2]
    args.scale_learning_rate(processes)
    assert args.learning_rate == pytest.approx(expected)


def test_records_and_resume_settings_file_the_subclasses_under_train_pys_names():
    arguments = parse("--mask_ratio", "0.6", "--decoder_hidden_size", "256")
    record = recorded_arguments(*arguments)
    assert set(record) == {"ModelArguments", "DataArguments", "TrainingArguments"}
    assert record["ModelArguments"]["mask_ratio"] == 0.6
    settings = resume_settings(arguments, 1)
    assert (settings["mask_ratio"], settings["decoder_hidden_size"], settings["seed"]) == (0.6, 256, 42)
    assert settings["base_learning_rate"] == 1.5e-4 and settings["augmentation"] == "mae"


def test_the_vit_b_recipe_is_maes_pretraining():
    model_args, data_args, args = parse_args(
        ["recipes/mae_pretrain_base.yaml"], PRETRAINING_ARGUMENT_CLASSES, "pretrain.py"
    )
    args.scale_learning_rate(8)  # 8 GPUs x 64 x 8 accumulation = 4096
    assert args.learning_rate == pytest.approx(2.4e-3)
    assert (model_args.mask_ratio, model_args.from_scratch, data_args.augmentation) == (0.75, True, "mae")
    assert (args.adam_beta2, args.weight_decay, args.max_grad_norm) == (0.95, 0.05, 0.0)


def test_streaming_is_refused_with_the_arguments_before_anything_runs():
    from vit_accel.errors import UserError
    from vit_accel.training.pretraining_arguments import PretrainingDataArguments

    with pytest.raises(UserError, match=r"^--streaming: pre-training loads its images whole"):
        PretrainingDataArguments(dataset_name="shards", streaming=True)

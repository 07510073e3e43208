import pytest

from vit_accel.errors import UserError
from vit_accel.training.arguments import parse_args as parse_all

DATASET = ["--dataset_name", "uoft-cs/cifar100"]


def parse_args(argv):
    """Every run needs a dataset; these tests are about the other arguments."""
    if argv and argv[0].endswith(".yaml"):
        return parse_all([argv[0], *DATASET, *argv[1:]])
    return parse_all([*DATASET, *argv])


def test_recipe_values_are_defaults_that_flags_override(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 3e-4\nper_device_train_batch_size: 32\naugmentation: none\nfrom_scratch: true\n")
    model, data, training = parse_args([str(recipe), "--per_device_train_batch_size", "8", "--seed", "7"])
    assert training.learning_rate == pytest.approx(3e-4)  # YAML's "3e-4" is a string; argparse converts it
    assert training.per_device_train_batch_size == 8 and training.seed == 7
    assert data.augmentation == "none" and model.from_scratch is True


def test_config_overrides_parse_to_typed_values():
    model, _, _ = parse_args(
        ["--config_overrides", "image_size=32,patch_size=4,drop_path_rate=0.1", "--image_size", "48"]
    )
    assert model.parsed_overrides() == {"image_size": 48, "patch_size": 4, "drop_path_rate": 0.1}
    # Checked while parsing, before anything is loaded: a malformed item, and a typo in a field name.
    with pytest.raises(UserError, match="expected 'key=value', got 'image_size'"):
        parse_args(["--config_overrides", "image_size"])
    with pytest.raises(UserError, match="'hidden_sise' is not a ViTAccelConfig field; did you mean 'hidden_size'"):
        parse_args(["--config_overrides", "hidden_sise=32"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no_such_flag", "1"], "Unknown argument: --no_such_flag \\(see"),  # its value is not echoed
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
        (["--optimizer", "lamb"], "--optimizer must be one of adamw, sgd"),
        (
            ["--checkpointing_steps", "often"],
            r"--checkpointing_steps must be a number of steps \(at least 1\) or 'epoch', got 'often'",
        ),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
        (["--attn_implementation", "fast"], "--attn_implementation must be one of eager, .*sdpa.*, got 'fast'"),
    ],
)
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_unknown_recipe_key_and_missing_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 0.1\nlearnig_rate: 0.2\n")
    with pytest.raises(UserError, match="unknown key 'learnig_rate' \\(did you mean 'learning_rate'\\?\\)"):
        parse_args([str(recipe)])
    with pytest.raises(UserError, match="Recipe file not found"):
        parse_args([str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize(
    "recipe",
    [
        "recipes/cifar100_modern.yaml",
        "recipes/digits_lora.yaml",
        "recipes/imagenet_mae_base.yaml",
        "recipes/imagenet_dinov2_linear.yaml",
        "recipes/imagenet_dinov2_finetune.yaml",
        "recipes/imagenet_dinov3_linear.yaml",
        "recipes/imagenet_siglip2_linear.yaml",
        "recipes/cifar100_clip_linear.yaml",
        "recipes/imagenet_deit3_base.yaml",
    ],
)
def test_method_recipes_parse(recipe):
    from factories import ROOT

    model, data, training = parse_all([str(ROOT / recipe)])
    if "modern" in recipe:
        assert training.layer_decay == 0.65 and training.ema_decay == 0.9998 and data.random_erasing == 0.25
        assert training.mixing_config().enabled and training.label_smoothing == 0.1
    elif "mae" in recipe or "dinov2_finetune" in recipe:
        assert training.layer_decay == 0.65 and training.learning_rate == 2e-3 and data.random_erasing == 0.25
        assert training.freeze is None and training.mixing_config().enabled
    elif "linear" in recipe:  # the linear probes: a frozen backbone, SGD, no weight decay
        assert training.freeze == "backbone" and training.optimizer == "sgd" and training.weight_decay == 0.0
        if "dino" in recipe:  # DINO's head reads CLS and the patch mean, at 224 px
            assert model.parsed_overrides() == {"pooling": "cls_mean", "image_size": 224}
    elif "deit3" in recipe:
        assert training.learning_rate == 3e-4 and training.ema_decay == 0.99996 and training.mixup_alpha == 0.0
        assert training.mixing_config().enabled and model.parsed_overrides() == {"drop_path_rate": 0.15}
    else:
        assert training.peft == "lora"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layer_decay", "0"], "--layer_decay must be in (0, 1]"),
        (["--layer_decay", "1.2"], "--layer_decay must be in (0, 1]"),
        (["--ema_decay", "1.5"], "--ema_decay must be in (0, 1)"),
        (["--final_model", "ema"], "--final_model ema needs --ema_decay"),
        (["--final_model", "last", "--ema_decay", "0.9"], "--final_model must be one of"),
        (["--peft", "prefix"], "--peft must be one of lora"),
        (["--merge_adapter"], "--merge_adapter needs --peft lora"),
        (["--mixup_alpha", "-1"], "--mixup_alpha must be >= 0"),
        (["--cutmix_alpha", "1", "--mix_switch_prob", "2"], "--mix_switch_prob must be in [0, 1]"),
        (["--random_erasing", "1.5"], "--random_erasing must be a probability"),
    ],
)
def test_method_flags_out_of_range_are_refused_by_name(argv, message):
    from vit_accel.errors import UserError

    with pytest.raises(UserError) as error:
        parse_args(argv)
    assert message in str(error.value)

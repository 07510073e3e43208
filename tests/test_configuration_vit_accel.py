import json

import pytest
import torch
from factories import tiny_config_kwargs

from vit_accel import VIT_VARIANTS, ViTAccelConfig, ViTAccelForImageClassification, ViTAccelModel
from vit_accel.configuration_vit_accel import FAMILY_VARIANTS

SEED_VARIANTS = [f"vit-{s}-p{p}-{r}" for s in ("base", "large") for p in (16, 32) for r in (224, 384)]


def test_variant_table_has_the_seed_variants_and_the_extras():
    for name in [*SEED_VARIANTS, "vit-tiny-p16-224", "vit-small-p16-224", "vit-huge-p14-224"]:
        assert name in VIT_VARIANTS


@pytest.mark.parametrize(
    "name, width, depth, heads, mlp, patch, res",
    [
        ("vit-base-p16-224", 768, 12, 12, 3072, 16, 224),
        ("vit-base-p32-384", 768, 12, 12, 3072, 32, 384),
        ("vit-large-p16-384", 1024, 24, 16, 4096, 16, 384),
        ("vit-large-p32-224", 1024, 24, 16, 4096, 32, 224),
        ("vit-tiny-p16-224", 192, 12, 3, 768, 16, 224),
        ("vit-small-p32-224", 384, 12, 6, 1536, 32, 224),
        ("vit-huge-p14-224", 1280, 32, 16, 5120, 14, 224),
    ],
)
def test_from_variant_shapes(name, width, depth, heads, mlp, patch, res):
    config = ViTAccelConfig.from_variant(name)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, depth, heads)
    assert (config.intermediate_size, config.patch_size, config.image_size) == (mlp, patch, res)
    assert config.layer_norm_eps == 1e-6
    assert config.grid_size == (res // patch, res // patch)


def test_from_variant_overrides_and_labels():
    config = ViTAccelConfig.from_variant("vit-base-p16-384", num_labels=100, drop_path_rate=0.1)
    assert config.num_labels == 100 and config.drop_path_rate == 0.1 and config.image_size == 384
    assert len(config.id2label) == 100


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown ViT variant 'vit-base-p16-225'") as info:
        ViTAccelConfig.from_variant("vit-base-p16-225")
    for name in SEED_VARIANTS:
        assert name in str(info.value)


def test_inconsistent_config_constructs_and_the_model_names_the_fault():
    # As transformers' configurations: any values construct (its ConfigTester builds hidden_size=37 with 12 heads);
    # building a model from them is what fails, naming the fields.
    config = ViTAccelConfig(hidden_size=37, num_attention_heads=12)
    assert config.hidden_size == 37
    for model_class in (ViTAccelModel, ViTAccelForImageClassification):
        with pytest.raises(ValueError, match=r"hidden_size \(37\) must be divisible by num_attention_heads \(12\)"):
            model_class(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", 30, "image_size 30 must be a multiple of patch_size 8"),
        ("image_size", (32, 30), r"image_size \(32, 30\) must be a multiple of patch_size"),
        ("drop_path_rate", 1.5, r"drop_path_rate must be in \[0, 1\), got 1.5"),
        ("hidden_dropout_prob", -0.1, r"hidden_dropout_prob must be in \[0, 1\)"),
        ("attention_probs_dropout_prob", 1.0, r"attention_probs_dropout_prob must be in \[0, 1\)"),
        ("num_hidden_layers", 0, "num_hidden_layers must be a positive integer, got 0"),
        ("representation_size", -1, "representation_size must be None or a positive integer, got -1"),
        ("pooler_output_size", 0, "pooler_output_size must be None or a positive integer, got 0"),
        ("hidden_act", "swishy", "hidden_act 'swishy' is not an activation"),
        ("pooler_act", "nope", "pooler_act 'nope' is not an activation"),
    ],
)
def test_bad_fields_construct_but_the_model_names_the_field(field, value, message):
    config = ViTAccelConfig(**tiny_config_kwargs(**{field: value}))
    assert getattr(config, field) == value
    with pytest.raises(ValueError, match=message) as info:
        ViTAccelModel(config)
    assert str(info.value).count("\n") == 0 and str(info.value).startswith("Cannot build a ViTAccel model")


def test_every_problem_is_named_at_once():
    config = ViTAccelConfig(**tiny_config_kwargs(hidden_size=50, image_size=30, drop_path_rate=2.0))
    with pytest.raises(ValueError) as info:
        ViTAccelForImageClassification(config)
    for fragment in ("hidden_size (50)", "image_size 30", "drop_path_rate"):
        assert fragment in str(info.value)


def test_representation_size_and_pooler_output_size_must_agree():
    config = ViTAccelConfig(**tiny_config_kwargs(representation_size=24, pooler_output_size=32))
    with pytest.raises(ValueError, match=r"representation_size \(24\) and pooler_output_size \(32\)"):
        ViTAccelModel(config)
    # Equal values are one width said twice.
    model = ViTAccelModel(ViTAccelConfig(**tiny_config_kwargs(representation_size=24, pooler_output_size=24)))
    assert model.pooler.dense.out_features == 24


def test_labels_round_trip_through_json(tmp_path):
    config = ViTAccelConfig.from_variant(
        "vit-tiny-p16-224", id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1}
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "vit_accel"
    assert saved["id2label"] == {"0": "cat", "1": "dog"}
    loaded = ViTAccelConfig.from_pretrained(tmp_path)
    assert loaded.id2label == {0: "cat", 1: "dog"} and loaded.label2id == {"cat": 0, "dog": 1}
    assert loaded.num_labels == 2 and loaded.hidden_size == 192


@pytest.mark.parametrize("name", sorted(FAMILY_VARIANTS))
def test_family_variant_parameter_count_is_timms(name):
    """Built on the meta device (no memory): the variant's configuration has as many parameters as timm's model of the
    Hub repo it names, with the same head."""
    import timm

    architecture = FAMILY_VARIANTS[name][0].split("/")[1].split(".")[0]
    with torch.device("meta"):
        theirs = timm.create_model(architecture, pretrained=False, num_classes=1000)
        ours = ViTAccelForImageClassification(ViTAccelConfig.from_variant(name, num_labels=1000))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())

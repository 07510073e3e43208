"""train.py from a tiny model of each ViT family on the digits (in this process, a few steps): it trains, saves a
model of that family, and the saved model reloads to finite logits; LoRA and two DDP processes on DINOv3."""

import json

import pytest
import torch

from vit_accel import ViTAccelForImageClassification

TINY = "image_size=16,patch_size=4,hidden_size=32,num_attention_heads=2,intermediate_size=64,num_hidden_layers=2"
FAMILIES = {
    "dinov2-registers": "layer_scale_init_value=1e-5,num_register_tokens=4,prefix_position_embeddings=False,"
    "pooling=cls_mean",
    "dinov3": "position_embedding_type=rope,num_register_tokens=4,layer_scale_init_value=1e-5,layer_norm_eps=1e-5",
    "siglip": "use_cls_token=False,pooling=map",
    "clip": "pre_norm=True,patch_embedding_bias=False,hidden_act=quick_gelu,layer_norm_eps=1e-5",
    "deit3": "layer_scale_init_value=1e-6,prefix_position_embeddings=False",
    "mae": "pooling=mean",
}


def family_argv(digits, out, family, *extra):
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch",
        "--config_overrides", f"{TINY},{FAMILIES[family]}",
        "--dataset_name", str(digits), "--max_train_samples", "128", "--max_eval_samples", "32",
        "--augmentation", "none", "--dataloader_num_workers", "0", "--per_device_train_batch_size", "32",
        "--learning_rate", "3e-3", "--max_train_steps", "4", "--logging_steps", "2", "--output_dir", str(out), *extra,
    ]  # fmt: skip


def expected_fields(family):
    fields = {}
    for item in FAMILIES[family].split(","):
        key, value = item.split("=")
        try:
            fields[key] = float(value)
        except ValueError:
            fields[key] = {"True": True, "False": False}.get(value, value)
    return fields


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_digits_train_from_a_tiny_model_of_each_family(run_train, digits, tmp_path, family):
    code, err = run_train(family_argv(digits, tmp_path / "run", family))
    assert code == 0, err[-3000:]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    for key, value in expected_fields(family).items():
        assert saved[key] == value, key
    model = ViTAccelForImageClassification.from_pretrained(tmp_path / "run").eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model(pixels).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_digits_lora_on_a_family_model(run_train, digits, tmp_path):
    """LoRA's default target modules exist in a family model too (DINOv3: RoPE, registers, LayerScale): a DINOv3
    trained from scratch, then adapted with LoRA."""
    code, err = run_train(family_argv(digits, tmp_path / "base", "dinov3"))
    assert code == 0, err[-3000:]
    argv = family_argv(digits, tmp_path / "lora", "dinov3", "--peft", "lora")
    argv[argv.index("vit-tiny-p16-224")] = str(tmp_path / "base")
    index = argv.index("--from_scratch")
    del argv[index : index + 3]  # --from_scratch --config_overrides <fields>: the base model's own configuration
    code, err = run_train(argv)
    assert code == 0, err[-3000:]
    adapter = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and set(adapter["target_modules"]) >= {"q_proj", "v_proj"}


def test_dinov3_on_two_ddp_processes_trains_like_one_process(digits, tmp_path):
    """Two DDP processes over gloo (per-device batch 8) and one process (batch 16) on a DINOv3 model: the same losses
    and weights, and the DDP replicas identical."""
    from launching import (
        ONE_PROCESS,
        TWO_PROCESSES,
        assert_really,
        assert_same_weights,
        launch,
        tiny_args,
        train_in_this_process,
        train_losses,
    )

    def family_args(out, *extra):
        args = tiny_args(digits, out, *extra)
        args[args.index("--config_overrides") + 1] += "," + FAMILIES["dinov3"]
        return args

    launch("multi_cpu.yaml", family_args(tmp_path / "ddp", *TWO_PROCESSES))
    assert_really(tmp_path / "ddp", "MULTI_CPU", 2)
    assert train_in_this_process(family_args(tmp_path / "one", *ONE_PROCESS), threads=1) == 0
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["position_embedding_type"] == "rope"
    torch.testing.assert_close(train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one"), atol=1e-5, rtol=1e-5)
    assert_same_weights(tmp_path / "ddp", tmp_path / "one", atol=1e-5)


# The recipe of each family (recipes/), and what its run must show beyond training: the linear probes train the
# classifier alone, DeiT III keeps an EMA of the weights.
FAMILY_RECIPES = {
    "imagenet_mae_base": {},
    "imagenet_dinov2_linear": {"linear": True},
    "imagenet_dinov2_finetune": {},
    "imagenet_dinov3_linear": {"linear": True},
    "imagenet_siglip2_linear": {"linear": True},
    "cifar100_clip_linear": {"linear": True},
    "imagenet_deit3_base": {"ema": True},
}


@pytest.mark.parametrize("recipe", sorted(FAMILY_RECIPES))
def test_family_recipe_as_written_trains_a_tiny_model_of_its_variant(run_train, digits, tmp_path, recipe):
    """Each family recipe with its every setting (pooling, freezing, optimiser, schedule, mixing, EMA, layer decay,
    augmentation), only the sizes made tiny and the data the digits: from a tiny pretrained model of its variant's
    architecture, three optimizer steps (the recipes' warm-up starts at lr 0 and their new heads at zero, so the
    backbone moves from the third on), a saved model of that family, and the backbone frozen exactly where the recipe
    is a linear probe."""
    import yaml
    from factories import ROOT

    from vit_accel import ViTAccelConfig, ViTAccelModel
    from vit_accel.configuration_vit_accel import FAMILY_VARIANTS

    path = ROOT / "recipes" / f"{recipe}.yaml"
    settings = yaml.safe_load(path.read_text())
    variant = settings["model_name_or_path"]
    torch.manual_seed(0)
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4)
    base = ViTAccelModel(ViTAccelConfig.from_variant(variant, **tiny, image_size=16), add_pooling_layer=False)
    base.save_pretrained(tmp_path / "pretrained")
    out = tmp_path / "run"
    code, err = run_train(
        [
            str(path), "--model_name_or_path", str(tmp_path / "pretrained"), "--image_size", "16",
            "--dataset_name", str(digits), "--max_train_samples", "64", "--max_eval_samples", "16",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
            "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--max_train_steps", "3",
            "--ignore_mismatched_sizes", "--output_dir", str(out),
        ]
    )  # fmt: skip
    assert code == 0, err[-3000:]
    saved = json.loads((out / "config.json").read_text())
    family_fields = {k: v for k, v in FAMILY_VARIANTS[variant][2].items() if k not in ("image_size", "patch_size")}
    recipe_fields = dict(item.split("=") for item in (settings.get("config_overrides") or "").split(",") if item)
    for key, value in family_fields.items():
        assert saved[key] == value, key
    for key, value in recipe_fields.items():
        assert str(saved[key]) == value, key
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_steps"] == 3
    assert ("ema_replica_checksums" in results) == bool(FAMILY_RECIPES[recipe].get("ema")), sorted(results)
    model = ViTAccelForImageClassification.from_pretrained(out)
    classifier = sum(p.numel() for p in model.classifier.parameters())
    before, after = base.state_dict(), model.vit.state_dict()
    shared = sorted(set(before) & set(after))
    assert len(shared) > 10
    unchanged = [key for key in shared if torch.equal(before[key], after[key])]
    if FAMILY_RECIPES[recipe].get("linear"):
        assert results["trainable_parameters"] == classifier and unchanged == shared
    else:
        assert results["trainable_parameters"] == results["total_parameters"] > classifier
        assert len(unchanged) < len(shared) / 2, unchanged


def test_deepspeed_zero3_on_two_processes_trains_a_family_model_like_one_process(digits, extensions_dir, tmp_path):
    """ZeRO-3 partitions every parameter, also those read outside a Linear or a convolution: register tokens, the
    patch-only position table, LayerScale's scales and SigLIP's attention-pool query. Two processes (per-device batch
    8, fp32) give the losses and weights of one process at batch 16, and the gathered model reloads."""
    from launching import (
        FP32,
        ONE_PROCESS,
        TWO_PROCESSES,
        assert_really,
        assert_same_weights,
        launch,
        tiny_args,
        train_in_this_process,
        train_losses,
    )

    family = "use_cls_token=False,pooling=map,num_register_tokens=2,layer_scale_init_value=1e-5"
    family += ",prefix_position_embeddings=False"

    def family_args(out, *extra):
        args = tiny_args(digits, out, *extra)
        args[args.index("--config_overrides") + 1] += "," + family
        return args

    env = {"TORCH_EXTENSIONS_DIR": str(extensions_dir)}
    launch("deepspeed_zero3.yaml", family_args(tmp_path / "zero3", *TWO_PROCESSES), env=env, launcher_args=FP32)
    assert_really(tmp_path / "zero3", "DEEPSPEED", 2)
    assert train_in_this_process(family_args(tmp_path / "one", *ONE_PROCESS), threads=1) == 0
    saved = json.loads((tmp_path / "zero3" / "config.json").read_text())
    assert (saved["pooling"], saved["num_register_tokens"], saved["use_cls_token"]) == ("map", 2, False)
    torch.testing.assert_close(train_losses(tmp_path / "zero3"), train_losses(tmp_path / "one"), atol=1e-4, rtol=1e-4)
    assert_same_weights(tmp_path / "zero3", tmp_path / "one", atol=1e-4)

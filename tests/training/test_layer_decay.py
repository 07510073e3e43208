import pytest
import torch
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.errors import UserError
from vit_accel.training.layer_decay import check_layer_decay, layer_decay_parameter_groups
from vit_accel.training.optim import parameter_groups
from vit_accel.weights.timm_state_dict import from_ours


def _our_groups(model, decay=0.75, weight_decay=0.05, lr=1e-3):
    groups = layer_decay_parameter_groups(model, lr, weight_decay, decay, model.config.num_hidden_layers)
    by_param = {}
    for group in groups:
        assert group["lr"] == pytest.approx(lr * group["lr_scale"])
        for param in group["params"]:
            by_param[id(param)] = (group["lr_scale"], group["weight_decay"])
    return by_param


@pytest.mark.parametrize("decay", [0.65, 0.75, 1.0])
def test_scales_and_weight_decay_equal_timms_param_groups_layer_decay(decay):
    timm = pytest.importorskip("timm")
    from timm.optim import param_groups_layer_decay

    config = ViTAccelConfig(**tiny_config_kwargs(num_hidden_layers=3))
    ours = ViTAccelForImageClassification(config)
    # Every parameter holds its own index, so each timm tensor tells which of ours it came from (fused qkv: three).
    names = [name for name, _ in ours.named_parameters()]
    with torch.no_grad():
        for index, (_, param) in enumerate(ours.named_parameters()):
            param.fill_(float(index))
    theirs = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        num_classes=config.num_labels,
    )
    theirs.load_state_dict(from_ours(ours.state_dict()))

    expected = _our_groups(ours, decay)
    params = dict(ours.named_parameters())
    groups = param_groups_layer_decay(
        theirs, weight_decay=0.05, no_weight_decay_list=theirs.no_weight_decay(), layer_decay=decay
    )
    checked = set()
    timm_names = {id(p): n for n, p in theirs.named_parameters()}
    for group in groups:
        for param in group["params"]:
            timm_name = timm_names[id(param)]
            sources = {names[int(v)] for v in param.detach().unique().tolist()}
            for source in sources:
                scale, weight_decay = expected[id(params[source])]
                assert weight_decay == group["weight_decay"], (timm_name, source)
                if timm_name.startswith("norm."):
                    # The one documented difference: timm 1.x puts the final norm in the last block's group
                    # (MATCH_PREV_GROUP), scale `decay`; MAE's and BEiT's `get_layer_id_for_vit` give it the head's
                    # layer, scale 1.0, which is what we do.
                    assert group["lr_scale"] == pytest.approx(decay) and scale == 1.0, source
                else:
                    assert scale == pytest.approx(group["lr_scale"]), (timm_name, source)
                checked.add(source)
    assert checked == set(names)


def test_layers_embeddings_head_and_the_same_no_decay_set_as_parameter_groups():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(num_hidden_layers=2)))
    got = _our_groups(model, decay=0.5)
    params = dict(model.named_parameters())
    assert got[id(params["classifier.weight"])][0] == 1.0
    assert got[id(params["vit.layernorm.weight"])][0] == 1.0
    assert got[id(params["vit.layers.1.mlp.fc1.weight"])][0] == 0.5  # block i of L: decay ** (L + 1 - (i + 1))
    assert got[id(params["vit.layers.0.attention.q_proj.weight"])][0] == 0.25
    assert got[id(params["vit.embeddings.cls_token"])][0] == 0.125  # decay ** (L + 1)
    _, no_decay = parameter_groups(model, 0.05)
    assert {id(p) for p in no_decay["params"]} == {k for k, (_, wd) in got.items() if wd == 0.0}


def test_frozen_parameters_are_left_out():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    model.vit.embeddings.requires_grad_(False)
    groups = layer_decay_parameter_groups(model, 1e-3, 0.0, 0.75, 2)
    assert all(group["layer_id"] > 0 and group["params"] for group in groups)


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_layer_decay_outside_zero_one_is_refused_naming_the_flag(bad):
    with pytest.raises(UserError, match="--layer_decay must be in"):
        check_layer_decay(bad)


def test_family_parts_get_the_layer_of_what_they_belong_to():
    """Registers with the embeddings, the LayerNorm before the blocks at layer 0 too (it normalises the embeddings),
    LayerScale with its block, fc_norm and the attention pool with the head."""
    from vit_accel.training.layer_decay import layer_id

    options = dict(num_register_tokens=4, pre_norm=True, layer_scale_init_value=1e-5, num_hidden_layers=3)
    for pooling in ("map", "mean"):
        model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(**options, pooling=pooling)))
        ids = {name: layer_id(name, 3) for name, _ in model.named_parameters()}
        assert ids["vit.embeddings.register_tokens"] == ids["vit.pre_layernorm.weight"] == 0
        assert ids["vit.layers.1.layer_scale1.lambda1"] == ids["vit.layers.1.layer_scale2.lambda1"] == 2
        after = [name for name in ids if name.startswith(("vit.fc_norm", "vit.attention_pool", "classifier"))]
        assert after and all(ids[name] == 4 for name in after)


def test_weight_decay_of_a_dinov2_with_registers_equals_timms(tmp_path):
    # Register tokens, LayerScale and the positions stay out of weight decay, as timm's no_weight_decay() says.
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf
    from timm.optim import param_groups_weight_decay

    theirs = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, patch_size=14, embed_dim=64, depth=2,
        num_heads=4, num_classes=5,
    )  # fmt: skip
    # Every timm tensor holds its own index, so each of ours tells which timm tensor it came from.
    timm_names = [name for name, _ in theirs.named_parameters()]
    with torch.no_grad():
        for index, (_, param) in enumerate(theirs.named_parameters()):
            param.fill_(float(index))
    save_for_hf(theirs, tmp_path / "dinov2")
    ours = ViTAccelForImageClassification.from_pretrained(tmp_path / "dinov2")
    assert ours.config.num_register_tokens == 4

    expected = {}
    for group in param_groups_weight_decay(theirs, 0.05, no_weight_decay_list=theirs.no_weight_decay()):
        names = {id(p): n for n, p in theirs.named_parameters()}
        expected.update({names[id(param)]: group["weight_decay"] for param in group["params"]})
    got = {}
    for group in parameter_groups(ours, 0.05):
        got.update({id(param): group["weight_decay"] for param in group["params"]})
    checked = set()
    for name, param in ours.named_parameters():
        for source in {timm_names[int(v)] for v in param.detach().unique().tolist()}:
            assert got[id(param)] == expected[source], (name, source)
            checked.add(source)
    assert "reg_token" in checked and any(".ls1." in name for name in checked)

import pytest
import torch
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.errors import UserError
from vit_accel.training.freezing import apply_freezing, check_freezing


def _trained_names(freeze, freeze_layers, **family):
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(num_hidden_layers=3, **family)))
    apply_freezing(model, freeze, freeze_layers)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}  # frozen means untouched
    return changed


def test_backbone_freeze_trains_the_classifier_only():
    assert _trained_names("backbone", None) == {"classifier.weight", "classifier.bias"}


def test_freeze_layers_freezes_embeddings_and_the_first_blocks():
    trained = _trained_names(None, 2)
    assert not any(n.startswith(("vit.embeddings.", "vit.layers.0.", "vit.layers.1.")) for n in trained)
    assert {"vit.layers.2.mlp.fc1.weight", "vit.layernorm.weight", "classifier.weight"} <= trained


@pytest.mark.parametrize(
    "family",
    [
        dict(pre_norm=True),  # CLIP's LayerNorm on the embeddings, before the first block
        dict(num_register_tokens=2, prefix_position_embeddings=False, layer_scale_init_value=1e-5),
        dict(use_cls_token=False, pooling="map"),
        dict(position_embedding_type="rope", num_register_tokens=2),
    ],
    ids=["clip-pre-norm", "dinov2-registers", "siglip-map", "dinov3-rope"],
)
def test_freeze_layers_freezes_what_comes_before_the_first_trained_block_in_every_family(family):
    """What feeds the frozen blocks is frozen with them (registers, CLIP's pre-norm: layer 0 for layer decay too),
    and what follows the last block (SigLIP's attention pool) trains."""
    trained = _trained_names(None, 1, **family)
    assert not any(n.startswith(("vit.embeddings.", "vit.pre_layernorm.", "vit.layers.0.")) for n in trained)
    assert {"vit.layers.1.attention.q_proj.weight", "vit.layers.2.mlp.fc2.weight", "classifier.weight"} <= trained
    if family.get("pooling") == "map":
        assert "vit.attention_pool.probe" in trained


@pytest.mark.parametrize(
    "args, flag",
    [
        (("head", None, 3), "--freeze must be one of"),
        ((None, 4, 3), "--freeze_layers must be in"),
        (("backbone", 1, 3), "drop --freeze_layers"),
        ((None, 1, 3, "lora"), "cannot be combined with --peft"),
    ],
)
def test_bad_combinations_name_the_flag(args, flag):
    with pytest.raises(UserError, match=flag):
        check_freezing(*args)


def _prepared(accelerator, freeze_layers):
    torch.manual_seed(0)
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs(num_hidden_layers=3)))
    apply_freezing(model, None, freeze_layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return accelerator.prepare(model, optimizer)


def test_checkpoints_hold_only_trainable_weights_and_resume_them(tmp_path):
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from vit_accel.training.freezing import register_trainable_only_checkpointing
    from vit_accel.weights import CheckpointError

    accelerator = Accelerator(cpu=True)
    register_trainable_only_checkpointing(accelerator)
    model, optimizer = _prepared(accelerator, 2)
    for _ in range(2):
        accelerator.backward(model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.arange(4)).loss)
        optimizer.step()
        optimizer.zero_grad()
    accelerator.save_state(str(tmp_path / "ckpt"))
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}

    resumed = Accelerator(cpu=True)
    register_trainable_only_checkpointing(resumed)
    model2, optimizer2 = _prepared(resumed, 2)
    resumed.load_state(str(tmp_path / "ckpt"))
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name
    assert optimizer2.state_dict()["state"][0]["exp_avg"].equal(optimizer.state_dict()["state"][0]["exp_avg"])

    # A checkpoint of other trainable weights (here: fewer frozen blocks) is refused, not half-loaded.
    other = Accelerator(cpu=True)
    register_trainable_only_checkpointing(other)
    _prepared(other, 1)
    with pytest.raises(CheckpointError, match="other --peft/--freeze settings"):
        other.load_state(str(tmp_path / "ckpt"))

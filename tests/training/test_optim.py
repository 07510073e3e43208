import pytest
import torch
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig, ViTAccelForImageClassification
from vit_accel.training.arguments import TrainingArguments
from vit_accel.training.optim import build_optimizer, build_scheduler, parameter_groups


def test_no_weight_decay_on_biases_norms_position_embeddings_and_cls():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "vit.embeddings.position_embeddings" in exempt and "vit.embeddings.cls_token" in exempt
    assert "vit.layers.0.layernorm_before.weight" in exempt and "classifier.bias" in exempt
    assert "vit.layers.0.attention.q_proj.weight" in decayed and "classifier.weight" in decayed
    assert "vit.embeddings.patch_embeddings.projection.weight" in decayed
    assert len(decayed) + len(exempt) == len(list(model.parameters()))


def test_optimizers_and_warmup_in_optimizer_steps():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    sgd = build_optimizer(model, TrainingArguments(optimizer="sgd", learning_rate=0.03))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    adamw = build_optimizer(model, TrainingArguments(learning_rate=1e-3, num_warmup_steps=4))
    assert isinstance(adamw, torch.optim.AdamW)
    scheduler = build_scheduler(adamw, TrainingArguments(learning_rate=1e-3, num_warmup_steps=4), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        adamw.step()
        scheduler.step()
    assert lrs[:5] == [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3]
    assert lrs[5] < 1e-3 and scheduler.get_last_lr()[0] == 0.0


def test_layer_decay_groups_keep_their_ratios_through_the_schedule():
    model = ViTAccelForImageClassification(ViTAccelConfig(**tiny_config_kwargs()))
    args = TrainingArguments(learning_rate=1e-3, layer_decay=0.5, weight_decay=0.05, num_warmup_steps=2)
    optimizer = build_optimizer(model, args)
    scales = [group["lr_scale"] for group in optimizer.param_groups]
    assert sorted(set(scales)) == [0.125, 0.25, 0.5, 1.0]  # embeddings, block 0, block 1, head (2 blocks)
    scheduler = build_scheduler(optimizer, args, total_steps=6)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    lrs = scheduler.get_last_lr()
    for lr, scale in zip(lrs, scales):
        assert lr == pytest.approx(lrs[scales.index(1.0)] * scale)

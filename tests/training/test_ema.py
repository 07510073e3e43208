import pytest
import torch
from torch import nn

from vit_accel.errors import UserError
from vit_accel.training.ema import EMA_FILE, WeightEMA, check_ema


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def _perturb(model, generator):
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("warmup", [False, True])
def test_follows_the_ema_formula(warmup):
    model, generator = _model(), torch.Generator().manual_seed(1)
    ema = WeightEMA(model, decay=0.9, warmup=warmup)
    expected = None
    for t in range(6):
        _perturb(model, generator)
        ema.update(model)
        current = [p.detach().clone() for p in model.parameters()]
        if expected is None:
            expected = current  # the average starts at the weights after the first step
        else:
            d = min(0.9, 1 - (1 + t) ** (-2 / 3)) if warmup else 0.9
            expected = [d * e + (1 - d) * w for e, w in zip(expected, current)]
    assert ema.num_updates == 6
    for got, want in zip(ema.module.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert not got.requires_grad


@pytest.mark.parametrize("warmup", [False, True])
def test_matches_timm_model_ema_v3(warmup):
    timm_ema = pytest.importorskip("timm.utils.model_ema")
    model, generator = _model(), torch.Generator().manual_seed(2)
    ours = WeightEMA(model, decay=0.99, warmup=warmup)
    theirs = timm_ema.ModelEmaV3(model, decay=0.99, use_warmup=warmup)
    for step in range(1, 30):
        _perturb(model, generator)
        ours.update(model)
        theirs.update(model, step=step)
    for got, want in zip(ours.module.parameters(), theirs.module.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_state_goes_through_accelerate_save_and_load_state(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model, generator = _model(), torch.Generator().manual_seed(3)
    ema = WeightEMA(model, decay=0.5, warmup=True)
    ema.register_checkpointing(accelerator)
    for _ in range(3):
        _perturb(model, generator)
        ema.update(model)
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    accelerator.save_state(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / EMA_FILE).is_file()

    # Resumed in a fresh object: the same average and update count, then the same next update.
    resumed = WeightEMA(_model(seed=9), decay=0.5, warmup=True)
    fresh = Accelerator(cpu=True)
    resumed.register_checkpointing(fresh)
    fresh.load_state(str(tmp_path / "ckpt"))
    assert resumed.num_updates == 3
    for key, value in saved.items():
        assert torch.equal(resumed.state_dict()[key], value), key
    _perturb(model, generator)
    ema.update(model)
    resumed.update(model)
    for a, b in zip(ema.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)


def test_load_refuses_a_checkpoint_without_ema(tmp_path):
    with pytest.raises(UserError, match="without --ema_decay"):
        WeightEMA(_model(), decay=0.9).load(tmp_path)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1])
def test_decay_outside_zero_one_is_refused_naming_the_flag(bad):
    with pytest.raises(UserError, match="--ema_decay must be in"):
        check_ema(bad)


def test_frozen_weights_stay_out_of_the_saved_state(tmp_path):
    model = _model()
    model[0].requires_grad_(False)
    ema = WeightEMA(model, decay=0.5)
    _perturb(model[2], torch.Generator().manual_seed(4))
    ema.update(model)
    ema.save(tmp_path)
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / EMA_FILE)) == {
        "n_averaged",
        "module.1.weight",
        "module.1.bias",
        "module.2.weight",
        "module.2.bias",
    }
    rebuilt = _model()  # the same frozen first layer (same seed), as a resumed run rebuilds it
    rebuilt[0].requires_grad_(False)
    resumed = WeightEMA(rebuilt, decay=0.5)
    resumed.load(tmp_path)
    for a, b in zip(ema.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)

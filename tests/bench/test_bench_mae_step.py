"""The MAE-step benchmark compares like with like: the two models it builds compute the same step."""

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "mae_step.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_mae_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_both_models_compute_the_same_loss_with_the_same_weights(bench):
    shape = bench.parse_shape("Mini/8@32")
    ours, theirs = (bench.build_model(impl, shape, (32, 1, 4, 64), 0.75).eval() for impl in bench.IMPLEMENTATIONS)
    with torch.no_grad():
        for tensor in theirs.state_dict().values():
            tensor.normal_(0, 0.1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    pixels, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels, noise=noise).loss, theirs(pixels, noise=noise).loss)
    assert ours.config.norm_pix_loss and theirs.config.norm_pix_loss


def test_a_trainer_step_updates_the_model(bench):
    trainer = bench.Trainer("ours", bench.parse_shape("Mini/8@32"), 2, (32, 1, 4, 64), 0.75)
    before = trainer.model.decoder.decoder_pred.weight.detach().clone()
    assert trainer.run(1) > 0
    assert not torch.equal(before, trainer.model.decoder.decoder_pred.weight)


@pytest.mark.parametrize("text", ["256x4x8", "256x4x7x1024", "0x4x8x1024", "wide"])
def test_a_decoder_that_does_not_fit_is_refused(bench, text):
    with pytest.raises(argparse.ArgumentTypeError, match="--decoder"):
        bench.parse_decoder(text)

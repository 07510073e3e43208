import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from vit_accel.errors import UserError
from vit_accel.training.mixing import (
    BatchMixer,
    MixingConfig,
    check_mixing,
    mixing_seed,
    soft_target_cross_entropy,
)

NUM_CLASSES = 7


def _batch(seed=0, size=6):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size, 3, 8, 8, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    return pixels, labels


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_equals_torchvision_on_the_same_seed(kind):
    pixels, labels = _batch()
    config = MixingConfig(mixup_alpha=0.8 if kind == "mixup" else 0.0, cutmix_alpha=1.0 if kind == "cutmix" else 0.0)
    got_pixels, got_targets = BatchMixer(config, NUM_CLASSES)(pixels.clone(), labels, seed=1234)

    reference = (
        v2.MixUp(alpha=0.8, num_classes=NUM_CLASSES)
        if kind == "mixup"
        else v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)
    )
    torch.manual_seed(1234)
    want_pixels, want_targets = reference(pixels.clone(), labels)
    assert torch.equal(got_pixels, want_pixels) and torch.equal(got_targets, want_targets)
    # Genuinely mixed: each row blends its own image with its neighbour's, in the proportion its target says.
    lam = got_targets[torch.arange(6), labels]
    assert not torch.equal(got_pixels, pixels) and ((lam > 0) & (lam <= 1)).all()
    if kind == "mixup":
        same = labels != labels.roll(1)
        expected = lam[:, None, None, None] * pixels + (1 - lam[:, None, None, None]) * pixels.roll(1, 0)
        torch.testing.assert_close(got_pixels[same], expected[same])


def test_switch_and_mix_prob_and_smoothing_as_torchvision_composes_them():
    pixels, labels = _batch(1, size=8)
    config = MixingConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=0.6, switch_prob=0.3, label_smoothing=0.1)
    mixer = BatchMixer(config, NUM_CLASSES)
    reference = v2.RandomApply(
        [
            v2.RandomChoice(
                [v2.MixUp(alpha=0.8, num_classes=NUM_CLASSES), v2.CutMix(alpha=1.0, num_classes=NUM_CLASSES)],
                p=[0.7, 0.3],
            )
        ],
        p=0.6,
    )
    mixed = 0
    for seed in range(40):
        got_pixels, got_targets = mixer(pixels.clone(), labels, seed=seed)
        torch.manual_seed(seed)
        want_pixels, want_targets = reference(pixels.clone(), labels)
        if not want_targets.dtype.is_floating_point:
            want_targets = F.one_hot(want_targets, NUM_CLASSES).float()
        else:
            mixed += 1
        assert torch.equal(got_pixels, want_pixels)
        torch.testing.assert_close(got_targets, want_targets * 0.9 + 0.1 / NUM_CLASSES)
        torch.testing.assert_close(got_targets.sum(-1), torch.ones(8))
    assert 10 < mixed < 40  # both outcomes of mix_prob occurred


def test_unmixed_soft_targets_give_label_smoothed_cross_entropy():
    pixels, labels = _batch(2)
    mixer = BatchMixer(MixingConfig(mixup_alpha=1.0, mix_prob=0.0, label_smoothing=0.1), NUM_CLASSES)
    out, targets = mixer(pixels.clone(), labels, seed=0)
    assert torch.equal(out, pixels)
    logits = torch.randn(6, NUM_CLASSES, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        soft_target_cross_entropy(logits, targets), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )


def test_seeded_by_position_and_leaves_the_global_rng_alone():
    pixels, labels = _batch(3)
    mixer = BatchMixer(MixingConfig(mixup_alpha=0.8, cutmix_alpha=1.0), NUM_CLASSES)
    torch.manual_seed(0)
    first = mixer(pixels.clone(), labels, seed=mixing_seed(42, 1, 5, 0))
    after = torch.rand(3)
    torch.manual_seed(99)  # another global state: the same mix
    again = mixer(pixels.clone(), labels, seed=mixing_seed(42, 1, 5, 0))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # the mixer drew nothing from the global stream
    seeds = {mixing_seed(42, e, b, r) for e in range(2) for b in range(3) for r in range(2)}
    assert len(seeds) == 12


def test_multi_hot_targets_mix_and_smoothing_them_is_refused():
    pixels, _ = _batch(4)
    multi_hot = (torch.rand(6, NUM_CLASSES, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    _, targets = BatchMixer(MixingConfig(mixup_alpha=1.0), NUM_CLASSES, multi_label=True)(pixels, multi_hot, seed=3)
    assert targets.shape == (6, NUM_CLASSES)
    with pytest.raises(UserError, match="--label_smoothing cannot be combined"):
        check_mixing(MixingConfig(cutmix_alpha=1.0, label_smoothing=0.1), multi_label=True)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"mixup_alpha": -1.0}, "--mixup_alpha"),
        ({"mix_prob": 1.5}, "--mix_prob"),
        ({"switch_prob": -0.1}, "--mix_switch_prob"),
    ],
)
def test_values_out_of_range_name_the_flag(kwargs, flag):
    with pytest.raises(UserError, match=flag):
        check_mixing(MixingConfig(**kwargs))

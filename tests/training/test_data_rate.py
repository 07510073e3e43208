"""The start-up loader probe (what the loader can give, RNG untouched) and the data-wait warning's rule."""

import logging
import random

import numpy as np
import pytest
import torch
from factories import cifar10_dataset
from launching import assert_same_weights, tiny_args, train_in_this_process

from vit_accel.data import ImageClassificationDataset, build_pipeline, collate
from vit_accel.training import data_rate
from vit_accel.training.data_rate import DATA_WAIT_SHARE, LoaderRate, data_wait_warning, measure_loader

HALF = (0.5, 0.5, 0.5)


def global_states() -> tuple:
    return random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state()


def test_the_warning_comes_when_the_loop_waited_on_data_more_than_the_share():
    message = data_wait_warning(waited=4.0, interval=10.0, images_per_second=123.4)
    assert message is not None and "\n" not in message
    assert "40%" in message and f"{DATA_WAIT_SHARE:.0%}" in message and "123 images/s" in message
    for flag in ("--dataloader_num_workers", "--image_decoder", "--augmentation"):
        assert flag in message
    assert data_wait_warning(waited=1.0, interval=10.0, images_per_second=500.0) is None
    assert data_wait_warning(waited=2.0, interval=10.0, images_per_second=500.0) is None  # at the share: no
    assert data_wait_warning(waited=0.0, interval=0.0, images_per_second=0.0) is None
    assert data_wait_warning(waited=1.0, interval=10.0, images_per_second=1.0, share=0.05) is not None


def test_the_probe_prepares_examples_through_the_dataset_and_leaves_the_random_state_alone():
    data = cifar10_dataset(12).rename_column("img", "image")
    dataset = ImageClassificationDataset(data, build_pipeline("inception", 32, HALF, HALF, train=True), seed=5)
    reference = [dataset[i]["pixel_values"].clone() for i in range(3)]
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    before = global_states()
    rate = measure_loader(dataset, collate, workers=4, examples=8)
    after = global_states()
    assert before[0] == after[0] and before[1] == after[1] and torch.equal(before[2], after[2])
    assert rate is not None and rate.examples == 8 and rate.workers == 4 and rate.seconds > 0
    assert rate.images_per_second == pytest.approx(4 * rate.per_worker)
    # The examples are still those of (seed, epoch, index): the probe drew nothing that training will see.
    assert all(torch.equal(dataset[i]["pixel_values"], reference[i]) for i in range(3))
    assert "4 workers" in rate.describe() and f"≈ {rate.images_per_second:.0f} images/s" in rate.describe()


def test_the_probe_stops_at_its_time_budget():
    data = cifar10_dataset(12).rename_column("img", "image")
    dataset = ImageClassificationDataset(data, build_pipeline("none", 32, HALF, HALF, train=True), seed=0)
    assert measure_loader(dataset, collate, workers=0, examples=12, budget_seconds=0.0).examples == 1
    assert "no workers" in LoaderRate(10, 1.0, 0).describe() and LoaderRate(10, 1.0, 0).images_per_second == 10


def test_a_run_says_the_loader_rate_and_trains_the_same_weights_without_the_probe(
    digits, tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    with_probe, without = tmp_path / "probe", tmp_path / "plain"
    extra = ("--augmentation", "inception", "--max_train_steps", "3", "--eval_steps", "3")
    assert train_in_this_process(tiny_args(digits, with_probe, *extra), threads=1) == 0
    lines = [r.getMessage() for r in caplog.records if "The loader can give ≈ " in r.getMessage()]
    assert len(lines) == 1 and "no workers" in lines[0], lines
    caplog.clear()
    monkeypatch.setattr(data_rate, "announce_loader_rate", lambda *args: None)
    assert train_in_this_process(tiny_args(digits, without, *extra), threads=1) == 0
    assert not any("The loader can give" in r.getMessage() for r in caplog.records)
    assert_same_weights(with_probe, without, atol=0)

"""The training loop's bookkeeping: accumulation windows, the loss/throughput/data-wait meter, Ctrl-C's line."""

import logging
import os
import signal
import time
import types

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from vit_accel.training.checkpointing import TrainerState
from vit_accel.training.loop import (
    AccumulationWindows,
    Interrupted,
    LossMeter,
    interruption_report,
    sigterm_as_interrupt,
    training_record,
)


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_windows_count_the_examples_each_step_really_holds():
    # 23 examples in batches of 5 (the last holds 3), accumulation 2: windows {0,1}, {2,3}, {4}.
    windows = AccumulationWindows(num_batches=5, batch_size=5, num_examples=23, steps=2, num_processes=1)
    assert [windows.batch_size_of(i) for i in range(5)] == [5, 5, 5, 5, 3]
    assert [windows.examples(i, windows.batch_size_of(i)) for i in range(5)] == [10, 10, 10, 10, 3]
    # With several processes accelerate completes the last batch: every window is whole.
    padded = AccumulationWindows(num_batches=5, batch_size=5, num_examples=23, steps=2, num_processes=2)
    assert [padded.examples(i, 5) for i in range(5)] == [10, 10, 10, 10, 5]
    with pytest.raises(RuntimeError, match="Batch 4 holds 5 examples, not the 3 expected"):
        windows.examples(4, 5)


def test_the_meter_averages_the_loss_and_times_the_wait_for_data(accelerator):
    meter = LossMeter(accelerator)

    def slow_loader():
        for value in (1.0, 3.0):
            time.sleep(0.05)  # a loader that makes the loop wait
            yield torch.full((4,), value)

    for losses in meter.batches(slow_loader()):
        meter.add(losses)
        time.sleep(0.02)  # the step itself, not counted as waiting
    loss, images_per_second, data_wait = meter.read()
    assert loss == pytest.approx(2.0)
    assert 0.1 <= data_wait < 0.14  # the two waits, not the steps
    assert 0 < images_per_second <= 8 / 0.14
    # A read starts the next interval afresh.
    meter.add(torch.full((2,), 5.0))
    assert meter.read()[0] == pytest.approx(5.0) and meter.data_wait == 0.0


def test_the_first_record_warns_once_when_the_loop_waited_on_data_past_the_workers_start_up(accelerator, caplog):
    caplog.set_level(logging.WARNING)
    meter, state = LossMeter(accelerator), TrainerState()
    scheduler = types.SimpleNamespace(get_last_lr=lambda: [0.1])

    def loader(first_wait, wait):
        for index in range(3):
            time.sleep(first_wait if index == 0 else wait)
            yield torch.ones(2)

    def record() -> list[str]:
        for losses in meter.batches(loader(first_wait, wait)):
            meter.add(losses)
            time.sleep(0.03)  # the step
        caplog.clear()
        training_record(state, meter, scheduler, 2, 10, None)
        return [r.getMessage() for r in caplog.records if "waited on data" in r.getMessage()]

    # A slow first batch (workers starting) and quick ones after: not a slow loader.
    first_wait, wait = 0.3, 0.0
    assert record() == []
    assert meter.last_interval[0] < 0.05 and meter.last_interval[1] < 0.2
    # A loader slower than the steps, at the first record: one warning; at later records: none.
    meter, first_wait, wait = LossMeter(accelerator), 0.0, 0.06
    warned = record()
    assert len(warned) == 1 and "--dataloader_num_workers" in warned[0]
    assert record() == []


def test_ctrl_c_in_the_loop_names_the_step_and_the_checkpoint(tmp_path):
    state = TrainerState(completed_steps=4)
    no_checkpoint = pytest.raises(Interrupted, match=r"interrupted at step 4; no checkpoint was written yet")
    with no_checkpoint, interruption_report(tmp_path, state):
        raise KeyboardInterrupt
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(TrainerState(completed_steps=3).to_json())
    last = pytest.raises(Interrupted, match=r"last complete checkpoint is checkpoint-3: resume with")
    with last, interruption_report(tmp_path, state):
        raise KeyboardInterrupt


def test_sigterm_in_the_loop_ends_as_ctrl_c_does_with_its_own_exit_code(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    stopping = pytest.raises(Interrupted, match=r"interrupted at step 4")
    with stopping as stopped, sigterm_as_interrupt(), interruption_report(tmp_path, TrainerState(completed_steps=4)):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert stopped.value.terminated and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the block's alone
    with pytest.raises(Interrupted) as ctrl_c, interruption_report(tmp_path, TrainerState(completed_steps=4)):
        raise KeyboardInterrupt
    assert not ctrl_c.value.terminated and ctrl_c.value.exit_code == 130

"""train.py's output directories, resumes, damaged checkpoints and the Hub: nothing lost, nothing overwritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bad_input_helpers import assert_one_line, copy_run, snapshot, tiny
from factories import FAKE_TOKEN, TINY

# --- train.py: output directories, resumes and damaged checkpoints ----------------------------------------------


def test_an_existing_run_is_never_overwritten_by_accident(finished, world, run_train):
    run = finished / "finished"
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run))
    assert code == 2 and assert_one_line(stderr, "train.py", f"--output_dir {run} already holds a run")
    assert snapshot(run) == before


def test_output_dir_that_is_a_file_or_cannot_be_created(world, tmp_path, run_train):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for output_dir, message in ((blocker, "is a file"), (blocker / "run", "cannot be written")):
        code, stderr = run_train(tiny(world / "digits", output_dir))
        assert code == 2 and assert_one_line(stderr, "train.py", f"--output_dir {output_dir}", message)
    assert blocker.read_text() == "not a directory"


def test_a_directory_of_other_files_is_not_written_over(world, tmp_path, run_train):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("my notes")
    (project / "config.json").write_text("{}")
    before = snapshot(project)
    code, stderr = run_train(tiny(world / "digits", project))
    assert code == 2 and assert_one_line(stderr, "train.py", "holds files that are not a vit_accel run", "README.md")
    assert snapshot(project) == before


def test_the_run_never_writes_over_its_own_inputs(finished, world, tmp_path, run_train):
    before = snapshot(world / "digits")
    code, stderr = run_train(tiny(world / "digits", world / "digits", "--overwrite_output_dir"))
    assert code == 2 and assert_one_line(stderr, "train.py", "is (or lies inside) --dataset_name")
    assert snapshot(world / "digits") == before
    source = copy_run(finished, tmp_path)
    before = snapshot(source)
    argv = [a for a in tiny(world / "digits", source, "--overwrite_output_dir") if a != "--from_scratch"]
    argv[argv.index("vit-tiny-p16-224")] = str(source)
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "is (or lies inside) --model_name_or_path")
    assert snapshot(source) == before


def test_a_second_run_into_the_same_directory_is_refused(world, tmp_path, run_train):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".vit_accel.lock", "w") as held:  # as a first run holds it for its lifetime
        held.write("PID 4242 on somewhere")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, stderr = run_train(tiny(world / "digits", out))
    assert code == 2 and assert_one_line(stderr, "train.py", "in use by another run (PID 4242 on somewhere)")
    assert sorted(p.name for p in out.iterdir()) == [".vit_accel.lock"]


def test_overwriting_deletes_nothing_when_the_new_run_fails_before_its_first_step(finished, world, tmp_path, run_train):
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    argv = tiny("unused", run, "--overwrite_output_dir", "--train_val_split", "0.25")
    index = argv.index("--dataset_name")
    argv[index : index + 2] = ["--train_dir", str(world / "cats_unreadable")]
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "Cannot decode the image", "cat/")
    assert snapshot(run) == before


def test_resume_from_another_run_into_a_finished_one_is_refused(finished, world, run_train):
    before = snapshot(finished)
    other = finished / "other" / "checkpoint-2"
    argv = tiny(world / "digits", finished / "finished", "--resume_from_checkpoint", str(other))
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", f"belongs to the run in {other.parent}")
    assert snapshot(finished) == before


def test_resume_latest_of_a_finished_run_changes_nothing(finished, world, run_train, caplog):
    run = finished / "finished"
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run, "--resume_from_checkpoint", "latest"))
    assert code == 0 and "already finished at step 4 of 4: nothing to do" in caplog.text
    assert snapshot(run) == before
    assert json.loads((run / "all_results.json").read_text())["eval_top1"] >= 0


def test_resume_asking_for_fewer_steps_than_done_changes_nothing(finished, world, run_train, caplog):
    run = finished / "finished"
    before = snapshot(run)
    argv = tiny(world / "digits", run, "--resume_from_checkpoint", "latest", "--max_train_steps", "2")
    code, stderr = run_train(argv)
    assert code == 0, stderr[-3000:]
    assert "already at step 4, past the 2 asked for: nothing to do" in caplog.text
    assert snapshot(run) == before


def test_the_same_dataset_written_another_way_is_the_same_dataset(finished, world, run_train, caplog):
    run = finished / "finished"
    before = snapshot(run)
    code, stderr = run_train(tiny(f"{world / 'digits'}/", run, "--resume_from_checkpoint", "latest"))
    assert code == 0 and "already finished at step 4" in caplog.text, stderr[-3000:]
    assert snapshot(run) == before


def test_resume_on_other_data_under_the_same_path_is_refused(world, tmp_path, run_train):
    from datasets import DatasetDict, load_from_disk

    digits, data = load_from_disk(str(world / "digits")), tmp_path / "data"
    DatasetDict(train=digits["train"].select(range(400)), test=digits["test"]).save_to_disk(str(data))
    run = tmp_path / "run"
    assert run_train(tiny(data, run, "--max_train_steps", "2"))[0] == 0
    shutil.rmtree(data)  # the same path, re-exported with other rows
    DatasetDict(train=digits["train"].select(range(400, 800)), test=digits["test"]).save_to_disk(str(data))
    before = snapshot(run)
    code, stderr = run_train(tiny(data, run, "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "the dataset is not the one", "train_labels_sha256")
    assert snapshot(run) == before


def test_resume_latest_with_nothing_to_resume(world, tmp_path, run_train):
    (tmp_path / "out").mkdir()
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out", "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "no complete checkpoint in --output_dir")


def test_resume_from_a_path_that_is_not_a_checkpoint(finished, world, tmp_path, run_train):
    argv = tiny(world / "digits", tmp_path / "out", "--resume_from_checkpoint", str(finished / "finished"))
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "not a complete checkpoint directory")


CHANGED = {
    "seed": (["--seed", "4"], "--seed: 3 in the checkpoint, 4 now"),
    "batch size": (["--per_device_train_batch_size", "8"], "--per_device_train_batch_size: 16"),
    "accumulation": (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps: 1"),
    "dataset": (["--max_train_samples", "80"], "--max_train_samples: 96"),
    "augmentation": (["--augmentation", "inception"], "--augmentation: 'none'"),
    "model shape": (["--config_overrides", TINY.replace("hidden_size=32", "hidden_size=64")], "--config_overrides"),
    "learning rate": (["--learning_rate", "0.01"], "--learning_rate: 0.001"),
}


@pytest.mark.parametrize("name", list(CHANGED))
def test_resume_with_changed_settings_is_refused(name, finished, world, tmp_path, run_train):
    extra, expected = CHANGED[name]
    run = copy_run(finished, tmp_path)
    before = snapshot(run)
    argv = tiny(world / "digits", run, "--resume_from_checkpoint", str(run / "checkpoint-2"), *extra)
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", expected, "--accept_changed_settings")
    assert snapshot(run) == before


def _zero_second_half(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def _flip_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = bytes(b ^ 0xFF for b in data[:8])
    path.write_bytes(bytes(data))


def _edit_state(checkpoint: Path, **changes) -> None:
    values = json.loads((checkpoint / "trainer_state.json").read_text())
    values.update(changes)
    (checkpoint / "trainer_state.json").write_text(json.dumps(values))


def _as_deepspeed(checkpoint: Path) -> None:
    settings = json.loads((checkpoint / "trainer_state.json").read_text())["settings"]
    _edit_state(checkpoint, settings={**settings, "checkpoint_format": "DeepSpeed"})


DAMAGE = {
    "truncated weights": (lambda c: (c / "model.safetensors").write_bytes(b"\0" * 16), "model.safetensors holds 16"),
    "missing optimizer state": (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "corrupt trainer state": (lambda c: (c / "trainer_state.json").write_text('{"completed'), "trainer_state.json"),
    "trainer state of another tool": (lambda c: (c / "trainer_state.json").write_text("{}"), "not a vit_accel trainer"),
    "missing model config": (lambda c: (c / "model_config.json").unlink(), "model_config.json is missing"),
    "weights half zeroed, same size": (lambda c: _zero_second_half(c / "model.safetensors"), "content of model.safe"),
    "weights header flipped": (lambda c: _flip_header(c / "model.safetensors"), "content of model.safetensors"),
    "optimizer state zero-filled": (
        lambda c: (c / "optimizer.bin").write_bytes(bytes((c / "optimizer.bin").stat().st_size)),
        "content of optimizer.bin",
    ),
    "a step that is not a number": (lambda c: _edit_state(c, completed_steps="4"), "completed_steps is '4'"),
    "settings that are not a mapping": (lambda c: _edit_state(c, settings="x"), "settings is 'x'"),
    "written under DeepSpeed": (_as_deepspeed, "holds its states in DeepSpeed's format"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_before_loading(name, finished, world, tmp_path, run_train):
    damage, expected = DAMAGE[name]
    run = copy_run(finished, tmp_path)
    damage(run / "checkpoint-4")
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run, "--resume_from_checkpoint", "latest"))
    assert code == 2
    assert_one_line(stderr, "train.py", expected)
    assert snapshot(run) == before


def test_a_renamed_checkpoint_is_refused_not_deleted(finished, world, tmp_path, run_train):
    run = copy_run(finished, tmp_path)
    (run / "checkpoint-2").rename(run / "checkpoint-10")
    before = snapshot(run)
    code, stderr = run_train(tiny(world / "digits", run, "--resume_from_checkpoint", "latest"))
    assert code == 2 and assert_one_line(stderr, "train.py", "records step 2, not the 10 of its name")
    assert snapshot(run) == before


def test_a_full_disk_while_saving_keeps_the_earlier_checkpoint(world, tmp_path, run_train, monkeypatch):
    import errno

    from accelerate import Accelerator

    save_state, calls = Accelerator.save_state, []

    def save_state_on_a_disk_that_fills(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_on_a_disk_that_fills)
    code, stderr = run_train(tiny(world / "digits", tmp_path / "out"))
    assert code == 2
    assert_one_line(stderr, "train.py", "No space left", "checkpoint-4", "checkpoint-2, is intact")
    from vit_accel.training.checkpointing import list_checkpoints, verify_checkpoint

    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["checkpoint-2"]
    assert verify_checkpoint(tmp_path / "out" / "checkpoint-2").completed_steps == 2
    assert not (tmp_path / "out" / "checkpoint-4.tmp").exists()


def test_a_torn_log_line_does_not_block_a_resume(finished, world, tmp_path, run_train, caplog):
    run = copy_run(finished, tmp_path)
    with (run / "log.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # a disk that filled up during an append
    argv = tiny(world / "digits", run, "--resume_from_checkpoint", str(run / "checkpoint-2"))
    code, stderr = run_train(argv)
    assert code == 0, stderr[-3000:]
    assert "dropping its torn last line" in caplog.text
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4


def test_the_hub_is_checked_before_the_data(world, tmp_path, run_train):
    # HF_HUB_OFFLINE is set for the tests, as on a machine without a network; the dataset does not even exist.
    argv = tiny(world / "nowhere", tmp_path / "out", "--push_to_hub", "--hub_model_id", "someone/model")
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", "--push_to_hub someone/model", "before training")


def test_an_offline_hub_is_named_as_the_cause_when_a_token_is_set(world, tmp_path, run_train, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    argv = tiny(world / "nowhere", tmp_path / "out", "--push_to_hub", "--hub_model_id", "someone/model")
    code, stderr = run_train(argv)
    line = assert_one_line(stderr, "train.py", "HF_HUB_OFFLINE is set")
    assert code == 2 and "set HF_TOKEN" not in line and FAKE_TOKEN not in stderr
    assert not (tmp_path / "out").exists()  # checked before the output directory is made


@pytest.mark.parametrize(
    "identity, message",
    [
        (
            {"name": "me", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}},
            "cannot write to 'someone'",
        ),
        ({"name": "someone", "orgs": [], "auth": {"accessToken": {"role": "read"}}}, "token is read-only"),
    ],
)
def test_a_token_that_cannot_write_the_repository(identity, message, world, tmp_path, run_train, monkeypatch):
    class FakeApi:
        def __init__(self, token=None):
            pass

        def whoami(self):
            return identity

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    argv = tiny(world / "nowhere", tmp_path / "out", "--push_to_hub", "--hub_model_id", "someone/model")
    code, stderr = run_train(argv)
    assert code == 2 and assert_one_line(stderr, "train.py", message)

import pytest
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig
from vit_accel.errors import UserError
from vit_accel.training.checkpointing import (
    TrainerState,
    list_checkpoints,
    remove_stale_checkpoints,
    resolve_checkpoint,
    rotate_checkpoints,
    verify_checkpoint,
)


def make_checkpoint(root, step, complete=True, files=None):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    (path / "model_config.json").write_text(ViTAccelConfig(**tiny_config_kwargs()).to_json_string())
    for name, data in (files or {}).items():
        (path / name).write_bytes(data)
    if complete:
        manifest = {name: len(data) for name, data in (files or {}).items()}
        manifest["model_config.json"] = (path / "model_config.json").stat().st_size
        (path / "trainer_state.json").write_text(TrainerState(completed_steps=step, files=manifest).to_json())
    return path


def test_only_complete_checkpoints_count_and_latest_is_the_newest(tmp_path):
    for step in (2, 10, 4):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 12, complete=False)  # crashed before being marked complete
    (tmp_path / "checkpoint-14.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    assert resolve_checkpoint("latest", tmp_path).name == "checkpoint-10"
    with pytest.raises(UserError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoint-12"), tmp_path)
    with pytest.raises(UserError, match="no complete checkpoint in --output_dir"):
        resolve_checkpoint("latest", tmp_path / "empty")
    assert remove_stale_checkpoints(tmp_path, step=4) == ["checkpoint-10"]
    assert not (tmp_path / "checkpoint-14.tmp").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    remove_stale_checkpoints(tmp_path, step=0)  # a fresh run over an old one
    assert list_checkpoints(tmp_path) == []


def test_a_resume_writes_only_into_its_own_run_or_an_empty_directory(tmp_path):
    (tmp_path / "run").mkdir()
    checkpoint = make_checkpoint(tmp_path / "run", 2)
    assert resolve_checkpoint(str(checkpoint), tmp_path / "run") == checkpoint
    assert resolve_checkpoint(str(checkpoint), tmp_path / "new") == checkpoint  # does not exist yet
    (tmp_path / "empty").mkdir()
    assert resolve_checkpoint(str(checkpoint), tmp_path / "empty") == checkpoint
    (tmp_path / "finished").mkdir()
    (tmp_path / "finished" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match=r"belongs to the run in .*run, but --output_dir .*finished holds other"):
        resolve_checkpoint(str(checkpoint), tmp_path / "finished")


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    files = {"model.safetensors": b"w" * 100, "optimizer.bin": b"o" * 50}
    checkpoint = make_checkpoint(tmp_path, 2, files=files)
    assert verify_checkpoint(checkpoint).completed_steps == 2
    (checkpoint / "model.safetensors").write_bytes(b"w" * 60)  # truncated
    with pytest.raises(UserError, match=r"model.safetensors holds 60 bytes, but 100 were written"):
        verify_checkpoint(checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"w" * 100)
    (checkpoint / "optimizer.bin").unlink()
    with pytest.raises(UserError, match=r"damaged: optimizer.bin is missing"):
        verify_checkpoint(checkpoint)
    (checkpoint / "trainer_state.json").write_text('{"completed_steps": 2, "epo')
    with pytest.raises(UserError, match=r"trainer_state.json is unreadable or not valid JSON"):
        verify_checkpoint(checkpoint)
    (checkpoint / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"trainer_state.json is not a vit_accel trainer state"):
        verify_checkpoint(checkpoint)


def test_rotation_keeps_the_last_n_and_the_best(tmp_path):
    for step in (2, 4, 6, 8):
        make_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, save_total_limit=2, keep="checkpoint-2")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    rotate_checkpoints(tmp_path, save_total_limit=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-8"]

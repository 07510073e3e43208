import json

import pytest
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig
from vit_accel.training.checkpointing import (
    TrainerState,
    check_compatible,
    list_checkpoints,
    remove_stale_checkpoints,
    resolve_checkpoint,
    rotate_checkpoints,
)


def make_checkpoint(root, step, complete=True):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    if complete:
        (path / "trainer_state.json").write_text(TrainerState(completed_steps=step).to_json())
    return path


def test_only_complete_checkpoints_count_and_latest_is_the_newest(tmp_path):
    for step in (2, 10, 4):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 12, complete=False)  # crashed before being marked complete
    (tmp_path / "checkpoint-14.tmp").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-10"]
    assert resolve_checkpoint("latest", tmp_path).name == "checkpoint-10"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoint-12"), tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
        resolve_checkpoint("latest", tmp_path / "empty")
    remove_stale_checkpoints(tmp_path, step=4)
    assert not (tmp_path / "checkpoint-14.tmp").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    remove_stale_checkpoints(tmp_path, step=0)  # a fresh run over an old one
    assert list_checkpoints(tmp_path) == []


def test_rotation_keeps_the_last_n_and_the_best(tmp_path):
    for step in (2, 4, 6, 8):
        make_checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, save_total_limit=2, keep="checkpoint-2")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-6", "checkpoint-8"]
    rotate_checkpoints(tmp_path, save_total_limit=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-8"]


def test_a_checkpoint_of_another_shape_is_refused_naming_the_fields(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 2)
    (checkpoint / "model_config.json").write_text(ViTAccelConfig(**tiny_config_kwargs()).to_json_string())
    check_compatible(checkpoint, ViTAccelConfig(**tiny_config_kwargs(drop_path_rate=0.1)))  # not a shape field
    with pytest.raises(ValueError, match=r"hidden_size=48 vs 64; num_attention_heads=4 vs 8"):
        check_compatible(checkpoint, ViTAccelConfig(**tiny_config_kwargs(hidden_size=64, num_attention_heads=8)))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["completed_steps"] == 2

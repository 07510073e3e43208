"""The resume plan: fresh, continue, continue on another number of processes, or nothing to do; and the rules it
applies (settings, data, model shape, length)."""

import json
from types import SimpleNamespace

import pytest
from accelerate import PartialState
from accelerate.utils import DistributedType
from factories import tiny_config_kwargs

from vit_accel import ViTAccelConfig
from vit_accel.errors import UserError
from vit_accel.training.checkpointing import TrainerState
from vit_accel.training.resume import (
    ResumePlan,
    changed_settings,
    check_compatible,
    check_resumed_data,
    check_resumed_model,
    plan_resume,
)

SETTINGS = {
    "num_processes": 1,
    "seed": 3,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_train_steps": 6,
    "num_train_epochs": 3,
    "checkpoint_format": "plain",
}


@pytest.fixture(autouse=True)
def accelerate_state():
    PartialState(cpu=True)  # accelerate's logger needs it
    yield
    PartialState._reset_state()


def make_checkpoint(root, step, settings=None, total_steps=6, batches_in_epoch=0):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model_config.json").write_text(ViTAccelConfig(**tiny_config_kwargs()).to_json_string())
    state = TrainerState(
        completed_steps=step,
        batches_in_epoch=batches_in_epoch,
        total_steps=total_steps,
        settings=dict(SETTINGS if settings is None else settings),
        files={"model_config.json": (path / "model_config.json").stat().st_size},
    )
    (path / "trainer_state.json").write_text(state.to_json())
    return path


def accelerator(num_processes=1, distributed_type=DistributedType.NO):
    return SimpleNamespace(
        num_processes=num_processes,
        distributed_type=distributed_type,
        gradient_accumulation_steps=1,
        state=SimpleNamespace(deepspeed_plugin=None),
    )


def run_args(resume="latest", accept=False, **values):
    fields = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, **values}
    return SimpleNamespace(resume_from_checkpoint=resume, accept_changed_settings=accept, **fields)


def test_without_the_flag_the_run_starts_fresh(tmp_path):
    make_checkpoint(tmp_path, 3)
    plan = plan_resume(accelerator(), run_args(resume=None), dict(SETTINGS), tmp_path)
    assert plan.kind == "fresh" and plan.checkpoint is None and plan.state is None


def test_the_same_settings_continue_the_latest_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 3)
    make_checkpoint(tmp_path, 5)
    plan = plan_resume(accelerator(), run_args(), dict(SETTINGS), tmp_path)
    assert plan.kind == "continue" and plan.checkpoint.name == "checkpoint-5" and plan.state.completed_steps == 5
    # Asking for more steps is not a change of settings: the run's length may grow.
    longer = {**SETTINGS, "max_train_steps": 10}
    assert plan_resume(accelerator(), run_args(), longer, tmp_path).kind == "continue"


def test_a_changed_setting_is_refused_naming_it_unless_accepted(tmp_path):
    make_checkpoint(tmp_path, 3)
    with pytest.raises(UserError, match=r"--seed: 3 in the checkpoint, 4 now.*--accept_changed_settings"):
        plan_resume(accelerator(), run_args(), {**SETTINGS, "seed": 4}, tmp_path)
    plan = plan_resume(accelerator(), run_args(accept=True), {**SETTINGS, "seed": 4}, tmp_path)
    assert plan.kind == "continue"


def test_a_checkpoint_of_another_kind_of_config_is_refused(tmp_path):
    make_checkpoint(tmp_path, 3, settings={**SETTINGS, "checkpoint_format": "DeepSpeed"})
    with pytest.raises(UserError, match=r"DeepSpeed's format.*the kind of accelerate config that wrote it"):
        plan_resume(accelerator(), run_args(), dict(SETTINGS), tmp_path)


def test_a_finished_run_has_nothing_to_do_only_once_its_results_are_written(tmp_path):
    make_checkpoint(tmp_path, 6)
    # Stopped between its last checkpoint and its final save: resuming it completes that save.
    assert plan_resume(accelerator(), run_args(), dict(SETTINGS), tmp_path).kind == "continue"
    (tmp_path / "all_results.json").write_text(json.dumps({"train_steps": 6, "eval_top1": 0.5}))
    plan = plan_resume(accelerator(), run_args(), dict(SETTINGS), tmp_path)
    assert plan.kind == "nothing to do" and plan.finished == {"train_steps": 6, "eval_top1": 0.5}
    # Results of another length (an older run's) do not count as this one's.
    (tmp_path / "all_results.json").write_text(json.dumps({"train_steps": 4}))
    assert plan_resume(accelerator(), run_args(), dict(SETTINGS), tmp_path).kind == "continue"
    # Asking for more steps trains further.
    (tmp_path / "all_results.json").write_text(json.dumps({"train_steps": 6}))
    longer = {**SETTINGS, "max_train_steps": 10}
    assert plan_resume(accelerator(), run_args(), longer, tmp_path).kind == "continue"


def test_a_checkpoint_past_the_length_asked_for_has_nothing_to_do(tmp_path):
    make_checkpoint(tmp_path, 6)
    (tmp_path / "all_results.json").write_text(json.dumps({"train_steps": 6, "eval_top1": 0.5}))
    plan = plan_resume(accelerator(), run_args(), {**SETTINGS, "max_train_steps": 4}, tmp_path)
    assert plan.kind == "continue" and plan.past_the_end(6, tmp_path) is None
    assert plan.past_the_end(4, tmp_path) == {"train_steps": 6, "eval_top1": 0.5}
    assert plan.kind == "nothing to do"


def test_another_number_of_processes_keeps_the_global_batch(tmp_path):
    recorded = {**SETTINGS, "num_processes": 2}
    make_checkpoint(tmp_path, 3, settings=recorded, batches_in_epoch=3)
    args, settings, machine = run_args(), dict(SETTINGS), accelerator(num_processes=1)
    plan = plan_resume(machine, args, settings, tmp_path)
    assert plan.kind == "continue on another world size"
    saved, new = plan.layouts
    assert (saved.num_processes, saved.per_device_batch, saved.accumulation) == (2, 8, 1)
    assert (new.num_processes, new.per_device_batch, new.accumulation) == (1, 8, 2)
    # The run takes the new split: 2 micro-batches of 8 per step on one process, 6 consumed of the epoch.
    assert args.gradient_accumulation_steps == settings["gradient_accumulation_steps"] == 2
    assert machine.gradient_accumulation_steps == 2 and plan.state.batches_in_epoch == 6


def test_resumed_data_and_model_must_be_the_checkpoints(tmp_path):
    identity = {"num_labels": 10, "train_rows": 20}
    make_checkpoint(tmp_path, 3, settings={**SETTINGS, "dataset_identity": identity})
    plan = plan_resume(accelerator(), run_args(), dict(SETTINGS), tmp_path)
    settings = {}
    check_resumed_data(plan, settings, dict(identity), accept_changed=False)
    assert settings["dataset_identity"] == identity
    with pytest.raises(UserError, match=r"not the one the checkpoint was trained on \(train_rows: 20 in the"):
        check_resumed_data(plan, {}, {**identity, "train_rows": 19}, accept_changed=False)
    check_resumed_data(plan, {}, {**identity, "train_rows": 19}, accept_changed=True)
    check_resumed_data(ResumePlan(), settings, {"num_labels": 3}, accept_changed=False)  # fresh: nothing to compare
    check_resumed_model(plan, ViTAccelConfig(**tiny_config_kwargs()))
    with pytest.raises(UserError, match=r"another model shape"):
        check_resumed_model(plan, ViTAccelConfig(**tiny_config_kwargs(hidden_size=64, num_attention_heads=8)))


def test_changed_settings_name_the_flags():
    recorded = {"seed": 3, "per_device_train_batch_size": 16, "num_processes": 1}
    assert changed_settings(recorded, dict(recorded)) == []
    assert changed_settings(None, {"seed": 4}) == []  # written before settings were recorded
    changes = changed_settings(recorded, {"seed": 4, "per_device_train_batch_size": 16, "num_processes": 2})
    assert changes == ["--seed: 3 in the checkpoint, 4 now", "number of processes: 1 in the checkpoint, 2 now"]


def test_a_checkpoint_of_another_shape_is_refused_naming_the_fields(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 2)
    check_compatible(checkpoint, ViTAccelConfig(**tiny_config_kwargs(drop_path_rate=0.1)))  # not a shape field
    with pytest.raises(UserError, match=r"hidden_size=48 vs 64; num_attention_heads=4 vs 8"):
        check_compatible(checkpoint, ViTAccelConfig(**tiny_config_kwargs(hidden_size=64, num_attention_heads=8)))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["completed_steps"] == 2


def test_another_metric_for_the_best_model_is_a_changed_setting(tmp_path):
    from vit_accel.training.arguments import TrainingArguments
    from vit_accel.training.resume import resume_settings

    recorded = resume_settings((TrainingArguments(output_dir=str(tmp_path / "run")),), 1)
    assert recorded["metric_for_best_model"] == "eval_top1"
    make_checkpoint(tmp_path, 3, settings={**SETTINGS, **recorded})
    now = resume_settings((TrainingArguments(output_dir=str(tmp_path / "run"), metric_for_best_model="eval_loss"),), 1)
    with pytest.raises(UserError, match=r"--metric_for_best_model: 'eval_top1' in the checkpoint, 'eval_loss' now"):
        plan_resume(accelerator(), run_args(), {**SETTINGS, **now}, tmp_path)


def test_auto_decoding_on_a_machine_that_resolves_it_otherwise_is_a_changed_setting(tmp_path, monkeypatch):
    from vit_accel.data import decode
    from vit_accel.data.arguments import DataArguments
    from vit_accel.training.resume import resume_settings

    def settings(installed, augmentation="inception"):
        monkeypatch.setattr(decode, "turbojpeg_available", lambda: installed)
        monkeypatch.setattr(decode, "simplejpeg_available", lambda: installed)
        return resume_settings((DataArguments(dataset_name="digits", augmentation=augmentation),), 1)

    recorded = settings(True)
    assert recorded["image_decoder"] == "auto: turbojpeg"
    make_checkpoint(tmp_path, 3, settings={**SETTINGS, **recorded})
    plan_resume(accelerator(), run_args(), {**SETTINGS, **settings(True)}, tmp_path)  # the same machine: continues
    changed = r"--image_decoder: 'auto: turbojpeg' in the checkpoint, 'auto: pil_draft' now"
    with pytest.raises(UserError, match=changed):
        plan_resume(accelerator(), run_args(), {**SETTINGS, **settings(False)}, tmp_path)
    # A preset without a random-resized crop decodes in full on every machine: nothing changed.
    assert settings(True, "cifar")["image_decoder"] == settings(False, "cifar")["image_decoder"] == "auto: pil"

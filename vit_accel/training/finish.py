"""The end of a run: its results, the final model (a model directory, or an adapter directory), the record of how
it was trained, the curves, the card and the push, in an order that leaves the directory whole or resumable.

`all_results.json` is written last, in one rename: a directory holding it is a finished run whose every other file
is written; one without it, but with a checkpoint at the run's last step, is finished by resuming it
(`--resume_from_checkpoint latest` runs this phase again). Ctrl-C here says what was saved and how to go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule

from ..adapters import MERGED_DIR, count_parameters, save_adapter, save_merged, write_adapter_card
from ..hub import push_to_hub, write_model_card
from ..weights.conversion import write_processor
from . import methods
from .arguments import recorded_arguments, recorded_command
from .checkpointing import TrainerState, list_checkpoints
from .distributed import parameter_checksum
from .loop import Interrupted, gather_bad_rows
from .model import base_config
from .reporting import CURVES_FILE, FINAL_OUTPUTS, RESULTS_FILE, Reporter, plot_curves


def write_image_processor(directory: Path, size, mean, std) -> None:
    """The run's image processor (`size` px, `mean`/`std`) in `directory`, as transformers' pipeline reads it."""
    write_processor({"image_mean": list(mean), "image_std": list(std)}, size, directory)


class FinalPhase:
    """What the final phase has reached and saved, for the line Ctrl-C prints."""

    def __init__(self, output_dir: Path, step: int):
        self.output_dir, self.step = output_dir, step
        self.stage, self.complete = "gathering the results", False

    def reached(self, stage: str) -> None:
        self.stage = stage

    def saved(self) -> list[str]:
        """The final outputs in the directory (those of an earlier run went when this one claimed it)."""
        return [name for name in FINAL_OUTPUTS if (self.output_dir / name).exists()]

    def interrupted(self) -> Interrupted:
        if self.complete:
            return Interrupted(
                f"interrupted at step {self.step}, while {self.stage}; the run is complete: {self.output_dir} holds "
                f"its final model and {RESULTS_FILE}."
            )
        saved = f"{', '.join(self.saved())} saved" if self.saved() else "nothing of the final save written yet"
        last = list_checkpoints(self.output_dir)
        if last and last[-1].name == f"checkpoint-{self.step}":
            advice = f"resume with --resume_from_checkpoint latest ({last[-1].name}) to finish the final save"
        elif last:
            advice = f"resume with --resume_from_checkpoint latest ({last[-1].name}) to train its last steps again"
        else:
            advice = "no checkpoint was written (see --checkpointing_steps): run it again"
        return Interrupted(
            f"interrupted at step {self.step}, after training, while {self.stage} ({saved}); the directory is "
            f"incomplete (no {RESULTS_FILE}): {advice}."
        )


def finish_run(
    accelerator: Accelerator,
    model,
    ema,
    state: TrainerState,
    results: dict,
    compute_dtype,
    datasets: tuple,
    reporter: Reporter,
    arguments: tuple,
    normalisation: tuple,
    evaluated: dict | None = None,
    model_card: bool = True,
) -> dict:
    """Gather the final results, save the final model (or adapter) with its image processor, `training_args.json`,
    the curves and the card, then `all_results.json`, then push; returns the results. `datasets`: (train, eval)
    sets, for their unreadable rows; `normalisation`: (mean, std) of the model's inputs; `evaluated`: what the
    results add about the evaluations (the best one, the split evaluated); `model_card`: write the classifier's card
    (README.md)."""
    model_args, data_args, args = arguments
    output_dir = Path(args.output_dir)
    phase = FinalPhase(output_dir, state.completed_steps)
    try:
        final = _final_results(accelerator, model, ema, state, results, compute_dtype, datasets, reporter, args)
        final.update(evaluated or {})
        if data_args.bad_images == "skip":
            reporter.log.write({"step": state.completed_steps, **{k: final[k] for k in final if "unreadable" in k}})
        command = recorded_command([os.path.basename(sys.argv[0]), *sys.argv[1:]])
        record = {"command": command, **recorded_arguments(model_args, data_args, args)}
        saved_model = ema.module if final["final_model"] == "ema" else model
        size = base_config(accelerator.unwrap_model(model)).image_size
        phase.reached("saving the final model")
        if args.peft:
            save_adapter_outputs(accelerator, saved_model, output_dir, args, size, normalisation, final, record)
        else:
            save_final_model(accelerator, saved_model, output_dir, size, normalisation, record)
        phase.reached("writing the curves and the model card")
        if accelerator.is_main_process:
            plot_curves(reporter.log.records(), output_dir / CURVES_FILE)
            if not args.peft and model_card:  # the adapter directory has its own card, saying how to load it
                write_model_card(output_dir, final)
            phase.reached(f"writing {RESULTS_FILE}")
            _write_atomically(output_dir / RESULTS_FILE, json.dumps(final, indent=2) + "\n")
        accelerator.wait_for_everyone()
        phase.complete = True
        if accelerator.is_main_process and args.push_to_hub:
            phase.reached("pushing to the Hub")
            # An adapter run pushes the adapter; its merged copy (--merge_adapter) stays local.
            exclude = [f"{MERGED_DIR}/*"] if args.peft else ()
            url = push_to_hub(
                output_dir, args.hub_model_id, args.hub_private_repo, token=args.hub_token, exclude=exclude
            )
            reporter.info(f"Pushed to {url}")
        phase.reached("ending the trackers")
        accelerator.end_training()
    except KeyboardInterrupt:
        raise phase.interrupted() from None
    return final


def _final_results(accelerator, model, ema, state, results, compute_dtype, datasets, reporter, args) -> dict:
    """The run's results: steps, the last evaluation, where and how it ran, the replicas' checksums, parameters,
    the model kept and the unreadable rows (collectives: every process calls this)."""
    train_set, eval_set = datasets
    bad_train = gather_bad_rows(accelerator, train_set, state.bad_rows.get("train", []))
    bad_eval = gather_bad_rows(accelerator, eval_set, state.bad_rows.get("validation", []))
    # Data-parallel replicas must hold the same weights; differing checksums mean the processes were not in sync.
    checksum = parameter_checksum(model).to(accelerator.device)
    trainable, total = count_parameters(accelerator.unwrap_model(model))
    final = {
        "train_steps": state.completed_steps,
        **results,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "replica_checksums": accelerator.gather(checksum).tolist(),
        **methods.ema_checksums(accelerator, ema),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "final_model": methods.choose_final(args, results),
        "compute_dtype": str(compute_dtype).removeprefix("torch.") if compute_dtype is not None else None,
        "train_unreadable_images": len(bad_train),
        "eval_unreadable_images": len(bad_eval),
    }
    if bad_train or bad_eval:
        reporter.info(
            f"Unreadable images replaced (--bad_images skip): {len(bad_train)} training rows {bad_train[:10]}, "
            f"{len(bad_eval)} evaluation rows {bad_eval[:10]}."
        )
    return final


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _unsharded_class(model) -> Iterator[None]:
    """Present an FSDP2-sharded model under its own class while it is saved.

    `fully_shard` replaces the model's class by a generated subclass (`FSDPViTAccelForImageClassification`) that
    lives in torch's FSDP module; `save_pretrained` would then copy torch's FSDP source files as the remote code and
    point `auto_map` at them instead of writing modeling_vit_accel.py.
    """
    generated = type(model)
    if not isinstance(model, FSDPModule):
        yield
        return
    model.__class__ = next(cls for cls in generated.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = generated


def full_precision_state_dict(accelerator: Accelerator, model) -> dict:
    """The trained weights, whole (gathered under ZeRO-3 and FSDP) and in the precision they were trained in; on
    the main process (the others may get an empty dict).

    DeepSpeed with bf16 or fp16 trains a 16-bit copy of the module against fp32 master weights held by its
    optimizer: the masters are the trained model, and the 16-bit module (what `get_state_dict` returns) is only their
    rounding. Parameters without a master (frozen ones) keep the module's value, in fp32 like the rest.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.mixed_precision == "no":
        return accelerator.get_state_dict(model)
    # Deferred: DeepSpeed is imported only by DeepSpeed runs (it is an optional dependency and slow to import).
    from deepspeed import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_fp32_param

    if not isinstance(model, DeepSpeedEngine):  # the EMA copy: a plain fp32 module
        return accelerator.get_state_dict(model)

    module = accelerator.unwrap_model(model)
    parameters = dict(module.named_parameters())
    state_dict = {}
    for key, value in module.state_dict().items():
        # A collective under ZeRO (the masters are sharded): each process asks for the same keys in the same order.
        master = safe_get_full_fp32_param(parameters[key]) if key in parameters else None
        if not accelerator.is_main_process:  # only the main process writes: the others need no copy
            continue
        if master is None and value.is_floating_point():
            master = value.float()
        state_dict[key] = (master if master is not None else value).detach().cpu()
    return state_dict


def save_final_model(
    accelerator: Accelerator, model, output_dir: Path, size, normalisation: tuple, record: dict
) -> None:
    """`save_pretrained` from the full state dict (gathered under ZeRO-3 and FSDP), the image processor and
    `training_args.json` (`record`: the command and the arguments); the names written."""
    accelerator.wait_for_everyone()
    state_dict = full_precision_state_dict(accelerator, model)  # a collective: every process must call it
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with _unsharded_class(unwrapped):
            unwrapped.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        saved = str(next(v.dtype for v in state_dict.values() if v.is_floating_point())).removeprefix("torch.")
        if unwrapped.config.dtype != saved:
            # save_pretrained records the module's dtype (DeepSpeed's 16-bit copy), not that of the weights it wrote;
            # from_pretrained's default dtype="auto" would load them in it.
            unwrapped.config.dtype = saved
            unwrapped.config.save_pretrained(output_dir)
        write_image_processor(output_dir, size, *normalisation)
        (output_dir / "training_args.json").write_text(json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()


def save_adapter_outputs(
    accelerator: Accelerator,
    model,
    output_dir: Path,
    args,
    size,
    normalisation: tuple,
    results: dict,
    record: dict,
) -> None:
    """The adapter directory: adapter, `classifier_config.json`, image processor, `training_args.json` (`record`),
    the card (with `results`); `merged/` with `--merge_adapter`. `model` is the peft model as trained (prepared or
    not) or its EMA copy."""
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        save_adapter(model, output_dir, base=getattr(model, "vit_accel_base_identity", None))
        write_image_processor(output_dir, size, *normalisation)
        if args.merge_adapter:
            save_merged(model, output_dir / MERGED_DIR)
            write_image_processor(output_dir / MERGED_DIR, size, *normalisation)
        (output_dir / "training_args.json").write_text(json.dumps(record, indent=2) + "\n")
        trainable, total = count_parameters(model)
        write_adapter_card(output_dir, results, trainable, total, record["command"])
    accelerator.wait_for_everyone()

"""Flags people bring from transformers' Trainer scripts and timm's `train.py`, and typos of ours.

One table: a flag whose meaning is exactly one of ours is accepted as an alias (rewritten before parsing); any other
is refused in one line naming what to use instead. An unknown flag that is neither gets the closest valid flag.
Values are never echoed: a mistyped `--hub_token` must not print the token.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# flag (underscores; hyphens are matched too) -> (our flag, if the meaning is exactly ours | None, what to use).
HABIT_FLAGS: dict[str, tuple[str | None, str]] = {
    # transformers' Trainer (run_image_classification.py and TrainingArguments)
    "--do_train": (None, "train.py trains unless --eval_only is given; drop --do_train"),
    "--do_eval": (
        None,
        "train.py evaluates every --eval_steps and at the end; --eval_only evaluates without training",
    ),
    "--eval_strategy": (None, "use --eval_steps N (every N optimizer steps; default: each epoch's end)"),
    "--evaluation_strategy": (None, "use --eval_steps N (every N optimizer steps; default: each epoch's end)"),
    "--save_strategy": (None, "use --checkpointing_steps N or --checkpointing_steps epoch"),
    "--save_steps": ("--checkpointing_steps", "every N optimizer steps"),
    "--bf16": (None, "the precision comes from accelerate: accelerate launch --mixed_precision bf16 train.py ..."),
    "--fp16": (None, "the precision comes from accelerate: accelerate launch --mixed_precision fp16 train.py ..."),
    "--warmup_ratio": (None, "use --num_warmup_steps N (the warm-up in optimizer steps)"),
    "--warmup_steps": ("--num_warmup_steps", "linear warm-up in optimizer steps"),
    "--max_steps": ("--max_train_steps", "optimizer steps"),
    "--label_smoothing_factor": ("--label_smoothing", "label smoothing of the cross-entropy"),
    "--remove_unused_columns": (
        None,
        "not needed: train.py reads only the image and label columns (--image_column_name, --label_column_name)",
    ),
    "--logging_dir": (None, "logs go to --output_dir (log.jsonl, and trackers chosen with --report_to)"),
    "--run_name": (None, "a run is named by its --output_dir (and --hub_model_id on the Hub)"),
    "--token": (None, "set HF_TOKEN or run `hf auth login` (train.py reads the token from there)"),
    "--cache_dir": (None, "set HF_HOME (or HF_HUB_CACHE, HF_DATASETS_CACHE) for the caches"),
    "--model_revision": (
        None,
        "download that revision (hf download <id> --revision R --local-dir DIR) and pass --model_name_or_path DIR",
    ),
    "--trust_remote_code": (None, "not needed: train.py builds its own ViT and converts the checkpoint itself"),
    # timm's train.py
    "--lr": ("--learning_rate", "the peak learning rate"),
    "--epochs": ("--num_train_epochs", "epochs"),
    "-b": ("--per_device_train_batch_size", "batch size per process"),
    "--batch_size": ("--per_device_train_batch_size", "batch size per process"),
    "--mixup": ("--mixup_alpha", "mixup's Beta(alpha, alpha)"),
    "--cutmix": ("--cutmix_alpha", "CutMix's Beta(alpha, alpha)"),
    "--smoothing": ("--label_smoothing", "label smoothing of the cross-entropy"),
    "--reprob": (None, "use --random_erasing P (erases with the mean colour, not timm's per-pixel noise)"),
    "--drop_path": (None, "use --config_overrides drop_path_rate=0.1"),
    "--model_ema": (None, "use --ema_decay 0.9998 (an EMA with that decay)"),
    "--model_ema_decay": (None, "use --ema_decay D (which turns the EMA on)"),
    "--clip_grad": ("--max_grad_norm", "global-norm gradient clipping"),
    "--img_size": ("--image_size", "the model's input size"),
    "--grad_accum_steps": ("--gradient_accumulation_steps", "micro-batches per optimizer step"),
    "--workers": ("--dataloader_num_workers", "data loader workers per process"),
    "-j": ("--dataloader_num_workers", "data loader workers per process"),
    "--resume": (None, "use --resume_from_checkpoint latest (or a checkpoint-N directory)"),
}


def _key(flag: str) -> str:
    name = flag.split("=", 1)[0]
    return name if not name.startswith("--") else "--" + name[2:].replace("-", "_")


def apply_aliases(argv: list[str]) -> list[str]:
    """`argv` with each habit flag that means exactly one of ours replaced by ours (`--lr 0.1`, `--lr=0.1`)."""
    out = []
    for item in argv:
        entry = HABIT_FLAGS.get(_key(item)) if item.startswith("-") else None
        if entry is not None and entry[0] is not None:
            name, sep, value = item.partition("=")
            item = entry[0] + (sep + value if sep else "")
        out.append(item)
    return out


def unknown_arguments_message(
    remaining: Iterable[str], valid_flags: Iterable[str], program: str = "python train.py", habits: bool = True
) -> str:
    """One line for what the parser did not take: each unknown flag with its replacement (`habits`: train.py's
    table) or its closest valid flag. Only flag names are shown (never values, which may be a token)."""
    valid = sorted({_key(flag) for flag in valid_flags if flag.startswith("--")})
    parts = []
    for item in remaining:
        if not item.startswith("-") or item in ("-", "--"):
            continue
        flag = item.split("=", 1)[0]
        entry = HABIT_FLAGS.get(_key(flag)) if habits else None
        if entry is not None:
            parts.append(f"{flag}: {entry[1]}")
            continue
        close = difflib.get_close_matches(_key(flag), valid, n=1, cutoff=0.75)
        parts.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
    return f"Unknown argument{'s' if len(parts) > 1 else ''}: {'; '.join(parts)} (see `{program} --help`)."

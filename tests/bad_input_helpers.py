"""What every bad-input case uses: train.py's tiny command line, a snapshot of files, the one-line check, and the
`vit-accel` runner."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from factories import TINY

from vit_accel.cli import main as vit_accel


def tiny(data: Path | str, output_dir: Path | str, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "vit-tiny-p16-224", "--from_scratch", "--config_overrides", TINY,
        "--dataset_name", str(data), "--max_train_samples", "96", "--max_eval_samples", "32",
        "--augmentation", "none", "--dataloader_num_workers", "0", "--per_device_train_batch_size", "16",
        "--learning_rate", "1e-3", "--max_train_steps", "4", "--logging_steps", "2", "--checkpointing_steps", "2",
        "--save_total_limit", "5", "--seed", "3", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def snapshot(*roots: Path) -> dict:
    """Every file under `roots` with its size, modification time and content hash (the lock file a run takes on its
    directory aside: it records who holds the directory, not what the run holds)."""
    found = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")) if Path(root).exists() else []:
            if path.is_file() and path.name != ".vit_accel.lock":
                found[str(path)] = (
                    path.stat().st_size,
                    path.stat().st_mtime_ns,
                    hashlib.sha1(path.read_bytes()).hexdigest(),
                )
    return found


def assert_one_line(stderr: str, program: str, *expected: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith(f"{program}: error:")]
    assert len(lines) == 1, stderr[-3000:]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def copy_run(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished / "finished", target)
    return target


def assert_data_refused(extra, expected: list[str], world: Path, tmp_path: Path, run_train) -> None:
    """train.py on the digits with `extra(world)` added stops in one line holding `expected`, writing nothing."""
    argv = tiny(world / "digits", tmp_path / "out", *extra(world))
    if "--train_dir" in argv:  # replaces --dataset_name
        index = argv.index("--dataset_name")
        del argv[index : index + 2]
    code, stderr = run_train(argv)
    assert code == 2
    assert_one_line(stderr, "train.py", *expected)
    assert not snapshot(tmp_path / "out")


def cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = vit_accel(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err

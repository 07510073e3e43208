"""Checks made before the dataset is read and the model built (training/preflight.py)."""

import os
import subprocess
import sys

from factories import ROOT
from launching import tiny_args


def test_an_unwritable_hugging_face_cache_is_named_before_training_and_evaluating(digits, trained_run, tmp_path):
    # Fresh processes: `evaluate` reads these variables when it is imported.
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, so nothing can be created under it (whoever runs the test, root included)")
    cache = str(blocker / "hf")
    out = tmp_path / "run"
    commands = {
        "HF_HOME": [sys.executable, "train.py", *tiny_args(digits, out)],
        "HF_MODULES_CACHE": [sys.executable, "-m", "vit_accel.cli", "evaluate", "--model", str(trained_run),
                             "--dataset_name", str(digits), "--max_eval_samples", "16",
                             "--output_dir", str(tmp_path / "eval")],
    }  # fmt: skip
    for variable, command in commands.items():
        env = {**os.environ, "OMP_NUM_THREADS": "1", variable: cache}
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (variable, result.stderr[-3000:])
        assert f"{variable}={cache}: the Hugging Face cache at {cache} cannot be written" in lines[-1], lines[-1]
        assert "Traceback" not in result.stderr and "step" not in result.stderr.lower(), result.stderr[-3000:]
    assert not (out / "log.jsonl").exists() and not (tmp_path / "eval" / "eval_results.json").exists()

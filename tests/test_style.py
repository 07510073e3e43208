import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# Through this interpreter's ruff (the dev extra's), not whatever `ruff` happens to be first on PATH.
@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is in the dev extra; not installed here")
@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_clean(command):
    result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

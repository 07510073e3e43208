"""The setup that runs transformers' common tests here: fetching and caching their files, the stand-ins, and the rule
that fails a test skipped for ours but passed by the control."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import transformers_common_tests as harness
from transformers import PreTrainedConfig

HERE = Path(__file__).resolve().parent


def test_unreachable_index_skips_with_a_clear_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_ACCEL_TEST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no site configuration: only the index below
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    with pytest.raises(pytest.skip.Exception) as info:
        harness.fetch_common_tests()
    message = str(info.value)
    assert f"transformers {harness.VERSION}'s common tests are not cached in {tmp_path / 'cache'}" in message
    assert "package index could not be reached" in message
    assert not (tmp_path / "cache" / f"transformers-{harness.VERSION}-tests").exists()


def test_cached_files_are_used_without_pip(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_ACCEL_TEST_CACHE", str(tmp_path))
    folder = harness.cache_dir()
    folder.mkdir(parents=True)
    for name in harness.NEEDED:
        (folder / name).write_text("# cached\n")
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("pip ran despite the cache"))
    assert harness.fetch_common_tests() == folder


def test_config_common_kwargs_differ_from_every_default():
    kwargs = harness.common_config_kwargs()
    default = PreTrainedConfig()
    assert {"output_hidden_states", "return_dict", "dtype", "id2label", "problem_type", "output_attentions"} <= set(
        kwargs
    )
    for key, value in kwargs.items():
        if key != "dtype":
            assert value != getattr(default, key), key
    # The config built from them reads them back (what ConfigTester.check_config_arguments_init checks).
    config = PreTrainedConfig(**kwargs)
    assert str(config.dtype) == "torch.float16"
    assert config.problem_type == kwargs["problem_type"] and config.return_dict is kwargs["return_dict"]


RULE_TESTS = """
import unittest


class Control(unittest.TestCase):
    def test_both_pass(self):
        pass

    def test_control_passes(self):
        pass

    def test_both_skip(self):
        self.skipTest("not for a ViT")

    def test_subtests(self):
        for name in ("base", "classifier"):
            with self.subTest(name):
                pass


class Ours(unittest.TestCase):
    control = Control

    def test_both_pass(self):
        pass

    def test_control_passes(self):
        self.skipTest("ours cannot")

    def test_both_skip(self):
        self.skipTest("not for a ViT")

    def test_subtests(self):
        for name in ("base", "classifier"):
            with self.subTest(name):
                if name == "classifier":
                    self.skipTest("our classifier cannot")
"""


def run_rule(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_pair.py").write_text(textwrap.dedent(RULE_TESTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-p", "common_tests_rule", "-p", "no:cacheprovider", "-rfs"]
    return subprocess.run(
        [*command, *args, "test_pair.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_rule_fails_what_ours_skips_and_the_control_passes(tmp_path):
    result = run_rule(tmp_path, "-v")
    out = result.stdout
    assert result.returncode == 1, out
    assert (
        "test_control_passes was skipped for Ours (ours cannot) but passed for its control Control: ours may not "
        "fall short of the control." in out
    )
    # Subtests pair up by position: our classifier's skip against the control's classifier, which passed.
    assert "test_subtests was skipped for Ours (our classifier cannot) but passed for its control Control" in out
    # A skip of both is allowed, and listed in the summary with its reason.
    assert "Ours: 1 skips, each also a skip of its control" in out and "1 x not for a ViT" in out
    assert "2 failed, 5 passed, 2 skipped, 3 subtests passed" in out
    # The control's tests run before ours.
    assert out.index("Control::test_subtests PASSED") < out.index("Ours::test_both_pass PASSED")


def test_rule_runs_a_deselected_control_on_the_spot(tmp_path):
    result = run_rule(tmp_path, "-k", "Ours and (control_passes or both_skip)")
    assert result.returncode == 1, result.stdout
    assert "test_control_passes was skipped for Ours (ours cannot) but passed for its control Control" in result.stdout
    assert "1 failed, 1 skipped" in result.stdout

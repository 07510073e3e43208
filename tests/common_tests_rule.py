"""pytest hooks that hold a test class to its control: nothing may fall short of the control.

A unittest class that names another as its `control` (ours names transformers' ViT test class) has its tests run after
the control's, and a test or subtest skipped for ours but passed by the control is reported as failed, with the
reason. Subtests pair up by position (the common tests loop over the model classes in the same order: base model, then
classifier). When the control's run of a test is not in the session (deselected), it is run on the spot to decide.
The terminal summary lists what was skipped for ours, each also skipped by its control. conftest.py imports these
hooks.
"""

from __future__ import annotations

import unittest
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

# Markers that transformers' common test files put on their tests.
MARKERS = (
    "is_pipeline_test: a transformers pipeline test",
    "accelerate_tests: a transformers test that needs accelerate",
    "flash_attn_test: a transformers test of flash attention 2",
    "flash_attn_3_test: a transformers test of flash attention 3",
    "flash_attn_4_test: a transformers test of flash attention 4",
    "torch_compile_test: a transformers test of torch.compile",
    "order: the order of a test (pytest-order)",
)


@dataclass
class Outcome:
    """A test's own outcome and its subtests' outcomes in the order they ran."""

    test: str | None = None
    subtests: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        # A test whose every subtest was skipped ran nothing, even though unittest calls it passed.
        return self.test == "passed" and (not self.subtests or any(s == "passed" for s in self.subtests))


_items: dict[str, tuple[type, str]] = {}  # nodeid -> (test class, test name), for classes with or acting as controls
_outcomes: dict[tuple[type, str], Outcome] = defaultdict(Outcome)
_skip_reasons: dict[type, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))


def _control_of(cls: type | None) -> type | None:
    return getattr(cls, "control", None) if cls is not None else None


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within each file, a control class's tests run before those of the class it controls."""
    controls = {control for item in items if (control := _control_of(getattr(item, "cls", None))) is not None}
    if not controls:
        return
    for item in items:
        cls = getattr(item, "cls", None)
        if cls in controls or _control_of(cls) is not None:
            _items[item.nodeid] = (cls, item.name)
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        first_seen.setdefault(str(item.path), index)
    items.sort(key=lambda item: (first_seen[str(item.path)], getattr(item, "cls", None) not in controls))


class _RecordingResult(unittest.TestResult):
    def __init__(self, outcome: Outcome):
        super().__init__()
        self.outcome = outcome

    def addSubTest(self, test, subtest, err):  # noqa: N802 (unittest's name)
        super().addSubTest(test, subtest, err)
        self.outcome.subtests.append("passed" if err is None else "failed")

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        if isinstance(test, unittest.case._SubTest):
            self.outcome.subtests.append("skipped")


def _run_on_the_spot(control: type, name: str) -> Outcome:
    outcome = Outcome()
    result = _RecordingResult(outcome)
    case = control(name)
    case.run(result)
    skipped_whole = any(test is case for test, _ in result.skipped)
    outcome.test = "skipped" if skipped_whole else "passed" if result.wasSuccessful() else "failed"
    return outcome


def _reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    return str(report.longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_logreport(report: pytest.TestReport):
    """Wraps every other implementation: the report is judged before pytest counts and prints it."""
    _judge(report)
    return (yield)


def _judge(report: pytest.TestReport) -> None:
    if report.nodeid not in _items or (report.when != "call" and not report.skipped):
        return
    cls, name = _items[report.nodeid]
    is_subtest = hasattr(report, "context")
    outcome = _outcomes[(cls, name)]
    if is_subtest:
        position = len(outcome.subtests)
        outcome.subtests.append(report.outcome)
    else:
        outcome.test = report.outcome
    control = _control_of(cls)
    if control is None or not report.skipped:
        return
    reason = _reason(report)
    if (control, name) not in _outcomes:
        _outcomes[(control, name)] = _run_on_the_spot(control, name)
    theirs = _outcomes[(control, name)]
    if is_subtest and position < len(theirs.subtests):
        control_passed = theirs.subtests[position] == "passed"
    else:
        control_passed = theirs.passed
    if control_passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{name} was skipped for {cls.__name__} ({reason}) but passed for its control {control.__name__}: "
            "ours may not fall short of the control."
        )
    else:
        _skip_reasons[cls][reason].append(name)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for cls, reasons in _skip_reasons.items():
        total = sum(len(names) for names in reasons.values())
        terminalreporter.write_sep("-", f"{cls.__name__}: {total} skips, each also a skip of its control")
        for reason, names in sorted(reasons.items(), key=lambda entry: -len(entry[1])):
            terminalreporter.write_line(f"{len(names):4d} x {reason[:150]}")

"""The CI guard (tests/ci_guard.py): with CI=true, a skip for a missing service fails the run."""

import pytest

from tests.ci_guard import names_missing_service

pytest_plugins = ["pytester"]

SAMPLE = """
import pytest

def test_passes():
    pass

def test_needs_a_service():
    pytest.skip("needs postgres, redis running (see README: Tests)")

def test_needs_a_gpu():
    pytest.skip("CUDA is not available on this machine")
"""


def run(pytester, monkeypatch, ci: str | None, **files):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(**files)
    # The plugin as pytest.ini loads it; Django stays out of these small runs.
    return pytester.runpytest("-p", "tests.ci_guard", "-p", "no:django", "-p", "no:cacheprovider")


def test_in_ci_a_skip_for_a_missing_service_fails_the_run_and_every_skip_is_listed(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", test_sample=SAMPLE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*ci_guard: skipped tests*",
            "MISSING SERVICE *test_sample.py::test_needs_a_service: needs postgres, redis running (see README: Tests)",
            "allowed *test_sample.py::test_needs_a_gpu: CUDA is not available on this machine",
            "ci_guard: 1 test(s) skipped for a missing service with CI=true: the run fails",
        ]
    )


def test_in_ci_other_skips_are_listed_but_allowed(pytester, monkeypatch):
    result = run(
        pytester,
        monkeypatch,
        "TRUE",
        test_sample="""
import pytest

def test_passes():
    pass

@pytest.mark.skipif(True, reason="CUDA-only")
def test_on_a_gpu():
    pass

@pytest.mark.xfail(reason="needs a fix upstream")
def test_known_bug():
    assert False
""",
    )
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(["*ci_guard: skipped tests*", "allowed *test_sample.py::test_on_a_gpu: CUDA-only"])
    result.stdout.no_fnmatch_line("*MISSING SERVICE*")
    result.stdout.no_fnmatch_line("*test_known_bug*needs*")  # an xfail is not a skip


def test_a_skipif_marker_naming_a_missing_service_counts(pytester, monkeypatch):
    result = run(
        pytester,
        monkeypatch,
        "true",
        test_sample="""
import pytest

@pytest.mark.skipif(True, reason="needs rabbitmq running")
def test_queues():
    pass
""",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["MISSING SERVICE *test_sample.py::test_queues: needs rabbitmq running"])


def test_a_module_skipped_for_a_missing_service_counts(pytester, monkeypatch):
    result = run(
        pytester,
        monkeypatch,
        "true",
        test_sample="""
import pytest

pytest.skip("needs redis running", allow_module_level=True)

def test_never_collected():
    pass
""",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["MISSING SERVICE *test_sample.py: needs redis running"])


def test_a_failing_run_keeps_its_own_exit_status(pytester, monkeypatch):
    result = run(
        pytester,
        monkeypatch,
        "true",
        test_sample="""
import pytest

def test_fails():
    assert False

def test_needs_a_service():
    pytest.skip("needs postgres running")
""",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, skipped=1)


@pytest.mark.parametrize("ci", [None, "", "false", "1"])
def test_outside_ci_the_guard_does_nothing(pytester, monkeypatch, ci):
    result = run(pytester, monkeypatch, ci, test_sample=SAMPLE)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.no_fnmatch_line("*ci_guard*")


def test_require_writes_the_reasons_the_guard_recognises(monkeypatch):
    """The contract with tests/conftest.py: require()'s skip reason starts with "needs "."""
    from tests import conftest

    monkeypatch.setattr(conftest, "IN_CI", False)
    monkeypatch.setattr(conftest, "_service_up", lambda name: False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.require("postgres", "redis")
    assert names_missing_service(skipped.value.msg)

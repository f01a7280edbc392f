"""A pytest plugin (pytest.ini: ``-p tests.ci_guard``): in CI, a test skipped for a missing
service fails the run.

With CI=true, ``require()`` (tests/conftest.py) already fails such a test instead of skipping it;
this guard catches any other way one could slip through as a skip. It records every skipped test
(and every skipped module) and, at the end of the session, lists them. If any skip reason names a
missing service (reasons start with "needs ", as ``require`` writes them), the run's exit status
becomes non-zero. Other skips (a CUDA-only test on a machine without a GPU) are listed, allowed.
Outside CI it does nothing.
"""

import os

import pytest

SERVICE_PREFIX = "needs "


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def skip_reason(report) -> str:
    """The reason a skipped test or collector gave, without pytest's "Skipped: " prefix."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ").strip()


def names_missing_service(reason: str) -> bool:
    return reason.startswith(SERVICE_PREFIX)


class CIGuard:
    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []  # (node id, reason)

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is not a skip
            self.skipped.append((report.nodeid, skip_reason(report)))

    def pytest_runtest_logreport(self, report) -> None:
        self._record(report)

    def pytest_collectreport(self, report) -> None:
        self._record(report)  # pytest.skip(allow_module_level=True), importorskip

    @property
    def service_skips(self) -> list[tuple[str, str]]:
        return [(node, reason) for node, reason in self.skipped if names_missing_service(reason)]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.service_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.skipped:
            return
        service = self.service_skips
        terminalreporter.section("ci_guard: skipped tests", sep="=", red=bool(service), yellow=not service)
        for node, reason in self.skipped:
            mark = "MISSING SERVICE" if names_missing_service(reason) else "allowed"
            terminalreporter.line(f"{mark:15} {node}: {reason}")
        if service:
            terminalreporter.line(
                f"ci_guard: {len(service)} test(s) skipped for a missing service with CI=true: the run fails",
                red=True,
                bold=True,
            )


def pytest_configure(config) -> None:
    if in_ci():
        config.pluginmanager.register(CIGuard(), "ci_guard_plugin")

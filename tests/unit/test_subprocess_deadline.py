"""The tests' own waits on subprocesses (tests/fixtures/processes.py) end before pytest-timeout
would end the test, and a command still running then fails the test with its own output."""

from __future__ import annotations

import sys
import time

import pytest

from tests.fixtures import processes


def test_the_clock_runs_from_the_pytest_timeout(request):
    timeout = request.config.getoption("timeout")
    timeout = float(request.config.getini("timeout")) if timeout is None else timeout
    if not timeout:
        pytest.skip("pytest-timeout is off")
    assert timeout - processes.MARGIN_S - 10 < processes.time_left() <= timeout - processes.MARGIN_S


def test_a_hung_command_fails_the_test_with_its_output_before_the_pytest_timeout(monkeypatch):
    monkeypatch.setattr(processes, "_deadline", time.monotonic() + processes.MARGIN_S + 1)
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"(?s)timed out after 1.* seconds.*still working"):
        processes.run([sys.executable, "-c", "import time; print('still working', flush=True); time.sleep(60)"])
    assert time.monotonic() - start < 10

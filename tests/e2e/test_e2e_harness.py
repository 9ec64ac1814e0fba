"""The e2e harness itself: a wait that cannot end fails at once, with the stack's state.

- Both schedulers frozen (SIGSTOP) while a run is queued: the wait fails with "made no progress"
  after the stall time, long before its timeout, and shows the queued run and the component logs.
- A component that dies without the test declaring it: the next wait fails at once, naming it.
- pytest-timeout's guard counts a test's call only (the session stack starts inside the first test's
  setup), and leaves room for the test's own waits, which fail with the stack's state.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from e2e_rest import (
    E2E_CALL_TIMEOUT_S,
    IN_PROGRESS_TI_STATES,
    RUN_TIMEOUT,
    Api,
    Progress,
    Stack,
    StackStalled,
)

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "apr_test_failing_scoring"


def _quiet(api: Api) -> None:
    """Waits until no task instance is scheduled, queued or running: nothing else makes progress while
    the schedulers are frozen (a deferred or rescheduled one sleeps until a scheduler moves it)."""
    moving = ("scheduled", "queued", *IN_PROGRESS_TI_STATES)
    api.wait_for(
        lambda: not [ti for ti in Progress(api).snapshot()[1] if ti["state"] in moving],
        "no task instance in flight",
        timeout=240,
    )


def test_wait_fails_fast_when_no_scheduler_makes_progress(stack: Stack, api: Api) -> None:
    _quiet(api)
    schedulers = [stack.processes[name] for name in ("scheduler", "scheduler-2")]
    for process in schedulers:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        response = api.trigger(DAG_ID)
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        started = time.monotonic()
        with pytest.raises(StackStalled) as stalled:
            api.wait_for(
                lambda: None,
                "a run that cannot start",
                timeout=120,
                progress=Progress(api, stall_seconds=6, interval=1),
            )
        waited = time.monotonic() - started
    finally:
        for process in schedulers:
            os.kill(process.pid, signal.SIGCONT)
    message = str(stalled.value)
    assert waited < 30, f"the stall was reported after {waited:.0f} s"
    assert "the scheduler made no progress" in message
    assert f"run {DAG_ID}/{run_id} queued" in message
    assert "--- scheduler-2 (pid" in message and "--- postgres (" in message, "component states and log tails"
    assert api.wait_run(DAG_ID, run_id)["state"] == "failed", "the run goes on once the schedulers do"


def test_wait_fails_at_once_when_a_component_dies(stack: Stack, api: Api) -> None:
    known = len(stack.unexpected_restarts)
    os.kill(stack.processes["dag-processor"].pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(StackStalled) as died:
        api.wait_for(lambda: None, "something that never comes", timeout=120)
    assert time.monotonic() - started < 10
    assert "died without the test causing it" in str(died.value)
    assert "dag-processor exited with -9" in str(died.value)
    # The supervisor restarts it, and records the restart as unexpected: it would fail this test.
    deadline = time.monotonic() + 30
    while len(stack.unexpected_restarts) == known:
        assert time.monotonic() < deadline, "the dag-processor was not restarted"
        time.sleep(0.5)
    assert stack.unexpected_restarts[-1].startswith("dag-processor exited with -9 and was restarted")
    stack.acknowledged_restarts = len(stack.unexpected_restarts)  # caused by this test, on purpose
    api.wait_for(stack.is_healthy, "a healthy stack", timeout=120)


def test_the_timeout_guard_counts_the_call_only(request: pytest.FixtureRequest) -> None:
    mark = request.node.get_closest_marker("timeout")
    assert mark is not None and mark.kwargs.get("func_only") is True, mark
    assert mark.args[0] == E2E_CALL_TIMEOUT_S >= 3 * RUN_TIMEOUT

"""The stack's process tags: a restart in one stack never kills another stack's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from e2e_rest import REPO

sys.path.insert(0, str(REPO / "tools"))
from airflow_stack import COMPONENT_ENV, component_tag  # noqa: E402
from stack_watchdog import kill_all  # noqa: E402


def test_a_restart_in_one_stack_spares_the_same_component_of_another() -> None:
    """Two stacks on one host both have a `triggerer#1`; the supervisor of one kills by its own tag only
    (the e2e session's triggerer was once SIGKILLed by the restart of a `make airflow` stack a test ran)."""
    mine, other = component_tag("aaaa", "triggerer", 1), component_tag("bbbb", "triggerer", 1)
    assert mine != other
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, COMPONENT_ENV: other}
    )
    try:
        time.sleep(0.5)  # its environment is readable once it runs
        assert kill_all([], [(COMPONENT_ENV, mine)], rounds=1) == 0
        assert sleeper.poll() is None, "the other stack's triggerer was killed"
        assert kill_all([], [(COMPONENT_ENV, other)], rounds=1) == 1
        assert sleeper.wait(timeout=10) == -9
    finally:
        if sleeper.poll() is None:
            sleeper.kill()

"""The CLI's signal relay (airflow_parallel_run/cli_signals.py): SIGINT/SIGTERM are taken by one thread at
once, whatever the main thread is doing, and a swallowed interruption is raised again.

Each case runs in a child process of its own (signal masks and handlers are per process), which prints
what happened; the test sends the signals from outside, as a terminal or Airflow does."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

PROLOGUE = """
import sys, threading, time
from airflow_parallel_run import cli_signals
from airflow_parallel_run.cli_signals import Interrupted, SignalRelay
"""


def _start(code: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROLOGUE + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def test_a_signal_ends_a_main_thread_that_waits_in_c_while_other_threads_run_python() -> None:
    """The main thread in a long C-level wait (Dask's sync() waits 10 s at a time), other threads busy in
    Python code (an event loop): the interruption reaches the main thread at once, every time."""
    proc = _start(
        """
        def busy():
            while True:
                sum(range(1000))
        relay = SignalRelay(lambda signum: relay.interrupt_main(signum))
        with relay:
            for _ in range(3):  # started inside, as the CLI's threads are (the Dask client's event loop)
                threading.Thread(target=busy, daemon=True).start()
            started = time.monotonic()
            try:
                print("ready", flush=True)
                threading.Event().wait(60)
            except Interrupted as exc:
                relay.caught_it()
                print(exc.signum, round(time.monotonic() - started, 3), flush=True)
        """
    )
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    signum, _waited = out.split()
    assert int(signum) == signal.SIGINT
    assert time.monotonic() - sent < 5, "the interruption waited for the main thread's wait to end"


def test_the_cli_starts_no_thread_before_its_signal_relay() -> None:
    """A thread started before the relay has SIGINT/SIGTERM unblocked and can take one the relay never
    sees (then the main thread acts on it only when it next runs Python code, or never): importing the CLI
    starts none, Python's or a native library's (OpenBLAS starts one when numpy is imported)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, airflow_parallel_run.cli; print(len(os.listdir('/proc/self/task')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "1", done.stderr


def test_an_interruption_swallowed_on_its_way_is_raised_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library's broad `except` that swallows the interruption does not make the CLI ignore the signal."""
    proc = _start(
        """
        cli_signals.RERAISE_AFTER_S = 0.5
        relay = SignalRelay(lambda signum: relay.interrupt_main(signum))
        raised = 0
        with relay:
            try:
                try:
                    print("ready", flush=True)  # inside both: the signal may come at once
                    threading.Event().wait(60)
                except BaseException:  # swallowed, as by a library's cleanup
                    raised += 1
                threading.Event().wait(60)
            except Interrupted as exc:
                relay.caught_it()
                print(raised + 1, exc.signum, flush=True)
        """
    )
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.split() == ["2", str(int(signal.SIGTERM))]


def test_a_running_job_is_cancelled_by_the_first_signal_in_the_relay_thread() -> None:
    """`act` runs in the relay thread, one signal at a time: the main thread goes on (a running job's
    first signal only cancels it, through flags)."""
    proc = _start(
        """
        seen = []
        relay = SignalRelay(lambda signum: seen.append((signum, threading.current_thread().name)))
        with relay:
            print("ready", flush=True)
            deadline = time.monotonic() + 20
            while len(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        print(seen, flush=True)
        """
    )
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == str(
        [(int(signal.SIGINT), "apr-cli-signals"), (int(signal.SIGTERM), "apr-cli-signals")]
    )

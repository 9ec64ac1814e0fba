"""SIGINT and SIGTERM for the CLI: taken by one thread (sigwait) and acted on at once, whatever the main
thread is doing.

Why not a plain Python signal handler: CPython runs handlers in the main thread only, when it next looks for
them. A signal the kernel gives another thread (the Dask client's event-loop thread, the output lock's
heartbeat) only leaves the main thread a reminder, and a main thread that waits in a C call (a lock; Dask's
`sync()` waits 10 s at a time) does not look; in CPython 3.11 another thread running Python code can even
clear the reminder. A Ctrl-C while the CLI connected to an unreachable scheduler was acted on 10 s later,
or never (the CLI ended 30 s later with the connection error).

So the signals are blocked in every thread of the CLI (a thread inherits its creator's mask: blocked in the
main thread first, they are blocked in every thread started after) and one thread waits for them
(POSIX's sigwait pattern): each is taken once, at once. What it does with one is the caller's `act`; to
end the main thread's work, `interrupt_main` pokes the main thread with `POKE` (a signal sent to that thread
only, which interrupts its wait) until the main thread has raised `Interrupted`, and again should that
one be swallowed on its way to the CLI's top.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

STOPS = (signal.SIGINT, signal.SIGTERM)
POKE = signal.SIGUSR1  # sent by the relay to the main thread only
POKE_EVERY_S = 0.05
WAIT_S = 0.2  # how soon the relay thread sees that the CLI is done
# An Interrupted that has not reached the CLI's top this long after it was raised was swallowed on its way
# (a library's broad `except`): raised again. Longer than a running job's bounded stop (core/driver/stopping.py)
# that the second signal's Interrupted goes through on its way.
RERAISE_AFTER_S = 10.0


class Interrupted(BaseException):
    """SIGINT/SIGTERM, raised in the main thread. A BaseException, so no `except Exception` in the engine
    (or in Dask) swallows it on its way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalRelay:
    """While entered: SIGINT and SIGTERM go to `act(signum)` in the relay thread, one at a time, in order."""

    def __init__(self, act: Callable[[int], None]) -> None:
        self.act = act
        self.closed = threading.Event()
        self.pending: int | None = None  # the signal the main thread is to raise as Interrupted
        self.raised_at: float | None = None  # when the main thread last raised it
        self.caught = False  # it reached the CLI's top (`caught_it`)
        self.main = threading.get_ident()
        self._thread: threading.Thread | None = None
        self._previous_mask: set[int | signal.Signals] | None = None
        self._previous_poke: object = None

    def __enter__(self) -> SignalRelay:
        self.main = threading.get_ident()
        self._previous_poke = signal.signal(POKE, self._poked)
        # From here every new thread has SIGINT/SIGTERM blocked; one already pending is taken by the relay.
        self._previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        self._thread = threading.Thread(target=self._relay, name="apr-cli-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.closed.set()
        if self._thread is not None:
            self._thread.join(WAIT_S * 5)
        if self._previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._previous_mask)
        signal.signal(POKE, self._previous_poke)  # type: ignore[arg-type]

    def _relay(self) -> None:
        while not self.closed.is_set():
            taken = signal.sigtimedwait(STOPS, WAIT_S)
            if taken is None:
                continue
            if self.closed.is_set():  # the CLI is done: the signal goes back to the process as it was
                os.kill(os.getpid(), taken.si_signo)
                return
            self.act(taken.si_signo)

    def interrupt_main(self, signum: int) -> None:
        """From the relay thread: the main thread raises `Interrupted(signum)` (the first such signal's)
        within `POKE_EVERY_S` of running Python code, and at once when it waits; again when it has not
        reached the CLI's top `RERAISE_AFTER_S` later. Returns when it has."""
        if self.pending is None:
            self.pending = signum
        while not self.caught and not self.closed.is_set():
            if self.raised_at is None or time.monotonic() - self.raised_at > RERAISE_AFTER_S:
                signal.pthread_kill(self.main, POKE)
            time.sleep(POKE_EVERY_S)

    def caught_it(self) -> None:
        """The CLI's top caught the Interrupted: no more pokes."""
        self.caught = True

    def _poked(self, _signum: int, _frame: FrameType | None) -> None:
        if self.pending is None or self.caught:
            return
        if self.raised_at is not None and time.monotonic() - self.raised_at <= RERAISE_AFTER_S:
            return  # on its way up (a stop that unwinds): not raised again meanwhile
        self.raised_at = time.monotonic()
        raise Interrupted(self.pending)

"""`PlanFeed`: a job's plan as it is listed. A thread lists the inputs (`iter_plan`, which cuts mini-batches
while a folder is still walked), fingerprints and keys them a block at a time (`Reuse.add`), looks each one
up in the reuse cache, and hands them to the driver loop in plan order through a queue; the loop submits
the misses while the listing goes on (core/driver/loop.py).

Why a thread: the listing, the fingerprints (a stat per file and a memo query per block) and the cache's
look-ups are the driver's slow start (about 8 s for 1,000,000 files); in a thread they overlap the
cluster's start and the first attempts, and the loop never waits on them for longer than a turn.

Blocks grow from 1 mini-batch to `BLOCK_MAX`: the first mini-batch is handed over as soon as it is
listed, later ones are fingerprinted many files per call (one memo query per block, not one per file).

What the loop gets (`take`): `Planned` entries in plan order, then one `END`, or the exception the listing
(or a fingerprint) raised, in place of the rest. They cross the queue a block at a time: handed over one
by one, the loop woke for each mini-batch and took the GIL from the listing's thread each time (a fully
reused re-run of 1,000 mini-batches is all hand-offs: see docs/performance.md, "Reuse"). `stop()` makes the thread end at the next block; a
thread held in a slow listing call (an unreachable store) is not waited for: it is a daemon and hands
nothing over once stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..attempt import AttemptResult
from ..inputs.fingerprint import LISTED_STATS, Fingerprinter
from ..minibatch import MiniBatch
from ..reuse.cache import memo_path
from ..reuse.reuse import Reuse

BLOCK_MAX = 64  # mini-batches fingerprinted and keyed per call, once the first ones are out


@dataclass(frozen=True)
class Planned:
    """A mini-batch as planned: its cache hit (None: a miss or reuse off), the hit's metadata when it
    holds output_dir files, and the warning for a damaged entry."""

    mini_batch: MiniBatch
    hit: AttemptResult | None = None
    files_meta: dict[str, Any] | None = None
    damaged: str | None = None


class _End:
    """The listing ended: every mini-batch was handed over."""


END = _End()
Fed = Planned | _End | Exception


def first_file(batches: Iterator[MiniBatch]) -> tuple[list[MiniBatch], Iterator[MiniBatch]]:
    """The plan's mini-batches up to its first file's last slice, and the whole plan, those first. A csv or
    jsonl input's column types come from its first file's first slices (`with_read_types`), and they enter
    every key, so a streaming job of one such input plans that file before the listing's thread starts:
    the types are those the whole plan would decide, and a refusal of that file comes before the claim."""
    taken: list[MiniBatch] = []
    for mb in batches:
        if taken and mb.slices and taken[0].slices and mb.slices[0].url != taken[0].slices[0].url:
            return taken, itertools.chain(taken, (mb,), batches)
        taken.append(mb)
    return taken, iter(taken)


class PlanFeed:
    """The mini-batches of a listing as they come, keyed and looked up (see the module)."""

    def __init__(self, batches: Iterator[MiniBatch], reuse: Reuse, *, look_up: bool, job_id: str) -> None:
        self._batches = batches
        self._reuse = reuse
        self._look_up = look_up
        self._queue: queue.SimpleQueue[list[Fed]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._head: list[Fed] = []  # what `first` took from the queue and `take` has not handed out
        self.ended = False  # END or an error was handed out
        self._thread = threading.Thread(target=self._run, name=f"apr-plan-{job_id}", daemon=True)
        self._thread.start()

    # -- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with (  # each block is fingerprinted right after it is listed: with the listing's stats
                LISTED_STATS.kept(),
                Fingerprinter(memo_path(self._reuse.cache.root), self._reuse.cache.storage_options) as memo,
            ):
                size = 1
                while not self._stop.is_set():
                    block = self._block(size)
                    if not block or self._stop.is_set():
                        break
                    self._reuse.add(block, memo)
                    planned: list[Fed] = []
                    for mb in block:
                        if self._stop.is_set():
                            return
                        planned.append(self._planned(mb))
                    self._queue.put(planned)
                    size = min(size * 2, BLOCK_MAX)
        except Exception as exc:  # noqa: BLE001 - the loop fails the job with it (an InputError says why)
            self._queue.put([exc])
            return
        finally:
            close = getattr(self._batches, "close", None)
            if callable(close):  # a generator stopped early: its scandir handles are closed now
                with contextlib.suppress(Exception):  # closing after an error: the error is what counts
                    close()
        if not self._stop.is_set():
            self._queue.put([END])

    def _block(self, size: int) -> list[MiniBatch]:
        block: list[MiniBatch] = []
        for mb in self._batches:
            block.append(mb)
            if len(block) >= size:
                break
        return block

    def _planned(self, mb: MiniBatch) -> Planned:
        if not self._look_up:
            return Planned(mb)
        hit, meta, damaged = self._reuse.look_up(mb)
        return Planned(mb, hit, meta, damaged)

    # -- the loop's side -----------------------------------------------------------------------------
    def first(self) -> Fed:
        """The first thing the listing hands over (waits for it), left for `take` to hand out."""
        while not self._head:  # in short waits: a signal's handler (the CLI's) gets its turn meanwhile
            try:
                self._head.extend(self._queue.get(timeout=0.2))
            except queue.Empty:
                continue
        return self._head[0]

    def take(self, wait: float) -> list[Fed]:
        """What was handed over since the last call, in order (waiting up to `wait` s for something when
        nothing is there); empty once the listing ended."""
        if self.ended:
            return []
        items = self._head
        self._head = []
        if not items and wait > 0:
            try:
                items.extend(self._queue.get(timeout=wait))
            except queue.Empty:
                return []
        while True:
            try:
                items.extend(self._queue.get_nowait())
            except queue.Empty:
                break
        for position, item in enumerate(items):
            if not isinstance(item, Planned):
                self.ended = True
                return items[: position + 1]
        return items

    def stop(self) -> None:
        """The job ends (stopped, failed or done): the thread lists no further."""
        self._stop.set()
        self.ended = True

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

"""I/O-bound scoring: an `async def run()` through the engine vs a bare asyncio client, and vs sync run().

A local HTTP "model endpoint" (bench/scoring_server.py in a process of its own: 127.0.0.1, a free port,
each answer after 100 ms) scores one item per request. The input is a folder of 2,000 one-byte files (--quick: 160),
`mini_batch_size=10`, and every item is one request. Three sides, interleaved round by round:

- `engine_async`: `run_job(client=...)` with `async def run(mini_batch)` as docs/io-bound-scoring.md
  recommends: `asyncio.gather` over the mini-batch's items under one semaphore per process of 16
  requests, `process_count_per_node=2`, `max_concurrency_per_process=16`: at most 32 requests in flight
  at once, as the bare client (the endpoint's peak count is checked to be at most 32). Up to 16
  mini-batches per process are in flight, so a process always has requests queued behind its bound and
  the job has no partly filled last wave of whole mini-batches. The LocalCluster has 2 workers x 16
  threads (each attempt holds a worker thread while its process runs it).
- `engine_async_sequential` (context, no target): the same job with a `run()` that awaits its items one
  after another: 32 mini-batches, so 32 requests, in flight; 200 mini-batches of about 1.07 s on 32
  slots end in a last wave of 8, which caps it near 0.84x of the bare client whatever the engine does.
- `bare_asyncio`: the same requests from one asyncio loop in this process, 32 at a time (a semaphore),
  with the same client code (`scoring_server.score`): the ceiling of 32 requests in flight.
- `engine_sync`: the same job with a synchronous `run()` (urllib, one request at a time) on 2
  processes (2 workers x 1 thread), over the first fifth of the items (it is 16 x slower; the ratio
  compares items per second).

Each engine run gets a fresh output and cache folder (`allow_reuse=False`). After each engine run the
server's request count is checked against the attempts: every item of every successful attempt was
called exactly once per attempt (a run with failed attempts is refused: its count proves nothing).

Reported: engine_async / bare_asyncio throughput (target >= 0.8x) and engine_async / engine_sync
throughput (target >= 10x).

--compare-with DIR also measures the async job on the engine of another checkout (e.g. a git worktree of
`main`), interleaved in the same rounds against the same endpoint and files: that engine runs in a child
process with its own LocalCluster of the same shape, and its requests are checked as this one's.
Reported then: this engine / that engine (seconds of the async job) and each one's ratio to the bare client.

Usage: .venv/bin/python bench/io_bound_bench.py [--quick] [--items 2000] [--repeats 3] [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib
from benchlib import BENCH_DIR, Ratio
from scoring_server import ScoringServerProcess, score

PROCESSES = 2
CONCURRENCY = 16  # per process
DELAY_S = 0.1
MINI_BATCH = 10
SYNC_SHARE = 5  # engine_sync runs 1/SYNC_SHARE of the items

# scoring_server.py is shipped beside the script in its source_directory (code the cache key holds)
ASYNC_SCRIPT = """
import os
from scoring_server import score

ADDRESS = os.environ["SCORING_ADDRESS"]

async def run(mini_batch):
    return [await score(ADDRESS, os.path.basename(path)) for path in mini_batch]
"""

# the recipe of docs/io-bound-scoring.md: the items of a mini-batch at once, bounded per process (the
# semaphore is made on the process's event loop by init(), which runs on it)
GATHER_SCRIPT = """
import asyncio, os
from scoring_server import score

ADDRESS = os.environ["SCORING_ADDRESS"]
gate = None

async def init():
    global gate
    gate = asyncio.Semaphore(int(os.environ["SCORING_PER_PROCESS"]))

async def _one(path):
    async with gate:
        return await score(ADDRESS, os.path.basename(path))

async def run(mini_batch):
    return list(await asyncio.gather(*(_one(path) for path in mini_batch)))
"""

SYNC_SCRIPT = """
import os, urllib.request
from urllib.parse import quote

ADDRESS = os.environ["SCORING_ADDRESS"]

def run(mini_batch):
    out = []
    for path in mini_batch:
        url = f"http://{ADDRESS}/score?item={quote(os.path.basename(path))}"
        with urllib.request.urlopen(url, timeout=60) as answer:
            out.append(answer.read().decode("utf-8"))
    return out
"""


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=None, help="default 2000 (--quick: 160)")
    benchlib.add_compare_arguments(parser)


def _checked_calls(server: ScoringServerProcess, summary: dict[str, Any], items: list[str]) -> None:
    """Every attempt succeeded, and the server saw each item once: once per successful attempt."""
    assert summary["status"] == "succeeded", summary
    report = Path(summary["logs_dir"]) / "sys" / "job_report" / "processed_mini-batches.csv"
    with open(report, newline="") as handle:
        statuses = Counter(row["Status"] for row in csv.DictReader(handle))
    assert statuses == Counter({"RUN_DONE": len(items) // MINI_BATCH + bool(len(items) % MINI_BATCH)}), (
        f"attempts other than one success per mini-batch: {dict(statuses)}"
    )
    assert server.calls == Counter(items), "the server was not called exactly once per item"


class _Job:
    """One engine side: its entry script, config and cluster; `run()` times one job on fresh folders."""

    def __init__(
        self,
        root: Path,
        name: str,
        script: str,
        data: Path,
        items: list[str],
        server: ScoringServerProcess,
        **config: Any,
    ) -> None:
        from airflow_parallel_run.core import ParallelRunConfig

        code = root / f"code-{name}"
        code.mkdir(exist_ok=True)
        (code / f"{name}.py").write_text(script)
        shutil.copy(BENCH_DIR / "scoring_server.py", code / "scoring_server.py")
        env = {"SCORING_ADDRESS": server.address, "SCORING_PER_PROCESS": str(CONCURRENCY)}
        self.config = ParallelRunConfig(
            entry_script=f"{name}.py",
            source_directory=str(code),
            mini_batch_size=MINI_BATCH,
            environment_variables=env,
            **config,
        )
        self.root, self.name, self.data, self.items, self.server = root, name, data, items, server
        self.client: Any = None
        self.runs = 0
        self.peaks: list[int] = []  # requests the server held at once, per run

    def run(self) -> float:
        from airflow_parallel_run.core import FileDataset, run_job

        self.runs += 1
        self.server.reset()
        t0 = time.perf_counter()
        summary = run_job(
            self.config,
            [FileDataset.from_files(str(self.data))],
            str(self.root / f"out-{self.name}-{self.runs}"),
            client=self.client,
            cache_dir=str(self.root / f"cache-{self.name}-{self.runs}"),
            allow_reuse=False,
        )
        seconds = time.perf_counter() - t0
        _checked_calls(self.server, summary, self.items)
        self.peaks.append(self.server.peak)
        return seconds


async def _bare(address: str, items: list[str], concurrency: int) -> list[str]:
    gate = asyncio.Semaphore(concurrency)

    async def one(item: str) -> str:
        async with gate:
            return await score(address, item)

    return await asyncio.gather(*(one(item) for item in items))


def _serve(args: argparse.Namespace) -> None:
    """The --compare-with child: this checkout's engine runs the async job on the parent's files and
    endpoint (see benchlib.serve)."""
    request = json.loads(args.serve)
    server = ScoringServerProcess.attach(request["address"])
    with (
        benchlib.workdir(args, "io-bound-other") as root,
        benchlib.local_cluster(PROCESSES, threads=CONCURRENCY) as client,
    ):
        job = _Job(
            root,
            "async",
            GATHER_SCRIPT,
            Path(request["data"]),
            list(request["items"]),
            server,
            process_count_per_node=PROCESSES,
            max_concurrency_per_process=CONCURRENCY,
        )
        job.client = client

        def run(_case: str) -> tuple[float, float]:
            return job.run(), 0.0

        benchlib.serve(run)


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.serve is not None:
        _serve(args)
        return
    started = benchlib.start(args)
    environ = dict(os.environ)  # before any LocalCluster adds its worker settings (see OtherEngine)
    count = args.items or (160 if args.quick else 2000)
    rounds = benchlib.repeats(args, full=3, quick=1)
    sync_count = max(MINI_BATCH, count // SYNC_SHARE)

    with benchlib.workdir(args, "io-bound") as root, ScoringServerProcess(delay=DELAY_S) as server:
        paths = benchlib.make_empty_files(root / "in", count, content=b"x")
        items = [os.path.basename(p) for p in paths]
        sync_dir = root / "in-sync"
        sync_dir.mkdir()
        for path in paths[:sync_count]:
            os.link(path, sync_dir / os.path.basename(path))
        async_job = _Job(
            root,
            "async",
            GATHER_SCRIPT,
            root / "in",
            items,
            server,
            process_count_per_node=PROCESSES,
            max_concurrency_per_process=CONCURRENCY,
        )
        sequential_job = _Job(
            root,
            "sequential",
            ASYNC_SCRIPT,
            root / "in",
            items,
            server,
            process_count_per_node=PROCESSES,
            max_concurrency_per_process=CONCURRENCY,
        )
        sync_job = _Job(
            root, "sync", SYNC_SCRIPT, sync_dir, items[:sync_count], server, process_count_per_node=PROCESSES
        )

        bare_peaks: list[int] = []

        def bare() -> float:
            server.reset()
            t0 = time.perf_counter()
            answers = asyncio.run(_bare(server.address, items, PROCESSES * CONCURRENCY))
            seconds = time.perf_counter() - t0
            assert len(answers) == count and server.calls == Counter(items)
            bare_peaks.append(server.peak)
            return seconds

        other: benchlib.OtherEngine | None = None
        with (
            benchlib.local_cluster(PROCESSES, threads=CONCURRENCY) as async_client,
            benchlib.local_cluster(PROCESSES) as sync_client,
        ):
            async_job.client, sync_job.client = async_client, sync_client
            sequential_job.client = async_client
            cases: dict[str, Callable[[], float]] = {}
            try:
                if args.compare_with is not None:
                    other = benchlib.OtherEngine(
                        args.compare_with,
                        __file__,
                        {"data": str(root / "in"), "items": items, "address": server.address},
                        args,
                        environ,
                    )
                    benchlib.log(f"compared with the engine imported from {other.engine_path}")
                    cases["other_engine_async"] = lambda: other.run("async") if other is not None else 0.0
                cases.update(
                    {
                        "engine_async": async_job.run,
                        "bare_asyncio": bare,
                        "engine_async_sequential": sequential_job.run,
                        "engine_sync": sync_job.run,
                    }
                )
                samples = benchlib.alternating(cases, rounds, [("other_engine_async", "engine_async")])
            finally:
                if other is not None:
                    other.close()
        peaks = {
            "engine_async": async_job.peaks,
            "bare_asyncio": bare_peaks,
            "engine_async_sequential": sequential_job.peaks,
            "engine_sync": sync_job.peaks,
        }
    # the recipe's bound holds: never more requests in flight than the bare client's
    assert max(peaks["engine_async"]) <= PROCESSES * CONCURRENCY, peaks["engine_async"]

    med = benchlib.medians(samples)
    throughput = {
        "engine_async": count / med["engine_async"],
        "bare_asyncio": count / med["bare_asyncio"],
        "engine_async_sequential": count / med["engine_async_sequential"],
        "engine_sync": sync_count / med["engine_sync"],
    }
    spread = {name: [round(min(v), 3), round(max(v), 3)] for name, v in samples.items()}
    ratios = [
        Ratio(
            "async engine / bare asyncio client",
            throughput["engine_async"] / throughput["bare_asyncio"],
            0.8,
            ">=",
            f"items/s: {count} items (100 ms each) in mini-batches of {MINI_BATCH}, async run() gathering its "
            f"items under {CONCURRENCY} requests per process on {PROCESSES} processes "
            f"(max_concurrency_per_process={CONCURRENCY}) vs one asyncio loop with {PROCESSES * CONCURRENCY} "
            "requests in flight",
        ),
        Ratio(
            "async engine, items one after another / bare asyncio client",
            throughput["engine_async_sequential"] / throughput["bare_asyncio"],
            None,
            ">=",
            f"context: run() awaits its {MINI_BATCH} items one by one, {CONCURRENCY} mini-batches per process "
            "in flight; whole mini-batches end in a partly filled last wave",
        ),
        Ratio(
            "async engine / sync engine",
            throughput["engine_async"] / throughput["engine_sync"],
            10.0,
            ">=",
            f"items/s: async run() (max_concurrency_per_process={CONCURRENCY}) vs sync run() on "
            f"{sync_count} of the items, both on {PROCESSES} processes",
        ),
    ]
    if "other_engine_async" in med:
        ratios += [
            Ratio(
                "async engine / compared engine (seconds)",
                med["engine_async"] / med["other_engine_async"],
                None,
                "<=",
                f"the async job on this checkout vs on the engine of {other.engine_path if other else '?'}, "
                "same rounds, endpoint and files",
            ),
            Ratio(
                "compared engine / bare asyncio client",
                med["bare_asyncio"] / med["other_engine_async"],
                0.8,
                ">=",
                "items/s, as the first figure, for the compared engine",
            ),
        ]
        spread["per_round_engine_over_compared"] = [
            round(a / b, 3)
            for a, b in zip(samples["engine_async"], samples["other_engine_async"], strict=True)
        ]
    benchlib.write_result(
        args,
        "io_bound",
        started=started,
        params={
            "items": count,
            "sync_items": sync_count,
            "delay_s": DELAY_S,
            "mini_batch_size": MINI_BATCH,
            "processes": PROCESSES,
            "max_concurrency_per_process": CONCURRENCY,
            "rounds": rounds,
            "compare_with": str(args.compare_with) if args.compare_with else None,
        },
        ratios=ratios,
        samples=samples,
        extra={
            "items_per_second": {k: round(v, 1) for k, v in throughput.items()},
            "min_max_s": spread,
            "server_peak_in_flight": {k: max(v) for k, v in peaks.items() if v},
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
    )


if __name__ == "__main__":
    main()

"""Per-mini-batch overhead: no-op mini-batches through this engine vs `Client.map` of the same no-op.

Both sides use one Dask LocalCluster (2 worker processes x 1 thread, 127.0.0.1), created once and
passed to `run_job(client=...)`. The input is a folder of 1-byte files, `mini_batch_size=1`, so
every file is one mini-batch; `run()` returns its input (`return list(mini_batch)`), the Dask peer
maps the same function over the same one-file lists and gathers the results. Each engine run gets a
fresh output folder and cache folder with `allow_reuse=False`, so nothing is reused. Samples are
interleaved (engine, dask, engine, dask, ...) and compared by their medians.

Reported: engine time / raw Dask time (target <= 1.25x), and engine seconds per mini-batch (wall
time x processes / mini-batches, i.e. process-seconds spent per mini-batch) against the ~0.05 s per
mini-batch quoted for Azure ParallelRunStep.

Also reported (this engine, every run): the per-mini-batch orchestration latency p50/p99, from the
driver's submit to the node log's "picked" line, and from the node log's "completed" line to the
driver booking the result (`orchestration_latency_ms`), and each side's min/max (`engine_spread`).

Diagnostic third side ("engine_tasks"): the engine's own worker task (`worker.attempt.run_mini_batch`, an
entry-script process per worker thread, its job's worker plugin registered once) mapped over the same plan
with `Client.map`, everything in
flight at once and no driver loop. engine / engine_tasks isolates the driver's share of the gap,
engine_tasks / dask the worker path's share. It uses engine internals; if they changed, the
diagnostic is skipped and the headline ratios still stand.

--compare-with DIR also measures the engine of another checkout on the same files, in the same rounds
(its `run_job` in a child process with PYTHONPATH=DIR and its own 2-process LocalCluster, idle while the
other sides run; the two engines trade places every other round): `git worktree add /tmp/before <commit>`
then `.venv/bin/python bench/overhead_bench.py --compare-with /tmp/before`.

Usage: .venv/bin/python bench/overhead_bench.py [--quick] [--mini-batches 2000] [--repeats 3]
                                                [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import benchlib
from benchlib import Ratio

AZURE_SECONDS_PER_MINI_BATCH = 0.05
PROCESSES = 2
SCRIPT = "def run(mini_batch):\n    return list(mini_batch)\n"


def noop(mini_batch: list[str]) -> list[str]:
    """The raw Dask peer's task: the entry script's run(), as a plain function."""
    return list(mini_batch)


_NODE_LINE = re.compile(
    r"^(?P<ts>[\d-]+ [\d:.]+)\|.*?\|(?P<what>picked|completed) mini-batch (?P<mb>\d+) attempt 1\b"
)


@contextlib.contextmanager
def _orchestration_clock(marks: dict[str, dict[int, float]]) -> Iterator[None]:
    """Notes, in the driver, when each mini-batch is submitted to Dask and when the driver books its result
    (wall clock, as the node logs): wraps the engine's `AttemptStream.submit` / `next_batch` for one run.
    Diagnostic only; without those names (another engine version) nothing is noted."""
    try:
        from airflow_parallel_run.core.driver.attempts import AttemptStream
    except ImportError:
        yield
        return
    submit, next_batch = AttemptStream.submit, AttemptStream.next_batch

    def timed_submit(stream: Any, attempts: Any, workers: Any = None, **options: Any) -> None:
        attempts = list(attempts)
        when = time.time()
        for mb, _attempt in attempts:
            marks["dispatched"].setdefault(mb.index, when)
        submit(stream, attempts, workers, **options)

    def timed_next_batch(stream: Any, *args: Any, **kwargs: Any) -> Any:
        booked = next_batch(stream, *args, **kwargs)
        when = time.time()
        for mb, _attempt, _result in booked:
            marks["booked"].setdefault(mb.index, when)
        return booked

    AttemptStream.submit, AttemptStream.next_batch = timed_submit, timed_next_batch  # type: ignore[method-assign]
    try:
        yield
    finally:
        AttemptStream.submit, AttemptStream.next_batch = submit, next_batch  # type: ignore[method-assign]


def orchestration_latency(logs_dir: str, marks: dict[str, dict[int, float]]) -> dict[str, list[float]]:
    """Per mini-batch, in ms: dispatch (driver submit) -> start in the process (node log "picked"), and
    end in the process (node log "completed") -> booked by the driver. Node log times are UTC, to the ms."""
    seen: dict[str, dict[int, float]] = {"picked": {}, "completed": {}}
    for path in glob.glob(os.path.join(logs_dir, "sys", "node", "*", "*.txt")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                match = _NODE_LINE.match(line)
                if match:
                    when = dt.datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S.%f").replace(
                        tzinfo=dt.timezone.utc
                    )
                    seen[match["what"]][int(match["mb"])] = when.timestamp()
    start = [(seen["picked"][i] - t) * 1000 for i, t in marks["dispatched"].items() if i in seen["picked"]]
    end = [(t - seen["completed"][i]) * 1000 for i, t in marks["booked"].items() if i in seen["completed"]]
    return {"dispatch_to_start_ms": start, "end_to_booked_ms": end}


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "n": len(ordered),
    }


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mini-batches", type=int, default=None, help="default 2000 (--quick: 50)")
    benchlib.add_compare_arguments(parser)


class _Engine:
    """`run_job` over the folder of 1-byte files with a fresh output and cache folder per run; only
    public names, so that a --compare-with child of any version runs it too."""

    def __init__(self, client: Any, data: str, root: Any, count: int) -> None:
        from airflow_parallel_run.core import ParallelRunConfig

        self.client, self.data, self.root, self.count = client, data, root, count
        script = root / "noop.py"
        script.write_text(SCRIPT)
        self.config = ParallelRunConfig(
            entry_script=str(script), mini_batch_size=1, process_count_per_node=PROCESSES
        )
        self.counter = iter(range(1_000_000))
        self.setup: list[float] = []
        self.latency: dict[str, list[float]] = {"dispatch_to_start_ms": [], "end_to_booked_ms": []}

    def run(self) -> float:
        from airflow_parallel_run.core import FileDataset, run_job

        n = next(self.counter)
        marks: dict[str, float] = {}
        clock: dict[str, dict[int, float]] = {"dispatched": {}, "booked": {}}
        with _orchestration_clock(clock):
            t0 = time.perf_counter()
            summary = run_job(
                self.config,
                [FileDataset.from_files(self.data)],
                str(self.root / f"out{n}"),
                client=self.client,
                cache_dir=str(self.root / f"cache{n}"),
                allow_reuse=False,
                on_driver=lambda _driver: marks.setdefault("driver", time.perf_counter()),
            )
            seconds = time.perf_counter() - t0
        for name, values in orchestration_latency(str(self.root / f"out{n}" / "logs"), clock).items():
            self.latency[name] += values
        assert summary["status"] == "succeeded", summary
        assert summary["succeeded_items"] == self.count and summary["reused_mini_batches"] == 0, summary
        self.setup.append(marks.get("driver", t0) - t0)
        return seconds


def _serve(args: argparse.Namespace) -> None:
    """The --compare-with child: runs this checkout's engine on the parent's files (see benchlib.serve)."""
    request = json.loads(args.serve)
    with benchlib.workdir(args, "overhead-other") as root, benchlib.local_cluster(PROCESSES) as client:
        engine = _Engine(client, request["data"], root, int(request["count"]))

        def run(_case: str) -> tuple[float, float]:
            seconds = engine.run()
            return seconds, engine.setup[-1]

        benchlib.serve(run)


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.serve is not None:
        _serve(args)
        return
    started = benchlib.start(args)
    environ = dict(os.environ)  # before any LocalCluster adds its worker settings (see OtherEngine)
    count = args.mini_batches or (50 if args.quick else 2000)
    rounds = benchlib.repeats(args, full=3, quick=1)

    from airflow_parallel_run.core import FileDataset

    other: benchlib.OtherEngine | None = None
    with benchlib.workdir(args, "overhead") as root:
        paths = benchlib.make_empty_files(root / "in", count, content=b"x")
        batches = [[p] for p in paths]

        with benchlib.local_cluster(PROCESSES) as client:
            this = _Engine(client, str(root / "in"), root, count)
            config = this.config
            setup = this.setup
            engine = this.run

            def dask() -> float:
                t0 = time.perf_counter()
                results = client.gather(client.map(noop, batches, pure=False))
                seconds = time.perf_counter() - t0
                assert sum(len(r) for r in results) == count
                return seconds

            def engine_tasks() -> float:
                from airflow_parallel_run.core import JobDriver
                from airflow_parallel_run.core.worker.attempt import run_mini_batch
                from airflow_parallel_run.core.worker.plugin import finish_on, register, unregister

                n = next(this.counter)
                driver = JobDriver(
                    config,
                    [FileDataset.from_files(str(root / "in"))],
                    str(root / f"out{n}"),
                    cache_dir=str(root / f"cache{n}"),
                    allow_reuse=False,
                )
                try:
                    mbs = driver.plan.mini_batches
                    t0 = time.perf_counter()
                    name = register(client, driver.spec, None)
                    results = client.gather(
                        client.map(run_mini_batch, [name] * len(mbs), mbs, [1] * len(mbs), pure=False)
                    )
                    client.run(finish_on, name, True)
                    unregister(client, name)
                    seconds = time.perf_counter() - t0
                finally:
                    driver.release()
                assert all(r.status == "RUN_DONE" for r in results), results[0]
                return seconds

            dask()  # warm-up: the workers import the function's module once
            cases: dict[str, Callable[[], float]] = {}
            try:
                if args.compare_with is not None:
                    other = benchlib.OtherEngine(
                        args.compare_with, __file__, {"data": str(root / "in"), "count": count}, args, environ
                    )
                    benchlib.log(f"compared with the engine imported from {other.engine_path}")
                    cases["other_engine"] = lambda: other.run("files") if other is not None else 0.0
                cases.update({"engine": engine, "dask_client_map": dask})
                try:
                    engine_tasks()
                    cases["engine_tasks"] = engine_tasks
                except Exception as exc:  # noqa: BLE001 - engine internals moved: skip the diagnostic only
                    benchlib.log(f"diagnostic engine_tasks skipped: {type(exc).__name__}: {exc}")
                samples = benchlib.alternating(cases, rounds, [("other_engine", "engine")])
            finally:
                if other is not None:
                    other.close()

    med = benchlib.medians(samples)
    per_mb = med["engine"] * PROCESSES / count
    per_mb_dask = med["dask_client_map"] * PROCESSES / count
    ratios = [
        Ratio(
            "engine / raw Dask",
            med["engine"] / med["dask_client_map"],
            1.25,
            "<=",
            f"{count} no-op mini-batches (mini_batch_size=1, 2 processes): run_job vs Client.map, same cluster",
        ),
        Ratio(
            "Azure per-mini-batch / engine per-mini-batch",
            AZURE_SECONDS_PER_MINI_BATCH / per_mb,
            1.0,
            ">=",
            f"engine {per_mb * 1000:.1f} ms of process time per mini-batch (wall x {PROCESSES} / {count}) "
            f"vs ~{AZURE_SECONDS_PER_MINI_BATCH * 1000:.0f} ms quoted for Azure ParallelRunStep",
        ),
    ]
    if "other_engine" in med:
        ratios.append(
            Ratio(
                "engine / compared engine",
                med["engine"] / med["other_engine"],
                None,
                "<=",
                f"run_job of this checkout vs the engine of {other.engine_path if other else '?'}, same rounds",
            )
        )
    if "engine_tasks" in med:
        ratios += [
            Ratio(
                "engine / engine_tasks (driver share)",
                med["engine"] / med["engine_tasks"],
                None,
                "<=",
                "run_job vs the engine's worker task mapped with Client.map (diagnostic: the driver loop's cost)",
            ),
            Ratio(
                "engine_tasks / raw Dask (worker-path share)",
                med["engine_tasks"] / med["dask_client_map"],
                None,
                "<=",
                "engine worker task (entry-script process, part file, logs) vs the bare function (diagnostic)",
            ),
        ]
    extra: dict[str, Any] = {
        "engine_seconds_per_mini_batch": round(per_mb, 5),
        "dask_seconds_per_mini_batch": round(per_mb_dask, 5),
        "engine_wall_ms_per_mini_batch": round(med["engine"] * 1000 / count, 3),
        "engine_setup_s_median": round(sorted(setup)[len(setup) // 2], 3) if setup else None,
        "engine_spread": {
            side: {"min": round(min(v), 3), "max": round(max(v), 3)} for side, v in samples.items() if v
        },
        "orchestration_latency_ms": {name: _percentiles(v) for name, v in this.latency.items()},
        "orchestration_note": "per mini-batch, every engine run: dispatch_to_start = driver submit -> node log "
        "'picked' (Dask scheduling, the worker's queue, the lease of the process); end_to_booked = node log "
        "'completed' -> the driver's next_batch returns it (result transfer, the driver loop's turn)",
        "note": "engine_setup_s = run_job start until the JobDriver exists (listing, planning, fingerprints)",
        "engine_path": benchlib.engine_path(),
        "other_engine_path": other.engine_path if other is not None else None,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    benchlib.write_result(
        args,
        "overhead",
        started=started,
        params={
            "mini_batches": count,
            "mini_batch_size": 1,
            "processes": PROCESSES,
            "rounds": rounds,
            "compare_with": str(args.compare_with) if args.compare_with else None,
        },
        ratios=ratios,
        samples=samples,
        extra=extra,
    )


if __name__ == "__main__":
    main()

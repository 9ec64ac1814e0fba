"""Per-mini-batch overhead: no-op mini-batches through this engine vs `Client.map` of the same no-op.

Both sides use one Dask LocalCluster (2 worker processes x 1 thread, 127.0.0.1), created once and
passed to `run_job(client=...)`. The input is a folder of 1-byte files, `mini_batch_size=1`, so
every file is one mini-batch; `run()` returns its input (`return list(mini_batch)`), the Dask peer
maps the same function over the same one-file lists and gathers the results. Each engine run gets a
fresh output folder and cache folder with `allow_reuse=False`, so nothing is reused. Samples are
interleaved (engine, dask, engine, dask, ...) and compared by their medians.

Reported: engine time / raw Dask time (target <= 1.5x), and engine seconds per mini-batch (wall
time x processes / mini-batches, i.e. process-seconds spent per mini-batch) against the ~0.05 s per
mini-batch quoted for Azure ParallelRunStep (issue 10).

Diagnostic third side ("engine_tasks"): the engine's own worker task (`runner.run_mini_batch`, an
entry-script process per worker thread) mapped over the same plan with `Client.map`, everything in
flight at once and no driver loop. engine / engine_tasks isolates the driver's share of the gap,
engine_tasks / dask the worker path's share. It uses engine internals; if they changed, the
diagnostic is skipped and the headline ratios still stand.

Usage: .venv/bin/python bench/overhead_bench.py [--quick] [--mini-batches 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import benchlib
from benchlib import Ratio

AZURE_SECONDS_PER_MINI_BATCH = 0.05
PROCESSES = 2
SCRIPT = "def run(mini_batch):\n    return list(mini_batch)\n"


def noop(mini_batch: list[str]) -> list[str]:
    """The raw Dask peer's task: the entry script's run(), as a plain function."""
    return list(mini_batch)


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mini-batches", type=int, default=None, help="default 2000 (--quick: 200)")


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    started = benchlib.start(args)
    count = args.mini_batches or (200 if args.quick else 2000)
    rounds = benchlib.repeats(args, full=3, quick=1)

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

    with benchlib.workdir(args, "overhead") as root:
        paths = benchlib.make_empty_files(root / "in", count, content=b"x")
        script = root / "noop.py"
        script.write_text(SCRIPT)
        config = ParallelRunConfig(
            entry_script=str(script), mini_batch_size=1, process_count_per_node=PROCESSES
        )
        batches = [[p] for p in paths]
        setup: list[float] = []
        counter = iter(range(1_000_000))

        with benchlib.local_cluster(PROCESSES) as client:

            def engine() -> float:
                n = next(counter)
                marks: dict[str, float] = {}
                t0 = time.perf_counter()
                summary = run_job(
                    config,
                    [FileDataset.from_files(str(root / "in"))],
                    str(root / f"out{n}"),
                    client=client,
                    cache_dir=str(root / f"cache{n}"),
                    allow_reuse=False,
                    on_driver=lambda _driver: marks.setdefault("driver", time.perf_counter()),
                )
                seconds = time.perf_counter() - t0
                assert summary["status"] == "succeeded", summary
                assert summary["succeeded_items"] == count and summary["reused_mini_batches"] == 0, summary
                setup.append(marks.get("driver", t0) - t0)
                return seconds

            def dask() -> float:
                t0 = time.perf_counter()
                results = client.gather(client.map(noop, batches, pure=False))
                seconds = time.perf_counter() - t0
                assert sum(len(r) for r in results) == count
                return seconds

            def engine_tasks() -> float:
                from airflow_parallel_run.core import JobDriver
                from airflow_parallel_run.core.runner import run_mini_batch, shutdown_job

                n = next(counter)
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
                    spec = client.scatter(driver.spec, broadcast=True, hash=False)
                    results = client.gather(
                        client.map(run_mini_batch, [spec] * len(mbs), mbs, [1] * len(mbs), pure=False)
                    )
                    client.run(shutdown_job, driver.job_id, driver.spec.log_url, {})
                    seconds = time.perf_counter() - t0
                finally:
                    driver.release()
                assert all(r.status == "RUN_DONE" for r in results), results[0]
                return seconds

            dask()  # warm-up: the workers import the function's module once
            cases: dict[str, Callable[[], float]] = {"engine": engine, "dask_client_map": dask}
            try:
                engine_tasks()
                cases["engine_tasks"] = engine_tasks
            except Exception as exc:  # noqa: BLE001 - engine internals moved: skip the diagnostic only
                benchlib.log(f"diagnostic engine_tasks skipped: {type(exc).__name__}: {exc}")
            samples = benchlib.interleaved(cases, rounds)

    med = benchlib.medians(samples)
    per_mb = med["engine"] * PROCESSES / count
    per_mb_dask = med["dask_client_map"] * PROCESSES / count
    ratios = [
        Ratio(
            "engine / raw Dask",
            med["engine"] / med["dask_client_map"],
            1.5,
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
        "note": "engine_setup_s = run_job start until the JobDriver exists (listing, planning, fingerprints)",
    }
    benchlib.write_result(
        args,
        "overhead",
        started=started,
        params={"mini_batches": count, "mini_batch_size": 1, "processes": PROCESSES, "rounds": rounds},
        ratios=ratios,
        samples=samples,
        extra=extra,
    )


if __name__ == "__main__":
    main()

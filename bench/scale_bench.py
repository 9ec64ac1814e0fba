"""Scale: one job of 1,000 / 10,000 / 100,000 no-op mini-batches, and how its cost grows.

Each size is one job in a fresh subprocess (the driver: `run_job` with its embedded LocalCluster,
whose Dask workers are threads of that process, and 2 entry-script processes): file input of 1-byte
files, `mini_batch_size=1`, `run()` returns its input, `allow_reuse=False`. The subprocess reports
the job's wall time and the driver's peak RSS (`ru_maxrss`, the entry-script processes excluded),
and checks the result: status succeeded, every item succeeded, and the output file has one line per
item. Then the job's `logs/report.html` is opened in headless Chromium (Playwright, Debian
`chromium`) and timed from `goto` until every plot has drawn its SVG.

Targets (absolute, not ratios: this bench has no peer): the largest size under 300 s and under 1 GB
of driver RSS, its report open in under 3 s, and time and RSS growing linearly or better (reported:
seconds per mini-batch and RSS growth of the largest size against the one 10x smaller).

The full size takes about 8-10 minutes on 2 shared cores (creating 100,000 files included); `--quick`
runs 20 and 200 mini-batches (about 15 s).

Usage: .venv/bin/python bench/scale_bench.py [--quick] [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Ratio

PROCESSES = 2
SCRIPT = "def run(mini_batch):\n    return list(mini_batch)\n"
TIME_BUDGET_S = 300.0
RSS_BUDGET_MIB = 1024.0
OPEN_BUDGET_S = 3.0
CHROMIUM = os.environ.get("APR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="default 1000 10000 100000 (--quick: 20 200)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one job, in its own process


def child(request: dict[str, Any]) -> None:
    """Runs one job (the driver process under test) and prints one JSON line about it."""
    from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

    root, count = Path(request["root"]), int(request["count"])
    script = root / "noop.py"
    script.write_text(SCRIPT)
    config = ParallelRunConfig(entry_script=str(script), mini_batch_size=1, process_count_per_node=PROCESSES)
    t0 = time.perf_counter()
    summary = run_job(
        config,
        [FileDataset.from_files(request["data"])],
        str(root / "out"),
        cache_dir=str(root / "cache"),
        allow_reuse=False,
    )
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert summary["status"] == "succeeded", summary
    assert summary["succeeded_items"] == count and summary["failed_items"] == 0, summary
    with open(root / "out" / "parallel_run_step.txt", "rb") as handle:
        lines = sum(1 for _ in handle)
    assert lines == count, f"the output has {lines} lines, {count} items succeeded"
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib}), flush=True)


def open_report(report: Path) -> float | None:
    """Seconds from `goto` until every plot of the report has drawn; None without Chromium/Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        benchlib.log("playwright is not installed: report open time not measured")
        return None
    if not os.path.exists(CHROMIUM):
        benchlib.log(f"{CHROMIUM} is missing (make browser): report open time not measured")
        return None
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda error: errors.append(str(error)))
            t0 = time.perf_counter()
            page.goto(report.as_uri(), wait_until="load", timeout=120_000)
            page.wait_for_function(
                "() => { const p = document.querySelectorAll('.js-plotly-plot');"
                " return p.length > 0 && [...p].every(x => x.querySelector('.main-svg')); }",
                timeout=120_000,
            )
            seconds = time.perf_counter() - t0
        finally:
            browser.close()
    assert not errors, errors
    return seconds


def measure(args: argparse.Namespace, count: int) -> dict[str, Any]:
    with benchlib.workdir(args, f"scale{count}") as root:
        t0 = time.perf_counter()
        benchlib.make_empty_files(root / "in", count, content=b"x")
        benchlib.log(f"{count}: created {count} files in {time.perf_counter() - t0:.1f} s")
        request = {"root": str(root), "data": str(root / "in"), "count": count}
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(request)],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        row: dict[str, Any] = {"mini_batches": count, **json.loads(done.stdout.strip().splitlines()[-1])}
        report = root / "out" / "logs" / "report.html"
        row["report_bytes"] = report.stat().st_size
        row["report_open_s"] = open_report(report)
    benchlib.log(
        f"{count}: {row['seconds']:.1f} s, driver peak RSS {row['peak_rss_mib']:.0f} MiB, report "
        f"{row['report_bytes'] / 1e6:.2f} MB, opens in {row['report_open_s'] or float('nan'):.2f} s"
    )
    return row


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.child is not None:
        child(json.loads(args.child))
        return
    started = benchlib.start(args)
    sizes = sorted(args.sizes or ([20, 200] if args.quick else [1000, 10_000, 100_000]))
    rows = [measure(args, count) for count in sizes]
    big = rows[-1]
    ratios = [
        Ratio(
            f"seconds / {TIME_BUDGET_S:.0f} s, {big['mini_batches']} mini-batches",
            big["seconds"] / TIME_BUDGET_S,
            1.0,
            "<=",
            f"{big['seconds']:.1f} s for one job of {big['mini_batches']} no-op mini-batches (2 processes)",
        ),
        Ratio(
            f"driver peak RSS / 1 GB, {big['mini_batches']} mini-batches",
            big["peak_rss_mib"] / RSS_BUDGET_MIB,
            1.0,
            "<=",
            f"{big['peak_rss_mib']:.0f} MiB (ru_maxrss of the driver process, Dask workers in it)",
        ),
    ]
    if big["report_open_s"] is not None:
        ratios.append(
            Ratio(
                f"report open / {OPEN_BUDGET_S:.0f} s, {big['mini_batches']} mini-batches",
                big["report_open_s"] / OPEN_BUDGET_S,
                1.0,
                "<=",
                f"{big['report_open_s']:.2f} s until every plot drew (headless Chromium); "
                f"report {big['report_bytes'] / 1e6:.2f} MB",
            )
        )
    if len(rows) > 1:
        small = rows[-2]
        grow = big["mini_batches"] / small["mini_batches"]
        ratios += [
            Ratio(
                "seconds per mini-batch, largest / next size",
                (big["seconds"] / big["mini_batches"]) / (small["seconds"] / small["mini_batches"]),
                1.0,
                "<=",
                f"{grow:g}x the mini-batches: {small['seconds']:.1f} s -> {big['seconds']:.1f} s "
                "(<= 1: linear or better)",
            ),
            Ratio(
                "driver peak RSS growth / mini-batch growth",
                (big["peak_rss_mib"] / small["peak_rss_mib"]) / grow,
                1.0,
                "<=",
                f"{small['peak_rss_mib']:.0f} -> {big['peak_rss_mib']:.0f} MiB for {grow:g}x the mini-batches",
            ),
        ]
    benchlib.write_result(
        args,
        "scale",
        started=started,
        params={"sizes": sizes, "mini_batch_size": 1, "processes": PROCESSES, "allow_reuse": False},
        ratios=ratios,
        samples={f"job_{row['mini_batches']}": [row["seconds"]] for row in rows},
        extra={"rows": rows, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
    )


if __name__ == "__main__":
    main()

"""Runs every benchmark (each a separate process, one after another) and prints a summary table.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...] [--results-dir DIR]
                                      [--scale-full]

`--quick`, `--results-dir` and `--tmp-dir` are passed to every script. The quick sizes are smoke sizes
(`make test` runs them through tests/test_bench_quick.py): small enough that fixed costs dominate, so
their ratios are not results, and large enough that every side of every bench still runs (several
mini-batches per process, several chunks per generated file, two sizes where a bench compares growth).
Each script prints its ratios and writes `<results-dir>/<name>.json`; the table below is read back from
those files. The exit code is 1 when a script failed (crashed or wrote no JSON), not when a target was
missed: the benches report what they measure, the targets are for people to judge.

The scale bench runs 1,000 and 10,000 mini-batches here (about 3 minutes); its 100,000-mini-batch job
alone takes 11-12 minutes on 2 cores today, which would take `make bench` past its 20 minutes:
`--scale-full` (or `bench/scale_bench.py` on its own) runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from benchlib import RESULTS_DIR  # noqa: E402

#: Script and the name of the JSON it writes, cheapest first; `airflow` starts a whole Airflow stack.
BENCHES: dict[str, tuple[str, str]] = {
    "overhead": ("overhead_bench.py", "overhead"),
    "cpu": ("cpu_bench.py", "cpu_scaling"),
    "tabular": ("tabular_bench.py", "tabular"),
    "planning": ("planning_bench.py", "planning"),
    "reuse": ("reuse_bench.py", "reuse"),
    "io_bound": ("io_bound_bench.py", "io_bound"),
    "scale": ("scale_bench.py", "scale"),
    "airflow": ("airflow_bench.py", "airflow"),
}

#: Sizes of a full (not --quick) run_all without --scale-full (see the module's docstring).
SCALE_SIZES = ["--sizes", "1000", "10000"]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    return f"{value:.3g}"


def summary_table(docs: dict[str, dict[str, Any] | None]) -> str:
    """A Markdown table: one row per reported ratio (or a FAILED row for a bench without JSON)."""
    rows = ["| bench | figure | value | target | outcome |", "|---|---|---|---|---|"]
    for bench, doc in docs.items():
        if doc is None:
            rows.append(f"| {bench} | (no result) | - | - | FAILED |")
            continue
        for ratio in doc.get("ratios", []):
            target = "-" if ratio.get("target") is None else f"{ratio['op']} {_fmt(ratio['target'])}"
            outcome = {True: "meets", False: "misses", None: "info"}[ratio.get("meets")]
            rows.append(
                f"| {bench} | {ratio['name']} | {_fmt(ratio['value'])}{ratio.get('unit', '')} | {target} | {outcome} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every bench in its quick mode")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None)
    parser.add_argument("--skip", nargs="+", choices=sorted(BENCHES), default=[])
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument(
        "--scale-full", action="store_true", help="the scale bench up to 100,000 mini-batches"
    )
    args = parser.parse_args(argv)

    chosen = [b for b in (args.only or list(BENCHES)) if b not in args.skip]
    passthrough = ["--results-dir", str(args.results_dir)]
    passthrough += ["--quick"] if args.quick else []
    passthrough += ["--tmp-dir", args.tmp_dir] if args.tmp_dir else []
    docs: dict[str, dict[str, Any] | None] = {}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for bench in chosen:
        script, name = BENCHES[bench]
        result = args.results_dir / f"{name}.json"
        result.unlink(missing_ok=True)
        extra = SCALE_SIZES if bench == "scale" and not args.quick and not args.scale_full else []
        print(f"\n=== {bench}: {script} {' '.join(passthrough + extra)}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(BENCH_DIR / script), *passthrough, *extra])
        timings[bench] = time.perf_counter() - t0
        docs[bench] = json.loads(result.read_text()) if code == 0 and result.is_file() else None
        if docs[bench] is None:
            print(f"=== {bench} FAILED (exit code {code})", flush=True)
    total = time.perf_counter() - started
    print("\n" + summary_table(docs))
    print("\n" + ", ".join(f"{b} {s:.0f} s" for b, s in timings.items()) + f"; total {total / 60:.1f} min")
    return 1 if any(doc is None for doc in docs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

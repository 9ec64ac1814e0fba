"""Planning and memory: `plan_inputs` over 1,000,000 empty files, in a subprocess that only plans.

Creates `--files` empty files (default 1,000,000; --quick 2,000) in sub-folders of 10,000 with
os.open/os.close in a tight loop. Each sample is a fresh subprocess that imports the planner,
records its RSS, plans `FileDataset.from_files(<sub-folders>)` with `mini_batch_size=10`, and
reports the planning time, the time to the first planned mini-batch (the planner cuts mini-batches
while the folders are still walked) and its peak RSS (`VmHWM`), holding every mini-batch as the
driver does. Three kinds of subprocess, interleaved:

- `plan_all`: plans every sub-folder (N files);
- `plan_tenth`: plans the first tenth of the sub-folders (N/10 files), to show how time and
  memory grow when the count grows 10x;
- `walk_all`: the peer, a bare `os.scandir` walk collecting (path, size) of the same N files, i.e.
  the least any planner must do.

Targets: planning N = 1,000,000 files under 60 s and under 1 GB peak RSS; memory "flat-ish" as the
count grows 10x (reported: RSS growth ratio and bytes per file above the import baseline).
Usage: .venv/bin/python bench/planning_bench.py [--quick] [--files 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import benchlib
from benchlib import Ratio

PER_DIR = 10_000


def _peak_kib() -> int:
    """Peak RSS of this process in KiB since it started its program: /proc's VmHWM. Not `ru_maxrss`,
    which Linux carries over exec from the process that forked it: a child of a bench that had just
    created a million paths reported that bench's size (134 MiB for 100,000 files planned)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_kib() -> int:
    """Current RSS of this process in KiB (from /proc; psutil would add to what we measure)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(mode: str, folders: list[str]) -> None:
    """Runs in the subprocess: prints one JSON line with seconds, mini-batches and RSS figures."""
    if mode == "walk":
        baseline = _rss_kib()
        t0 = time.perf_counter()
        found: list[tuple[str, int]] = []
        stack = list(folders)
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir():
                        stack.append(entry.path)
                    else:
                        found.append((entry.path, entry.stat().st_size))
        found.sort()
        seconds, count = time.perf_counter() - t0, len(found)
        first = seconds  # a listing that is sorted as a whole gives nothing before it ends
    else:
        from airflow_parallel_run.core import FileDataset
        from airflow_parallel_run.core.plan import iter_plan

        baseline = _rss_kib()
        t0 = time.perf_counter()
        _kind, batches = iter_plan([FileDataset.from_files(folders)], 10)
        plan = []  # held, as the driver holds its plan
        for mb in batches:
            if not plan:
                first = time.perf_counter() - t0
            plan.append(mb)
        seconds, count = time.perf_counter() - t0, len(plan)
    peak = _peak_kib()
    print(
        json.dumps(
            {"seconds": seconds, "first_s": first, "count": count, "baseline_kib": baseline, "peak_kib": peak}
        )
    )


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=None, help="default 1,000,000 (--quick 2,000)")
    parser.add_argument("--child", choices=("plan", "walk"), help=argparse.SUPPRESS)
    parser.add_argument("folders", nargs="*", help=argparse.SUPPRESS)


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.child:
        child(args.child, args.folders)
        return
    started = benchlib.start(args)
    count = args.files or (2_000 if args.quick else 1_000_000)
    per_dir = min(PER_DIR, max(1, count // 10))
    rounds = benchlib.repeats(args, full=3, quick=1)
    runs: dict[str, list[dict[str, Any]]] = {"plan_all": [], "plan_tenth": [], "walk_all": []}

    with benchlib.workdir(args, "planning") as root:
        seconds, _paths = benchlib.timed(
            lambda: benchlib.make_empty_files(root / "in", count, per_dir=per_dir)
        )
        create_rate = count / seconds
        del _paths
        benchlib.log(f"created {count:,} empty files in {seconds:.1f} s ({create_rate:,.0f} files/s)")
        folders = sorted(str(p) for p in (root / "in").iterdir())
        tenth = folders[: max(1, len(folders) // 10)]

        def sample(name: str, mode: str, chosen: list[str]) -> float:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, *chosen],
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
            )
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(doc)
            what = "files listed" if mode == "walk" else "mini-batches planned"
            benchlib.log(f"    {name}: {doc['count']:,} {what}, peak RSS {doc['peak_kib'] / 1024:.0f} MiB")
            return float(doc["seconds"])

        samples = benchlib.interleaved(
            {
                "plan_all": lambda: sample("plan_all", "plan", folders),
                "plan_tenth": lambda: sample("plan_tenth", "plan", tenth),
                "walk_all": lambda: sample("walk_all", "walk", folders),
            },
            rounds,
        )
        tenth_files = sum(1 for f in tenth for _ in os.scandir(f))

    def median_of(name: str, key: str) -> float:
        values = sorted(float(r[key]) for r in runs[name])
        return values[len(values) // 2]

    med = benchlib.medians(samples)
    peak_all, peak_tenth = (
        median_of("plan_all", "peak_kib") * 1024,
        median_of("plan_tenth", "peak_kib") * 1024,
    )
    base_all, base_tenth = (
        median_of("plan_all", "baseline_kib") * 1024,
        median_of("plan_tenth", "baseline_kib") * 1024,
    )
    growth_all, growth_tenth = max(peak_all - base_all, 1.0), max(peak_tenth - base_tenth, 1.0)
    ratios = [
        Ratio(
            f"plan {count:,} files: seconds / 60 s budget",
            med["plan_all"] / 60.0,
            1.0,
            "<=",
            f"{med['plan_all']:.1f} s to plan {count:,} empty files (mini_batch_size=10)",
        ),
        Ratio(
            f"plan {count:,} files: peak RSS / 1 GB budget",
            peak_all / 1e9,
            1.0,
            "<=",
            f"peak RSS {peak_all / 2**20:.0f} MiB of the planning subprocess (imports included)",
        ),
        Ratio(
            f"first planned mini-batch of {count:,} files: seconds / 2 s",
            median_of("plan_all", "first_s") / 2.0,
            None,
            "<=",
            f"{median_of('plan_all', 'first_s'):.3f} s from the start of planning to the first mini-batch cut "
            f"(the listing goes on; the whole walk takes {med['walk_all']:.1f} s); planning only, not a job's "
            "first submission",
        ),
        Ratio(
            "planner vs bare scandir walk",
            med["plan_all"] / med["walk_all"],
            None,
            "<=",
            f"plan_inputs time / os.scandir walk collecting (path, size) of the same {count:,} files",
        ),
        Ratio(
            "plan time growth for 10x files",
            med["plan_all"] / med["plan_tenth"],
            None,
            "<=",
            f"{count:,} vs {tenth_files:,} files (10 = linear)",
        ),
        Ratio(
            "peak RSS growth for 10x files",
            peak_all / peak_tenth,
            None,
            "<=",
            f"{peak_all / 2**20:.0f} vs {peak_tenth / 2**20:.0f} MiB; above the import baseline "
            f"{growth_all / 2**20:.0f} vs {growth_tenth / 2**20:.0f} MiB = {growth_all / count:.0f} bytes per file",
        ),
    ]
    benchlib.write_result(
        args,
        "planning",
        started=started,
        params={"files": count, "tenth_files": tenth_files, "files_per_folder": per_dir, "rounds": rounds},
        ratios=ratios,
        samples=samples,
        extra={
            "create_files_per_s": round(create_rate),
            "peak_rss_mib": {k: [round(r["peak_kib"] / 1024, 1) for r in v] for k, v in runs.items()},
            "baseline_rss_mib": {k: [round(r["baseline_kib"] / 1024, 1) for r in v] for k, v in runs.items()},
            "bytes_per_file_above_baseline": round(growth_all / count),
            "first_mini_batch_s": {k: [round(r["first_s"], 4) for r in v] for k, v in runs.items()},
        },
    )


if __name__ == "__main__":
    main()

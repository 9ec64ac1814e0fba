"""Planning and memory: `plan_inputs` over 1,000,000 empty files, in a subprocess that only plans.

Creates `--files` empty files (default 1,000,000; --quick 2,000) in sub-folders of 10,000 with
os.open/os.close in a tight loop. Each sample is a fresh subprocess that imports the planner,
records its RSS, plans `FileDataset.from_files(<sub-folders>)` with `mini_batch_size=10`, and
reports the planning time, the time to the first planned mini-batch (the planner cuts mini-batches
while the folders are still walked) and its peak RSS (`VmHWM`), holding every mini-batch as the
driver of a streaming job does: in its `PlanStore` (core/plan/store.py, on disk; an offset and an item
count per mini-batch in RAM). Three kinds of subprocess, interleaved:

- `plan_all`: plans every sub-folder (N files);
- `plan_tenth`: plans the first tenth of the sub-folders (N/10 files), to show how time and
  memory grow when the count grows 10x;
- `walk_all`: the peer, a bare `os.scandir` walk collecting (path, size) of the same N files, i.e.
  the least any planner must do;
- `job_all`: a real job (`run_job`, embedded LocalCluster of 2 processes, a no-op entry script) over
  the same N files, cancelled once its first run() started: the time from `run_job` to the first
  run() call is the job's time to its first mini-batch (listing, fingerprints, cache look-ups,
  cluster start and the entry-script process's start included). Its reuse cache is kept across the
  rounds, so the first round fingerprints cold (every file hashed) and the later ones find the
  fingerprint memo warm (the `first_job_s` lists show each round). With `--compare-with DIR` the
  same job also runs on the engine of another checkout (`job_all_other`, e.g. a worktree of main).

Targets: planning N = 1,000,000 files under 60 s and under 1 GB peak RSS; memory "flat-ish" as the
count grows 10x (reported: RSS growth ratio and bytes per file above the import baseline).
Usage: .venv/bin/python bench/planning_bench.py [--quick] [--files 1000000] [--repeats 3] [--compare-with DIR]
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


FIRST_RUN_SCRIPT = """
import os, time
def run(mini_batch):
    marker = os.environ["APR_BENCH_FIRST_RUN"]
    if not os.path.exists(marker):
        with open(marker + ".tmp", "w") as handle:
            handle.write(repr(time.time()))
        os.replace(marker + ".tmp", marker)
    return mini_batch
"""


def job_child(folders: list[str], work: str) -> None:
    """A real job over `folders`, cancelled once the first run() started; one JSON line: the seconds from
    `run_job` to that run() call, and the job's status (it is cancelled, so "failed")."""
    import threading

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

    os.makedirs(work, exist_ok=True)
    script, marker = os.path.join(work, "first_run.py"), os.path.join(work, f"first-run-{os.getpid()}")
    with open(script, "w") as handle:
        handle.write(FIRST_RUN_SCRIPT)
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size=10,
        process_count_per_node=2,
        environment_variables={"APR_BENCH_FIRST_RUN": marker},
    )
    drivers: list[Any] = []
    done = threading.Event()

    def cancel_after_first_run() -> None:
        while not done.is_set() and not os.path.exists(marker):
            time.sleep(0.005)
        while not done.is_set() and not drivers:
            time.sleep(0.005)
        if drivers:
            drivers[0].cancel("bench: the first mini-batch started")

    threading.Thread(target=cancel_after_first_run, daemon=True).start()
    t0 = time.time()
    summary = run_job(
        config,
        [FileDataset.from_files(folders)],
        os.path.join(work, f"out-{os.getpid()}"),
        cache_dir=os.path.join(work, "cache"),
        on_driver=drivers.append,
    )
    done.set()
    with open(marker) as handle:
        first = float(handle.read()) - t0
    print(
        json.dumps({"seconds": first, "first_s": first, "status": summary["status"], "peak_kib": _peak_kib()})
    )


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
        from airflow_parallel_run.core.plan.store import PlanStore

        baseline = _rss_kib()
        t0 = time.perf_counter()
        kind, batches = iter_plan([FileDataset.from_files(folders)], 10)
        plan = PlanStore(kind, "bench")  # held as a streaming job's driver holds its plan (on disk)
        for mb in batches:
            if not len(plan):
                first = time.perf_counter() - t0
            plan.append(mb)
            plan.reveal(mb.index)
        seconds, count = time.perf_counter() - t0, len(plan)
        plan.close()
    peak = _peak_kib()
    print(
        json.dumps(
            {"seconds": seconds, "first_s": first, "count": count, "baseline_kib": baseline, "peak_kib": peak}
        )
    )


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=None, help="default 1,000,000 (--quick 2,000)")
    parser.add_argument("--child", choices=("plan", "walk", "job"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare-with",
        type=str,
        default=None,
        help="another checkout: its engine runs the job too (job_all_other)",
    )
    parser.add_argument("folders", nargs="*", help=argparse.SUPPRESS)


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.child == "job":
        job_child(args.folders, args.work)
        return
    if args.child:
        child(args.child, args.folders)
        return
    started = benchlib.start(args)
    count = args.files or (2_000 if args.quick else 1_000_000)
    per_dir = min(PER_DIR, max(1, count // 10))
    rounds = benchlib.repeats(args, full=3, quick=1)
    runs: dict[str, list[dict[str, Any]]] = {
        "plan_all": [],
        "plan_tenth": [],
        "walk_all": [],
        "job_all": [],
        "job_all_other": [],
    }

    with benchlib.workdir(args, "planning") as root:
        seconds, _paths = benchlib.timed(
            lambda: benchlib.make_empty_files(root / "in", count, per_dir=per_dir)
        )
        create_rate = count / seconds
        del _paths
        benchlib.log(f"created {count:,} empty files in {seconds:.1f} s ({create_rate:,.0f} files/s)")
        folders = sorted(str(p) for p in (root / "in").iterdir())
        tenth = folders[: max(1, len(folders) // 10)]

        def sample(name: str, mode: str, chosen: list[str], engine: str | None = None) -> float:
            env = dict(os.environ)
            if engine is not None:  # the child imports that checkout's engine
                env["PYTHONPATH"] = engine
            work = ["--work", str(root / name)] if mode == "job" else []  # each engine its own cache and memo
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, *work, *chosen],
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
                env=env,
            )
            doc = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(doc)
            if mode == "job":
                benchlib.log(
                    f"    {name}: first run() {doc['first_s']:.2f} s after run_job ({doc['status']})"
                )
                return float(doc["seconds"])
            what = "files listed" if mode == "walk" else "mini-batches planned"
            benchlib.log(f"    {name}: {doc['count']:,} {what}, peak RSS {doc['peak_kib'] / 1024:.0f} MiB")
            return float(doc["seconds"])

        kinds: dict[str, Any] = {
            "plan_all": lambda: sample("plan_all", "plan", folders),
            "plan_tenth": lambda: sample("plan_tenth", "plan", tenth),
            "walk_all": lambda: sample("walk_all", "walk", folders),
            "job_all": lambda: sample("job_all", "job", folders, benchlib.engine_path()),
        }
        if args.compare_with:
            kinds["job_all_other"] = lambda: sample("job_all_other", "job", folders, args.compare_with)
        samples = benchlib.interleaved(kinds, rounds)
        tenth_files = sum(1 for f in tenth for _ in os.scandir(f))

    def median_of(name: str, key: str) -> float:
        values = sorted(float(r[key]) for r in runs[name])
        return values[len(values) // 2]

    def rounds_of(name: str) -> str:
        return ", ".join(f"{r['first_s']:.2f}" for r in runs[name])

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
            f"first mini-batch of a {count:,}-file job: seconds / 2 s",
            med["job_all"] / 2.0,
            1.0,
            "<=",
            f"{med['job_all']:.2f} s from run_job to the first run() call (median of {rounds}; rounds "
            f"{rounds_of('job_all')} s, the first with a cold fingerprint "
            f"memo), embedded cluster included; the planner alone cuts its first mini-batch after "
            f"{median_of('plan_all', 'first_s'):.3f} s and walks all in {med['walk_all']:.1f} s"
            + (
                f"; the engine of {args.compare_with}: {med['job_all_other']:.2f} s (rounds "
                f"{rounds_of('job_all_other')} s)"
                if args.compare_with
                else ""
            ),
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
            "baseline_rss_mib": {
                k: [round(r["baseline_kib"] / 1024, 1) for r in v]
                for k, v in runs.items()
                if not k.startswith("job")
            },
            "bytes_per_file_above_baseline": round(growth_all / count),
            "first_mini_batch_s": {k: [round(r["first_s"], 4) for r in v] for k, v in runs.items()},
            "compare_with": args.compare_with,
        },
    )


if __name__ == "__main__":
    main()

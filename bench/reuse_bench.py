"""Reuse: a cold run vs a fully reused re-run of the same job (10,000 files), interleaved.

Each round runs the job cold (a fresh cache folder: every mini-batch runs, every input file is
hashed) and then re-runs it unchanged into a new output folder with the same cache (every
mini-batch is reused, no Dask cluster and no entry-script process starts). Both use the engine's
default embedded LocalCluster (`process_count_per_node` processes), as the CLI and the operator do,
so the cold side includes starting it. The entry script reads and hashes each 2 KiB file. The
reused output must be byte-identical to the cold one.

Target: re-run <= 5% of the cold run's time.
Usage: .venv/bin/python bench/reuse_bench.py [--quick] [--files 10000] [--mini-batch-size 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import time

import benchlib
from benchlib import Ratio

SCRIPT = """
import hashlib
def run(mini_batch):
    # a little real work per file: read it and hash it
    return [hashlib.sha256(open(p, "rb").read()).hexdigest()[:16] for p in mini_batch]
"""


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=None, help="default 10,000 (--quick 100)")
    parser.add_argument("--mini-batch-size", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    started = benchlib.start(args)
    count = args.files or (100 if args.quick else 10_000)
    rounds = benchlib.repeats(args, full=3, quick=1)

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

    with benchlib.workdir(args, "reuse") as root:
        paths = benchlib.make_empty_files(root / "in", count, per_dir=1000)
        for path in paths:
            with open(path, "wb") as handle:
                handle.write(os.urandom(2048))
        script = root / "score.py"
        script.write_text(SCRIPT)
        config = ParallelRunConfig(
            entry_script=str(script),
            mini_batch_size=args.mini_batch_size,
            process_count_per_node=args.processes,
        )
        state = {"round": 0}
        identical: list[bool] = []
        summaries: dict[str, dict[str, object]] = {}

        def job(name: str) -> float:
            n = state["round"]
            t0 = time.perf_counter()
            summary = run_job(
                config,
                [FileDataset.from_files(str(root / "in"))],
                str(root / f"{name}{n}"),
                cache_dir=str(root / f"cache{n}"),
            )
            seconds = time.perf_counter() - t0
            assert summary["status"] == "succeeded", summary
            summaries[name] = summary
            return seconds

        def cold() -> float:
            seconds = job("cold")
            assert summaries["cold"]["reused_mini_batches"] == 0, summaries["cold"]
            return seconds

        def reused() -> float:
            seconds = job("reused")
            summary = summaries["reused"]
            assert summary["reused_mini_batches"] == summary["total_mini_batches"], summary
            n = state["round"]
            identical.append(
                filecmp.cmp(
                    root / f"cold{n}" / "parallel_run_step.txt",
                    root / f"reused{n}" / "parallel_run_step.txt",
                    shallow=False,
                )
            )
            state["round"] += 1
            return seconds

        samples = benchlib.interleaved({"cold": cold, "reused": reused}, rounds)

    med = benchlib.medians(samples)
    total_mbs = summaries["cold"]["total_mini_batches"]
    ratios = [
        Ratio(
            "reused re-run / cold run",
            med["reused"] / med["cold"],
            0.05,
            "<=",
            f"{count:,} files, {total_mbs} mini-batches of {args.mini_batch_size}, {args.processes} processes; "
            f"re-run {med['reused']:.2f} s vs cold {med['cold']:.2f} s "
            f"(outputs byte-identical: {all(identical)})",
        ),
    ]
    benchlib.write_result(
        args,
        "reuse",
        started=started,
        params={
            "files": count,
            "mini_batch_size": args.mini_batch_size,
            "processes": args.processes,
            "rounds": rounds,
        },
        ratios=ratios,
        samples=samples,
        extra={
            "outputs_byte_identical": all(identical),
            "speedup_cold_over_reused": round(med["cold"] / med["reused"], 1),
        },
    )
    if not all(identical):
        raise SystemExit("the reused output differs from the cold output")


if __name__ == "__main__":
    main()

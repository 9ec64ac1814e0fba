"""Reuse: a cold run vs a fully reused re-run of the same job (10,000 files), interleaved.

Each round runs the job cold (a fresh cache folder: every mini-batch runs, every input file is
hashed) and then re-runs it unchanged into a new output folder with the same cache (every
mini-batch is reused, no Dask cluster and no entry-script process starts). Both use the engine's
default embedded LocalCluster (`process_count_per_node` processes), as the CLI and the operator do,
so the cold side includes starting it. The entry script reads and hashes each 2 KiB file. The
reused output must be byte-identical to the cold one.

Target: re-run <= 5% of the cold run's time.

With `--compare-with DIR` another checkout's engine runs the same job (cold, then re-run) on the same
input files in the same rounds, in a child process (benchlib.OtherEngine), and the two engines' re-runs
are compared; each engine's pair goes first every other round.

Usage: .venv/bin/python bench/reuse_bench.py [--quick] [--files 10000] [--mini-batch-size 10] [--repeats 3]
       [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    benchlib.add_compare_arguments(parser)


class _Jobs:
    """One engine's cold runs and re-runs of the job over `inputs`, each round with a fresh cache folder
    (the re-run uses its round's cold cache) and output folders under `root`."""

    def __init__(self, root: Path, inputs: Path, script: Path, mini_batch_size: int, processes: int) -> None:
        from airflow_parallel_run.core import FileDataset, ParallelRunConfig

        self.root, self.round = root, 0
        self.inputs = [FileDataset.from_files(str(inputs))]
        self.config = ParallelRunConfig(
            entry_script=str(script), mini_batch_size=mini_batch_size, process_count_per_node=processes
        )
        self.identical: list[bool] = []
        self.summaries: dict[str, dict[str, Any]] = {}
        self.cpu: dict[str, list[float]] = {"cold": [], "reused": []}  # this process's CPU seconds per job

    def _job(self, name: str) -> float:
        from airflow_parallel_run.core import run_job

        n = self.round
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run_job(
            self.config, self.inputs, str(self.root / f"{name}{n}"), cache_dir=str(self.root / f"cache{n}")
        )
        seconds = time.perf_counter() - t0
        self.cpu[name].append(time.process_time() - c0)
        assert summary["status"] == "succeeded", summary
        self.summaries[name] = summary
        return seconds

    def cold(self) -> float:
        seconds = self._job("cold")
        assert self.summaries["cold"]["reused_mini_batches"] == 0, self.summaries["cold"]
        return seconds

    def reused(self) -> float:
        seconds = self._job("reused")
        summary = self.summaries["reused"]
        assert summary["reused_mini_batches"] == summary["total_mini_batches"], summary
        n = self.round
        self.identical.append(
            filecmp.cmp(
                self.root / f"cold{n}" / "parallel_run_step.txt",
                self.root / f"reused{n}" / "parallel_run_step.txt",
                shallow=False,
            )
        )
        self.round += 1
        return seconds

    def output(self, n: int) -> Path:
        return self.root / f"cold{n}" / "parallel_run_step.txt"


def _serve(args: argparse.Namespace) -> None:
    """The --compare-with child: this checkout's engine runs the cold job and its re-run on the parent's
    files (see benchlib.serve); a re-run whose output differs from its cold run's, or from the parent's
    first cold output, ends the child (the parent then stops with its exit code)."""
    request = json.loads(args.serve)
    with benchlib.workdir(args, "reuse-other") as root:
        jobs = _Jobs(
            root, Path(request["inputs"]), Path(request["script"]), request["size"], request["processes"]
        )

        def run(case: str) -> tuple[float, float]:
            """(wall seconds, the job's CPU seconds in this process: answered in the `setup` slot)."""
            if case == "cold":
                return jobs.cold(), jobs.cpu["cold"][-1]
            seconds = jobs.reused()
            if not jobs.identical[-1] or not filecmp.cmp(
                jobs.output(jobs.round - 1), request["expected"], shallow=False
            ):
                raise SystemExit("the other engine's output differs")
            return seconds, jobs.cpu["reused"][-1]

        benchlib.serve(run)


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.serve is not None:
        _serve(args)
        return
    started = benchlib.start(args)
    environ = dict(os.environ)  # before any LocalCluster adds its worker settings (see OtherEngine)
    count = args.files or (100 if args.quick else 10_000)
    rounds = benchlib.repeats(args, full=3, quick=1)

    with benchlib.workdir(args, "reuse") as root:
        paths = benchlib.make_empty_files(root / "in", count, per_dir=1000)
        for path in paths:
            with open(path, "wb") as handle:
                handle.write(os.urandom(2048))
        script = root / "score.py"
        script.write_text(SCRIPT)
        (root / "this").mkdir()
        jobs = _Jobs(root / "this", root / "in", script, args.mini_batch_size, args.processes)
        cases: dict[str, Callable[[], float]] = {"cold": jobs.cold, "reused": jobs.reused}
        other: benchlib.OtherEngine | None = None
        try:
            if args.compare_with is not None:
                jobs.cold()  # the reference output the other engine's must equal (not a sample)
                jobs.reused()
                request = {
                    "inputs": str(root / "in"),
                    "script": str(script),
                    "size": args.mini_batch_size,
                    "processes": args.processes,
                    "expected": str(jobs.output(0)),
                }
                other = benchlib.OtherEngine(args.compare_with, __file__, request, args, environ)
                benchlib.log(f"compared with the engine imported from {other.engine_path}")
                engine = other
                cases["other_cold"] = lambda: engine.run("cold")
                cases["other_reused"] = lambda: engine.run("reused")
            samples = benchlib.alternating(
                cases, rounds, [("cold", "other_cold"), ("reused", "other_reused")]
            )
        finally:
            if other is not None:
                other.close()

    med = benchlib.medians(samples)
    total_mbs = jobs.summaries["cold"]["total_mini_batches"]
    identical = all(jobs.identical)
    ratios = [
        Ratio(
            "reused re-run / cold run",
            med["reused"] / med["cold"],
            0.05,
            "<=",
            f"{count:,} files, {total_mbs} mini-batches of {args.mini_batch_size}, {args.processes} processes; "
            f"re-run {med['reused']:.2f} s vs cold {med['cold']:.2f} s "
            f"(outputs byte-identical: {identical})",
        ),
    ]
    extra: dict[str, Any] = {
        "outputs_byte_identical": identical,
        "speedup_cold_over_reused": round(med["cold"] / med["reused"], 1),
    }
    if args.compare_with is not None:
        pairs = [a / b for a, b in zip(samples["reused"], samples["other_reused"], strict=True)]
        # CPU seconds of the re-run's process (a fully reused re-run starts no other): on a machine shared
        # with other work the wall time mostly measures the wait for a core, the CPU time does not
        cpu = statistics.median(jobs.cpu["reused"][-rounds:])
        other_cpu = statistics.median(other.setup["reused"]) if other is not None else float("nan")
        ratios += [
            Ratio(
                "re-run / the other engine's re-run",
                med["reused"] / med["other_reused"],
                None,
                "<=",
                f"the engine of {args.compare_with}: re-run {med['other_reused']:.2f} s, cold "
                f"{med['other_cold']:.2f} s (its re-run / its cold run "
                f"{med['other_reused'] / med['other_cold']:.3f}); per round "
                f"{', '.join(f'{r:.2f}' for r in pairs)} (median {statistics.median(pairs):.2f})",
            ),
            Ratio(
                "re-run CPU / the other engine's re-run CPU",
                cpu / other_cpu,
                None,
                "<=",
                f"the re-run's process CPU seconds, median of {rounds}: {cpu:.3f} s vs {other_cpu:.3f} s",
            ),
            Ratio(
                "cold run / the other engine's cold run",
                med["cold"] / med["other_cold"],
                None,
                "<=",
                "the same job with a fresh cache, both engines in the same rounds",
            ),
        ]
        extra["compare_with"] = str(args.compare_with)
        extra["other_engine_path"] = other.engine_path if other is not None else None
        extra["reused_over_other_reused_per_round"] = [round(r, 3) for r in pairs]
        extra["cpu_s"] = {
            "reused": [round(c, 4) for c in jobs.cpu["reused"][-rounds:]],
            "other_reused": [round(c, 4) for c in (other.setup["reused"] if other is not None else [])],
            "cold": [round(c, 4) for c in jobs.cpu["cold"][-rounds:]],
            "other_cold": [round(c, 4) for c in (other.setup["cold"] if other is not None else [])],
        }
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
        extra=extra,
    )
    if not identical:
        raise SystemExit("the reused output differs from the cold output")


if __name__ == "__main__":
    main()

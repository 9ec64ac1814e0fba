"""Cold run vs fully reused re-run of the same job (10,000 files), measured in one process.

Prints both times and their ratio; absolute seconds on a shared 2-core machine are not a claim.
Usage: .venv/bin/python bench/reuse_bench.py [--files 10000] [--mini-batch-size 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

SCRIPT = """
import hashlib
def run(mini_batch):
    # a little real work per file: read it and hash it
    return [hashlib.sha256(open(p, "rb").read()).hexdigest()[:16] for p in mini_batch]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--mini-batch-size", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="apr-bench-") as root:
        data = os.path.join(root, "in")
        for d in range(args.files // 1000 + 1):
            os.makedirs(os.path.join(data, f"d{d:03d}"), exist_ok=True)
        for i in range(args.files):
            with open(os.path.join(data, f"d{i // 1000:03d}", f"{i:06d}.bin"), "wb") as handle:
                handle.write(os.urandom(2048))
        script = os.path.join(root, "score.py")
        with open(script, "w") as handle:
            handle.write(SCRIPT)
        config = ParallelRunConfig(
            entry_script=script, mini_batch_size=args.mini_batch_size, process_count_per_node=args.processes
        )
        timings = {}
        for name in ("cold", "reused"):
            started = time.perf_counter()
            summary = run_job(
                config,
                [FileDataset.from_files(data)],
                os.path.join(root, name),
                cache_dir=os.path.join(root, "cache"),
            )
            timings[name] = time.perf_counter() - started
            assert summary["status"] == "succeeded", summary
            print(
                f"{name:>6}: {timings[name]:8.2f} s  ({summary['total_items']} items, "
                f"{summary['total_mini_batches']} mini-batches, {summary['reused_mini_batches']} reused)"
            )
        with (
            open(os.path.join(root, "cold", "parallel_run_step.txt"), "rb") as a,
            open(os.path.join(root, "reused", "parallel_run_step.txt"), "rb") as b,
        ):
            identical = a.read() == b.read()
        print(f"outputs byte-identical: {identical}")
        print(f"ratio cold / reused: {timings['cold'] / timings['reused']:.1f}x")


if __name__ == "__main__":
    main()

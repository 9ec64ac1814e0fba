"""Tabular scan: Parquet and CSV through the engine with a no-op run(), vs a raw pyarrow scan of the
same files with a 2-process pool.

Generated in a temp folder: `--files` files per format, about `--total-mb` MB per format (default
8 x 128 MB = 1 GiB each; --quick: 2 x 10 MB), columns id int64, three float64, an int32 and a short
string. The engine reads them as `TabularDataset.from_parquet_files` / `from_delimited_files` with
`mini_batch_size="64MB"`, `process_count_per_node=2`, `output_action="summary_only"`, and an entry
script whose run() returns the DataFrame's first column as a list (every row succeeds), on one Dask
LocalCluster (2 workers x 1 thread); fresh output and cache folders and `allow_reuse=False` per run.
The peer is `multiprocessing.Pool(2).map` of `pyarrow.parquet.read_table` / `pyarrow.csv.read_csv`
over the same files (returning only the row count). Files are in the page cache for both sides.
Samples are interleaved and compared by their medians; throughput ratio = peer time / engine time.

Target: engine >= 0.7x the raw pyarrow scan, for each format.
Usage: .venv/bin/python bench/tabular_bench.py [--quick] [--files 8] [--total-mb 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import benchlib
from benchlib import Ratio

MINI_BATCH = "64MB"
CHUNK_ROWS = 500_000
SCRIPT = "def run(mini_batch):\n    return mini_batch.iloc[:, 0].tolist()\n"


def _chunk(start: int, rows: int, seed: int) -> object:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    names = np.array([f"name_{i:04d}" for i in range(1000)], dtype=object)
    return pa.table(
        {
            "id": np.arange(start, start + rows, dtype=np.int64),
            "x": rng.random(rows),
            "y": rng.normal(size=rows),
            "z": rng.random(rows) * 1000.0,
            "k": rng.integers(0, 100_000, rows, dtype=np.int32),
            "name": names[rng.integers(0, 1000, rows)],
        }
    )


def generate(folder: Path, fmt: str, files: int, bytes_per_file: int, rows_per_chunk: int) -> tuple[int, int]:
    """Writes `files` files of about `bytes_per_file` each; returns (total bytes, total rows)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    total_rows = 0
    for f in range(files):
        path = folder / f"part-{f:03d}.{fmt}"
        first = _chunk(0, 10, 0)
        writer = (
            pq.ParquetWriter(str(path), first.schema)  # type: ignore[attr-defined]
            if fmt == "parquet"
            else pacsv.CSVWriter(str(path), first.schema)  # type: ignore[attr-defined]
        )
        try:
            seed = 0
            while not path.exists() or path.stat().st_size < bytes_per_file:
                table = _chunk(total_rows, rows_per_chunk, f * 100_003 + seed)
                if fmt == "parquet":
                    writer.write_table(table, row_group_size=rows_per_chunk)
                else:
                    writer.write_table(table)
                total_rows += table.num_rows
                seed += 1
        finally:
            writer.close()
    size = sum(p.stat().st_size for p in folder.iterdir())
    return size, total_rows


def scan_parquet(path: str) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_table(path).num_rows)


def scan_csv(path: str) -> int:
    import pyarrow.csv as pacsv

    return int(pacsv.read_csv(path).num_rows)


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=None, help="files per format (default 8, --quick 2)")
    parser.add_argument("--total-mb", type=int, default=None, help="MB per format (default 1024, --quick 20)")


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    started = benchlib.start(args)
    files = args.files or (2 if args.quick else 8)
    total_mb = args.total_mb or (20 if args.quick else 1024)
    rounds = benchlib.repeats(args, full=3, quick=1)
    chunk_rows = 50_000 if args.quick else CHUNK_ROWS

    from airflow_parallel_run.core import ParallelRunConfig, TabularDataset, run_job

    with benchlib.workdir(args, "tabular") as root:
        sizes: dict[str, tuple[int, int]] = {}
        for fmt in ("parquet", "csv"):
            seconds, sizes[fmt] = benchlib.timed(
                lambda fmt=fmt: generate(root / fmt, fmt, files, total_mb * 2**20 // files, chunk_rows)
            )
            benchlib.log(
                f"generated {fmt}: {sizes[fmt][0] / 2**20:.0f} MiB, {sizes[fmt][1]:,} rows in {seconds:.1f} s"
            )
        script = root / "first_column.py"
        script.write_text(SCRIPT)
        config = ParallelRunConfig(
            entry_script=str(script),
            mini_batch_size=MINI_BATCH,
            process_count_per_node=2,
            output_action="summary_only",
        )
        datasets = {
            "parquet": lambda: TabularDataset.from_parquet_files(str(root / "parquet")),
            "csv": lambda: TabularDataset.from_delimited_files(str(root / "csv")),
        }
        counter = iter(range(1_000_000))
        setup: dict[str, list[float]] = {"parquet": [], "csv": []}
        mini_batches: dict[str, int] = {}

        with benchlib.local_cluster(2) as client:

            def engine(fmt: str) -> float:
                n = next(counter)
                marks: dict[str, float] = {}
                t0 = time.perf_counter()
                summary = run_job(
                    config,
                    [datasets[fmt]()],
                    str(root / f"out{n}"),
                    client=client,
                    cache_dir=str(root / f"cache{n}"),
                    allow_reuse=False,
                    on_driver=lambda _d: marks.setdefault("driver", time.perf_counter()),
                )
                seconds = time.perf_counter() - t0
                assert summary["status"] == "succeeded", summary
                assert summary["succeeded_items"] == sizes[fmt][1], (summary, sizes[fmt])
                setup[fmt].append(marks.get("driver", t0) - t0)
                mini_batches[fmt] = int(summary["total_mini_batches"])
                return seconds

            def raw(fmt: str) -> float:
                paths = sorted(str(p) for p in (root / fmt).iterdir())
                scan = scan_parquet if fmt == "parquet" else scan_csv
                t0 = time.perf_counter()
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    rows = sum(pool.map(scan, paths, chunksize=1))
                seconds = time.perf_counter() - t0
                assert rows == sizes[fmt][1]
                return seconds

            samples = benchlib.interleaved(
                {
                    "engine_parquet": lambda: engine("parquet"),
                    "pyarrow_parquet": lambda: raw("parquet"),
                    "engine_csv": lambda: engine("csv"),
                    "pyarrow_csv": lambda: raw("csv"),
                },
                rounds,
            )

    med = benchlib.medians(samples)
    ratios = []
    extra: dict[str, object] = {}
    for fmt in ("parquet", "csv"):
        mib = sizes[fmt][0] / 2**20
        ratios.append(
            Ratio(
                f"engine vs pyarrow scan ({fmt})",
                med[f"pyarrow_{fmt}"] / med[f"engine_{fmt}"],
                0.7,
                ">=",
                f"{mib:.0f} MiB / {sizes[fmt][1]:,} rows in {files} files: engine "
                f"{mib / med[f'engine_{fmt}']:.0f} MiB/s vs pyarrow {mib / med[f'pyarrow_{fmt}']:.0f} MiB/s",
            )
        )
        extra[f"{fmt}_mib"] = round(mib, 1)
        extra[f"{fmt}_rows"] = sizes[fmt][1]
        extra[f"{fmt}_mini_batches"] = mini_batches.get(fmt)
        extra[f"{fmt}_engine_setup_s_median"] = round(sorted(setup[fmt])[len(setup[fmt]) // 2], 3)
    extra["note"] = (
        "engine_setup_s = run_job start until the JobDriver exists (listing, planning, fingerprints)"
    )
    benchlib.write_result(
        args,
        "tabular",
        started=started,
        params={
            "files_per_format": files,
            "mb_per_format": total_mb,
            "mini_batch_size": MINI_BATCH,
            "rounds": rounds,
        },
        ratios=ratios,
        samples=samples,
        extra=extra,
    )


if __name__ == "__main__":
    main()

"""Tabular scan: Parquet and CSV through the engine with a no-op run(), vs a raw pyarrow scan of the
same files with a 2-process pool.

Generated in a temp folder: `--files` files per format, about `--total-mb` MB per format (default
8 x 128 MB = 1 GiB each; --quick: 2 x 2 MB), columns id int64, three float64, an int32 and a short
string. The engine reads them as `TabularDataset.from_parquet_files` / `from_delimited_files` with
`mini_batch_size="64MB"`, `process_count_per_node=2`, `output_action="summary_only"`, and an entry
script whose run() returns the DataFrame's first column as a list (every row succeeds), on one Dask
LocalCluster (2 workers x 1 thread); fresh output and cache folders and `allow_reuse=False` per run.
Two peers, `multiprocessing.Pool(2).map` over the same files (one file per task):
- "hand-written": what a user would write instead of the engine: read the file with pyarrow
  (`pyarrow.parquet.read_table` / `pyarrow.csv.read_csv`), `to_pandas()`, call the *same* run() on
  the DataFrame and count what it returned;
- "pyarrow scan": the physical limit: the same pyarrow reads, returning only the row count.
A second engine side runs the same jobs with `batch_format="pyarrow"`: run() gets the Table as read and
returns its first column as a one-column Table (`mini_batch.select([0])`), converting nothing, as the raw scan
converts nothing; it is the like-for-like side against that peer (the pandas side pays `to_pandas()` and the
user's `tolist()`, which the raw scan does not).
Files are in the page cache for every side. Samples are interleaved and compared by their medians;
throughput ratio = peer time / engine time.

Targets, for each format: engine >= 0.9x the hand-written pool; engine and its pyarrow side >= 0.7x the raw
pyarrow scan.
Usage: .venv/bin/python bench/tabular_bench.py [--quick] [--files 8] [--total-mb 1024] [--repeats 3]
                                               [--data-dir DIR]

--data-dir keeps the generated files in DIR and reuses them on the next run with the same sizes (the
engine's output and cache folders still go to a fresh temp folder).
--compare-with DIR also measures the engine of another checkout on the same files (both sides: pandas and
batch_format="pyarrow"), interleaved in the same rounds (before, after, peer, ...): `git worktree add /tmp/before <commit>` then
`.venv/bin/python bench/tabular_bench.py --compare-with /tmp/before`. That engine runs in a child process
(PYTHONPATH=DIR) with its own 2-worker LocalCluster, idle while the other sides run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Ratio

MINI_BATCH = "64MB"
CHUNK_ROWS = 500_000
SCRIPT = "def run(mini_batch):\n    return mini_batch.iloc[:, 0].tolist()\n"
# The Arrow side's run(): batch_format="pyarrow" hands it the Table as read; it returns the first column as a
# one-column Table (no copy), one result row per input row, as the raw scan converts nothing either.
ARROW_SCRIPT = "def run(mini_batch):\n    return mini_batch.select([0])\n"


def _chunk(start: int, rows: int, seed: int) -> Any:
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


def _user_run() -> Any:
    """The entry script's run(), as the hand-written peer calls it (the same source as the engine's)."""
    namespace: dict[str, Any] = {}
    exec(SCRIPT, namespace)  # noqa: S102 - the bench's own constant
    return namespace["run"]


def by_hand_parquet(path: str) -> int:
    import pyarrow.parquet as pq

    return len(_user_run()(pq.read_table(path).to_pandas()))


def by_hand_csv(path: str) -> int:
    import pyarrow.csv as pacsv

    return len(_user_run()(pacsv.read_csv(path).to_pandas()))


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--files", type=int, default=None, help="files per format (default 8, --quick 2)")
    parser.add_argument("--total-mb", type=int, default=None, help="MB per format (default 1024, --quick 4)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep and reuse the generated files here")
    benchlib.add_compare_arguments(parser)


@contextlib.contextmanager
def _data_root(args: argparse.Namespace) -> Iterator[Path]:
    """The kept --data-dir, or a temp folder removed at the end."""
    if args.data_dir is None:
        with benchlib.workdir(args, "tabular") as root:
            yield root
        return
    args.data_dir.mkdir(parents=True, exist_ok=True)
    yield args.data_dir


def _generated(root: Path, fmt: str, files: int, total_mb: int, chunk_rows: int) -> tuple[int, int]:
    """Generates the files of one format, or reuses those a previous run left with the same parameters."""
    marker = root / f"{fmt}.json"
    wanted = {"files": files, "total_mb": total_mb, "chunk_rows": chunk_rows}
    if marker.exists():
        known = json.loads(marker.read_text())
        if known["params"] == wanted:
            benchlib.log(f"reusing {fmt} files in {root / fmt}")
            return int(known["bytes"]), int(known["rows"])
    benchlib.fast_rmtree(root / fmt)
    seconds, (size, rows) = benchlib.timed(
        lambda: generate(root / fmt, fmt, files, total_mb * 2**20 // files, chunk_rows)
    )
    benchlib.log(f"generated {fmt}: {size / 2**20:.0f} MiB, {rows:,} rows in {seconds:.1f} s")
    marker.write_text(json.dumps({"params": wanted, "bytes": size, "rows": rows}))
    return size, rows


class _Engine:
    """Runs the no-op job of this process's engine on one LocalCluster; `run(fmt)` returns its seconds."""

    def __init__(
        self,
        client: Any,
        data: Path,
        root: Path,
        sizes: dict[str, tuple[int, int]],
        batch_format: str = "pandas",
    ) -> None:
        from airflow_parallel_run.core import ParallelRunConfig

        self.client, self.data, self.root, self.sizes = client, data, root, sizes
        script = root / f"first_column_{batch_format}.py"
        script.write_text(ARROW_SCRIPT if batch_format == "pyarrow" else SCRIPT)
        self.config = ParallelRunConfig(
            entry_script=str(script),
            mini_batch_size=MINI_BATCH,
            process_count_per_node=2,
            output_action="summary_only",
            batch_format=batch_format,
        )
        self.prefix = "" if batch_format == "pandas" else f"{batch_format}-"
        self.counter = iter(range(1_000_000))
        self.setup: dict[str, list[float]] = {"parquet": [], "csv": []}
        self.mini_batches: dict[str, int] = {}

    def run(self, fmt: str) -> float:
        from airflow_parallel_run.core import TabularDataset, run_job

        n = next(self.counter)
        marks: dict[str, float] = {}

        def driver_ready(_driver: object) -> None:
            marks.setdefault("driver", time.perf_counter())

        dataset = (
            TabularDataset.from_parquet_files(str(self.data / "parquet"))
            if fmt == "parquet"
            else TabularDataset.from_delimited_files(str(self.data / "csv"))
        )
        t0 = time.perf_counter()
        summary = run_job(
            self.config,
            [dataset],
            str(self.root / f"{self.prefix}out{n}"),
            client=self.client,
            cache_dir=str(self.root / f"{self.prefix}cache{n}"),
            allow_reuse=False,
            on_driver=driver_ready,
        )
        seconds = time.perf_counter() - t0
        assert summary["status"] == "succeeded", summary
        assert summary["succeeded_items"] == self.sizes[fmt][1], (summary, self.sizes[fmt])
        self.setup[fmt].append(marks.get("driver", t0) - t0)
        self.mini_batches[fmt] = int(summary["total_mini_batches"])
        return seconds


def _serve(args: argparse.Namespace) -> None:
    """The --compare-with child: runs this checkout's engine on the parent's files (see benchlib.serve)."""
    request = json.loads(args.serve)
    sizes = {fmt: (int(v[0]), int(v[1])) for fmt, v in request["sizes"].items()}
    with benchlib.workdir(args, "tabular-other") as root, benchlib.local_cluster(2) as client:
        engines = {
            batch_format: _Engine(client, Path(request["data"]), root, sizes, batch_format=batch_format)
            for batch_format in ("pandas", "pyarrow")
        }

        def run(case: str) -> tuple[float, float]:  # "csv", or "pyarrow:csv" for the Arrow side
            batch_format, _, fmt = case.rpartition(":")
            engine = engines[batch_format or "pandas"]
            seconds = engine.run(fmt)
            return seconds, engine.setup[fmt][-1]

        benchlib.serve(run)


def _median(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2], 3) if values else float("nan")


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    if args.serve is not None:
        _serve(args)
        return
    started = benchlib.start(args)
    environ = dict(os.environ)  # before any LocalCluster adds its worker settings (see _Other)
    files = args.files or (2 if args.quick else 8)
    total_mb = args.total_mb or (4 if args.quick else 1024)
    rounds = benchlib.repeats(args, full=3, quick=1)
    chunk_rows = 10_000 if args.quick else CHUNK_ROWS

    engine_path = benchlib.engine_path()
    benchlib.log(f"engine imported from {engine_path}")
    other: benchlib.OtherEngine | None = None
    with _data_root(args) as data, benchlib.workdir(args, "tabular-run") as root:
        sizes = {fmt: _generated(data, fmt, files, total_mb, chunk_rows) for fmt in ("parquet", "csv")}

        def pooled(fmt: str, by_hand: bool) -> float:
            paths = sorted(str(p) for p in (data / fmt).iterdir())
            if by_hand:
                scan = by_hand_parquet if fmt == "parquet" else by_hand_csv
            else:
                scan = scan_parquet if fmt == "parquet" else scan_csv
            t0 = time.perf_counter()
            with multiprocessing.get_context("fork").Pool(2) as pool:
                rows = sum(pool.map(scan, paths, chunksize=1))
            seconds = time.perf_counter() - t0
            assert rows == sizes[fmt][1]
            return seconds

        with benchlib.local_cluster(2) as client:
            engine = _Engine(client, data, root, sizes)
            arrow = _Engine(client, data, root, sizes, batch_format="pyarrow")
            cases: dict[str, Any] = {}
            try:
                if args.compare_with is not None:
                    other = benchlib.OtherEngine(
                        args.compare_with, __file__, {"data": str(data), "sizes": sizes}, args, environ
                    )
                    benchlib.log(f"compared with the engine imported from {other.engine_path}")
                for fmt in ("parquet", "csv"):
                    if other is not None:
                        cases[f"other_engine_{fmt}"] = lambda fmt=fmt, other=other: other.run(fmt)
                    cases[f"engine_{fmt}"] = lambda fmt=fmt: engine.run(fmt)
                    if other is not None:
                        cases[f"other_arrow_engine_{fmt}"] = lambda fmt=fmt, other=other: other.run(
                            f"pyarrow:{fmt}"
                        )
                    cases[f"arrow_engine_{fmt}"] = lambda fmt=fmt: arrow.run(fmt)
                    cases[f"by_hand_{fmt}"] = lambda fmt=fmt: pooled(fmt, by_hand=True)
                    cases[f"pyarrow_{fmt}"] = lambda fmt=fmt: pooled(fmt, by_hand=False)
                swap = [
                    (f"other_{side}_{fmt}", f"{side}_{fmt}")
                    for fmt in ("parquet", "csv")
                    for side in ("engine", "arrow_engine")
                ]
                samples = benchlib.alternating(cases, rounds, swap)
            finally:
                if other is not None:
                    other.close()

    med = benchlib.medians(samples)
    ratios = []
    extra: dict[str, object] = {}
    for fmt in ("parquet", "csv"):
        mib = sizes[fmt][0] / 2**20
        ratios.append(
            Ratio(
                f"engine vs hand-written Pool(2) + pyarrow + run() ({fmt})",
                med[f"by_hand_{fmt}"] / med[f"engine_{fmt}"],
                0.9,
                ">=",
                f"the same run() on each file's DataFrame: {mib / med[f'by_hand_{fmt}']:.0f} MiB/s",
            )
        )
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
        ratios.append(
            Ratio(
                f"engine with batch_format='pyarrow' vs pyarrow scan ({fmt})",
                med[f"pyarrow_{fmt}"] / med[f"arrow_engine_{fmt}"],
                0.7,
                ">=",
                f"run() gets the Table as read and returns its first column: "
                f"{mib / med[f'arrow_engine_{fmt}']:.0f} MiB/s",
            )
        )
        extra[f"{fmt}_mib"] = round(mib, 1)
        extra[f"{fmt}_rows"] = sizes[fmt][1]
        extra[f"{fmt}_mini_batches"] = engine.mini_batches.get(fmt)
        extra[f"{fmt}_engine_setup_s_median"] = _median(engine.setup[fmt])
        if other is not None:
            ratios.append(
                Ratio(
                    f"compared engine vs pyarrow scan ({fmt})",
                    med[f"pyarrow_{fmt}"] / med[f"other_engine_{fmt}"],
                    0.7,
                    ">=",
                    f"the engine of {other.engine_path}, same rounds",
                )
            )
            ratios.append(
                Ratio(
                    f"compared engine with batch_format='pyarrow' vs pyarrow scan ({fmt})",
                    med[f"pyarrow_{fmt}"] / med[f"other_arrow_engine_{fmt}"],
                    0.7,
                    ">=",
                    f"the engine of {other.engine_path}, same rounds",
                )
            )
            extra[f"{fmt}_other_engine_setup_s_median"] = _median(other.setup.get(fmt, []))
    extra["engine_path"] = engine_path
    if other is not None:
        extra["other_engine_path"] = other.engine_path
    extra["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
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
            "compare_with": str(args.compare_with) if args.compare_with else None,
        },
        ratios=ratios,
        samples=samples,
        extra=extra,
    )


if __name__ == "__main__":
    main()

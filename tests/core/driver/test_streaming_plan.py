"""Streaming planning (core/driver/planning.py): a file job's first mini-batches run while its inputs are
still being listed, and the job gives what the whole-plan path gives.

The listing is made slow deterministically: `_folder_rows` (core/inputs/listing.py) is wrapped so that
listing a chosen folder waits until the entry script's first run() left a marker file. Without streaming
that wait never ends (no attempt starts before the plan is whole): the gate gives up after `GATE_S` and
fails the listing, so each of these tests fails instead of hanging.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver.loop import JobDriver
from airflow_parallel_run.core.inputs import listing

GATE_S = 60.0

# run() leaves a marker (its first call) where the gate looks for it: the path comes in MARKER.
MARKED_ECHO = """
import os
def run(mini_batch):
    marker = os.environ["MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""

ECHO = """
import os
def run(mini_batch):
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""


class Gate:
    """Holds the listing of `folder` until `marker` exists (the first run() started); records when it let
    the listing go on. `then` runs once the marker is seen (a cancel); `hold` keeps the listing held
    after that until it is set (a listing that never ends)."""

    def __init__(self, folder: Path, marker: Path) -> None:
        self.folder = str(folder)
        self.marker = marker
        self.released_at: float | None = None
        self.then: Callable[[], None] | None = None
        self.hold: threading.Event | None = None

    def wait(self) -> None:
        deadline = time.monotonic() + GATE_S
        while not self.marker.exists():
            if time.monotonic() > deadline:
                raise OSError(f"no attempt started while {self.folder} was being listed")
            time.sleep(0.01)
        self.released_at = time.time()
        if self.then is not None:
            self.then()
        if self.hold is not None:
            self.hold.wait(GATE_S)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, Path], Gate]]:
    gates: list[Gate] = []
    original = listing._folder_rows

    def rows(folder: str, identities: bool) -> list[tuple[Any, ...]]:
        for g in gates:
            if os.path.abspath(folder) == g.folder:
                g.wait()
        return original(folder, identities)

    monkeypatch.setattr(listing, "_folder_rows", rows)

    def make(folder: Path, marker: Path) -> Gate:
        g = Gate(folder, marker)
        gates.append(g)
        return g

    yield make
    for g in gates:  # a listing still held ends
        if g.hold is not None:
            g.hold.set()


def tree(root: Path, folders: int, per_folder: int) -> Path:
    """`folders` sub-folders a, b, ... of `per_folder` files each, every file holding its name."""
    for f in range(folders):
        sub = root / chr(ord("a") + f)
        sub.mkdir(parents=True)
        for i in range(per_folder):
            (sub / f"x{i:03d}.txt").write_text(f"{sub.name}{i}\n")
    return root


def attempt_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def start_time(row: dict[str, str]) -> float:
    when = dt.datetime.strptime(row["Start Time (UTC)"], "%Y-%m-%d %H:%M:%S.%f")
    return when.replace(tzinfo=dt.timezone.utc).timestamp()


def config(script: str, **kw: Any) -> ParallelRunConfig:
    kw.setdefault("process_count_per_node", 2)
    kw.setdefault("environment_variables", {"MARKER": "/nonexistent/marker"})
    return ParallelRunConfig(entry_script=script, **kw)


def test_first_mini_batch_starts_before_the_listing_ends(
    dask_client: Client, write_script: Callable[..., str], gate: Callable[[Path, Path], Gate], tmp_path: Path
) -> None:
    root = tree(tmp_path / "in", 3, 4)
    marker = tmp_path / "first-run"
    held = gate(root / "c", marker)  # the last folder is listed only once run() has started
    summary = run_job(
        config(write_script(MARKED_ECHO), mini_batch_size=2, environment_variables={"MARKER": str(marker)}),
        [FileDataset.from_files(str(root))],
        str(tmp_path / "out"),
        client=dask_client,
        cache_dir=str(tmp_path / "cache"),
    )
    assert summary["status"] == "succeeded", summary
    assert (summary["total_items"], summary["total_mini_batches"]) == (12, 6), summary
    assert held.released_at is not None
    first = min(start_time(r) for r in attempt_rows(tmp_path / "out"))
    assert first < held.released_at, (first, held.released_at)  # the listing ended after the release
    expected = "".join(f"x{i:03d}.txt {f}{i}\n" for f in "abc" for i in range(4))
    assert Path(summary["append_row_file"]).read_text() == expected
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert master.index("the inputs are being listed") < master.index("6 mini-batches, 12 items"), master
    progress = (tmp_path / "out" / "logs" / "job_progress_overview.txt").read_text()
    assert "Reuse: 0 of 6 mini-batches reused" in progress, progress


def _shape(kind: str, root: Path, rng: random.Random) -> tuple[list[FileDataset], dict[str, Any]]:
    """An input of one shape, with random file counts (empty sub-folders and nesting included)."""
    if kind == "nested":
        for f in range(rng.randint(1, 4)):
            sub = root / f"d{f}" / ("deep" if f % 2 else "")
            sub.mkdir(parents=True, exist_ok=True)
            (root / f"d{f}" / "empty").mkdir(exist_ok=True)
            for i in range(rng.randint(1, 9)):
                (sub / f"n{i}.txt").write_text(f"{f}.{i}\n")
        return [FileDataset.from_files(str(root))], {}
    if kind == "two_inputs":
        first, second = tree(root / "one", rng.randint(1, 3), rng.randint(1, 5)), tree(root / "two", 2, 3)
        return [FileDataset.from_files(str(first)), FileDataset.from_files(str(second))], {}
    if kind == "glob_and_list":
        folder = tree(root / "g", 2, rng.randint(2, 6))
        files = sorted(str(p) for p in (folder / "b").iterdir())
        return [FileDataset.from_files([str(folder / "a" / "*.txt"), *files])], {}
    if kind == "partitions":
        for p in range(rng.randint(1, 3)):
            for i in range(rng.randint(1, 4)):
                (root / f"p{p}").mkdir(parents=True, exist_ok=True)
                (root / f"p{p}" / f"v{i}.txt").write_text(f"{p}-{i}\n")
        dataset = FileDataset.from_files(str(root), partition_format="p{p}/{name}.txt")
        return [dataset], {"partition_keys": ["p"]}
    raise AssertionError(kind)


def _comparable(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    record = json.loads((out / "logs" / "sys" / "job.json").read_text())
    kept = {
        k: v for k, v in summary.items() if k not in ("output", "append_row_file", "logs_dir", "duration_s")
    }
    output = Path(summary["append_row_file"]).read_bytes() if summary["append_row_file"] else None
    return {
        "summary": kept,
        "output": output,
        "keys": record["keys"],
        "plan": record["plan"],
        "fingerprints": record["fingerprints"],
    }


@pytest.mark.parametrize(
    ("kind", "size", "seed"),
    [("nested", 1, 1), ("nested", 4, 2), ("two_inputs", 3, 3), ("glob_and_list", 5, 4), ("partitions", 2, 5)],
)
def test_streaming_gives_what_the_whole_plan_gives(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path, kind: str, size: int, seed: int
) -> None:
    """Output bytes, summary, reuse keys, plan and fingerprints: the same with and without streaming."""
    inputs, extra = _shape(kind, tmp_path / "in", random.Random(seed))
    script = write_script(ECHO)
    cfg = config(script, mini_batch_size=size, append_row_format="jsonl", **extra)
    streamed = run_job(cfg, inputs, str(tmp_path / "s"), client=dask_client, cache_dir=str(tmp_path / "c1"))
    whole = JobDriver(cfg, inputs, str(tmp_path / "w"), cache_dir=str(tmp_path / "c2"))  # stream_plan=False
    try:
        assert not whole.streaming
        summary = whole.execute(dask_client)
    finally:
        whole.release()
    assert streamed["status"] == "succeeded", streamed
    assert _comparable(tmp_path / "s", streamed) == _comparable(tmp_path / "w", summary)


def test_a_listing_error_after_work_began_fails_the_job_with_its_message(
    dask_client: Client, write_script: Callable[..., str], gate: Callable[[Path, Path], Gate], tmp_path: Path
) -> None:
    root = tree(tmp_path / "in", 3, 4)
    os.symlink(tmp_path / "nowhere", root / "c" / "x999.txt")  # dangling: the listing of c refuses it
    marker = tmp_path / "first-run"
    held = gate(root / "c", marker)
    cfg = config(write_script(MARKED_ECHO), mini_batch_size=2, environment_variables={"MARKER": str(marker)})
    out, cache = tmp_path / "out", str(tmp_path / "cache")
    summary = run_job(cfg, [FileDataset.from_files(str(root))], str(out), client=dask_client, cache_dir=cache)
    assert held.released_at is not None
    assert summary["status"] == "failed", summary
    assert "is not a readable file or folder (a dangling symlink" in summary["message"], summary
    assert str(root / "c" / "x999.txt") in summary["message"]
    assert "not listed to the end" in summary["message"]
    assert summary["append_row_file"] is None and not (out / "parallel_run_step.txt").exists()
    assert not (out / "logs" / "sys" / "job.json").exists()  # no re-run of a partial plan
    assert "Job failed" in (out / "logs" / "job_result.txt").read_text()
    # committed mini-batches stay in the cache: with the symlink gone, a new run reuses them
    (root / "c" / "x999.txt").unlink()
    again = run_job(cfg, [FileDataset.from_files(str(root))], str(out), client=dask_client, cache_dir=cache)
    assert again["status"] == "succeeded", again
    assert again["reused_mini_batches"] >= 1, again


def test_an_unchanged_rerun_reuses_everything_without_a_cluster(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path
) -> None:
    root = tree(tmp_path / "in", 4, 5)
    cfg = config(write_script(ECHO), mini_batch_size=3)
    inputs, cache = [FileDataset.from_files(str(root))], str(tmp_path / "cache")
    first = run_job(cfg, inputs, str(tmp_path / "o1"), client=dask_client, cache_dir=cache)
    assert first["status"] == "succeeded" and first["reused_mini_batches"] == 0, first
    # no client and a scheduler nobody listens on: connecting would fail the job
    second = run_job(cfg, inputs, str(tmp_path / "o2"), scheduler="tcp://127.0.0.1:9", cache_dir=cache)
    assert second["status"] == "succeeded", second
    assert second["reused_mini_batches"] == second["total_mini_batches"] == 7, second
    assert (tmp_path / "o1" / "parallel_run_step.txt").read_bytes() == (
        tmp_path / "o2" / "parallel_run_step.txt"
    ).read_bytes()
    keys = [
        json.loads((tmp_path / o / "logs" / "sys" / "job.json").read_text())["keys"] for o in ("o1", "o2")
    ]
    assert keys[0] == keys[1]
    progress = (tmp_path / "o2" / "logs" / "job_progress_overview.txt").read_text()
    assert "Reuse: 7 of 7 mini-batches reused" in progress, progress


def test_cancel_while_listing_stops_the_job_in_bounded_time(
    dask_client: Client, write_script: Callable[..., str], gate: Callable[[Path, Path], Gate], tmp_path: Path
) -> None:
    root = tree(tmp_path / "in", 3, 4)
    marker = tmp_path / "first-run"
    held = gate(root / "c", marker)
    held.hold = threading.Event()  # the listing of c never ends by itself
    drivers: list[JobDriver] = []
    held.then = lambda: drivers[0].cancel("cancelled by the test")
    out = tmp_path / "out"
    started = time.monotonic()
    summary = run_job(
        config(write_script(MARKED_ECHO), mini_batch_size=2, environment_variables={"MARKER": str(marker)}),
        [FileDataset.from_files(str(root))],
        str(out),
        client=dask_client,
        cache_dir=str(tmp_path / "cache"),
        on_driver=drivers.append,
    )
    took = time.monotonic() - started
    assert held.released_at is not None
    assert summary["status"] == "failed", summary
    assert summary["message"].startswith("Job failed: cancelled by the test"), summary
    assert "not listed to the end" in summary["message"]
    assert summary["total_mini_batches"] <= 4, summary  # a and b listed, c never
    assert took < GATE_S / 2, took  # the held listing is not waited for
    assert not (out / "parallel_run_step.txt").exists() and not (out / "logs" / "sys" / "job.json").exists()
    assert "Stopped at" in (out / "logs" / "job_result.txt").read_text()

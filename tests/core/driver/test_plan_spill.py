"""A streaming job keeps its plan on disk (core/plan/store.py): what it writes must be byte for byte what
the whole-plan path, which holds every mini-batch, key and fingerprint in RAM, writes for the same job:
logs/sys/job.json, logs/sys/job_report/failed_items.jsonl, the output file and the reuse cache's job
manifest, over inputs with odd file names (newlines, tabs, non-ASCII, very long names; names that are not
UTF-8 are refused by the listing, and the store's own tests cover them), the same file in two inputs,
failed and partly failed mini-batches."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from distributed import Client

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver.loop import JobDriver
from airflow_parallel_run.core.logs.failed_items import FAILED_ITEMS_FILE
from airflow_parallel_run.core.logs.job_record import JOB_RECORD_FILE
from airflow_parallel_run.core.plan import store as plan_store
from airflow_parallel_run.core.plan.store import PlanStore

# a mini-batch with a "bad" file raises; one with a "short" file returns a result fewer than its items;
# one with "item" marks its first item failed (the re-run's per-item path)
SCRIPT = """
import os
from airflow_parallel_run import ItemFailed
def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if any("bad" in n for n in names):
        raise ValueError("bad file in " + ascii(names))
    if any("short" in n for n in names):
        return [ascii(n) for n in names[1:]]
    if any("item" in n for n in names):
        return [ItemFailed("marked")] + [ascii(n) for n in names[1:]]
    return [ascii(n) for n in names]
"""


def _odd_tree(root: Path) -> list[Path]:
    """Folders of files with odd names; returns the folders."""
    names = [
        "plain.txt",
        "with\nnewline.txt",
        "tab\tand\u2028separator.txt",
        "caf\u00e9-\u65e5\u672c.txt",
        "x" * 240 + ".txt",
        "bad-one.txt",
        "short-one.txt",
        "item-one.txt",
        'quote"back\\slash.txt',
    ]
    folders = []
    for f, sub in enumerate(["a", "b" * 200, "c"]):
        folder = root / sub
        folder.mkdir(parents=True)
        for i, name in enumerate(names):
            if (i + f) % 3 == 0 and "bad" in name and f == 2:
                continue
            (folder / f"{f}{name}").write_text(f"{sub}{i}\n")
        folders.append(folder)
    return folders


def _bytes(out: Path, summary: dict[str, Any], job_id: str, cache: Path) -> dict[str, Any]:
    logs = out / "logs"
    record = (logs / JOB_RECORD_FILE).read_bytes().replace(json.dumps(str(cache)).encode(), b'"<cache>"')
    manifests = sorted((cache / "jobs").iterdir())
    return {
        "status": summary["status"],
        "counts": {k: v for k, v in summary.items() if k.endswith(("_items", "_mini_batches"))},
        "job.json": record,
        "failed_items": (logs / FAILED_ITEMS_FILE).read_bytes(),
        "output": Path(summary["append_row_file"]).read_bytes() if summary["append_row_file"] else None,
        "manifest": [m.read_bytes() for m in manifests],
    }


def spill_everything(patch: pytest.MonkeyPatch) -> None:
    """Plan stores made from now on hold nothing in RAM: every mini-batch and fingerprint goes to disk."""
    for name in ("HOLD_MINI_BATCHES", "HOLD_UNITS", "HOLD_FINGERPRINTS"):
        patch.setattr(plan_store, name, 0)


@pytest.mark.parametrize("held", [False, True], ids=["spilled", "held"])
@pytest.mark.parametrize("size", [1, 4])
@pytest.mark.parametrize("output", ["jsonl", "csv", "parquet"])
def test_the_spilled_plan_writes_what_the_whole_plan_writes(
    dask_client: Client,
    write_script: Callable[..., str],
    tmp_path: Path,
    size: int,
    output: str,
    held: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The streaming plan, spilled to disk or held in RAM (a plan this small is, by default), writes the
    bytes the whole-plan path writes."""
    if not held:
        spill_everything(monkeypatch)
    folders = _odd_tree(tmp_path / "in")
    inputs = [
        FileDataset.from_files([str(folders[0]), str(folders[1])]),
        FileDataset.from_files([str(folders[2]), str(folders[0] / "0plain.txt")]),  # a file in two inputs
    ]
    cfg = ParallelRunConfig(
        entry_script=write_script(SCRIPT),
        mini_batch_size=size,
        process_count_per_node=2,
        run_max_try=1,
        append_row_format=output,
    )
    streamed = run_job(
        cfg, inputs, str(tmp_path / "s"), client=dask_client, cache_dir=str(tmp_path / "c1"), job_id="j1"
    )
    whole = JobDriver(cfg, inputs, str(tmp_path / "w"), cache_dir=str(tmp_path / "c2"), job_id="j1")
    try:
        assert not whole.streaming
        summary = whole.execute(dask_client)
    finally:
        whole.release()
    assert streamed["failed_items"] > 0 and streamed["succeeded_items"] > 0, streamed
    got = _bytes(tmp_path / "s", streamed, "j1", tmp_path / "c1")
    want = _bytes(tmp_path / "w", summary, "j1", tmp_path / "c2")
    assert got == want
    assert b"\\n" in got["job.json"] and b"\\u65e5" in got["job.json"]  # the odd names are in it


def _small_job(tmp_path: Path, script: str, client: Client, files: int, size: int) -> dict[str, Any]:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(files):
        (root / f"f{i}.txt").write_text("x\n")
    cfg = ParallelRunConfig(entry_script=script, mini_batch_size=size, process_count_per_node=2)
    return run_job(
        cfg,
        [FileDataset.from_files(str(root))],
        str(tmp_path / "o"),
        client=client,
        cache_dir=str(tmp_path / "c"),
    )


@pytest.fixture
def spill_folders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders of the plan stores made meanwhile."""
    folders: list[str] = []
    original = PlanStore.__init__

    def remember(self: PlanStore, kind: str, job_id: str) -> None:
        original(self, kind, job_id)
        folders.append(self.folder)

    monkeypatch.setattr(PlanStore, "__init__", remember)
    return folders


def test_the_spill_is_removed_when_the_job_ends(
    dask_client: Client, write_script: Callable[..., str], tmp_path: Path, spill_folders: list[str]
) -> None:
    summary = _small_job(tmp_path, write_script(SCRIPT), dask_client, files=6, size=2)
    assert summary["status"] == "succeeded"
    assert len(spill_folders) == 1 and not os.path.exists(spill_folders[0])


def test_a_spill_damaged_while_the_job_runs_fails_the_job(
    dask_client: Client,
    write_script: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spill_folders: list[str],
) -> None:
    """A mini-batch read back from a damaged spill is never run as something else: the job fails."""
    spill_everything(monkeypatch)
    original = PlanStore.append

    def append_then_damage(self: PlanStore, mb: Any) -> None:
        original(self, mb)
        if mb.index == 3:
            path = os.path.join(self.folder, "plan.bin")
            with open(path, "r+b") as handle:
                handle.seek(os.path.getsize(path) - 5)
                handle.write(b"XXXXX")

    monkeypatch.setattr(PlanStore, "append", append_then_damage)
    summary = _small_job(tmp_path, write_script(SCRIPT), dask_client, files=8, size=1)
    assert summary["status"] == "failed", summary
    assert "is not what the job wrote there" in summary["message"], summary
    assert summary["append_row_file"] is None
    assert not list((tmp_path / "o").glob("*.txt"))  # no output file
    assert not list((tmp_path / "o" / "logs" / "sys").glob("**/*.tmp-*"))  # no half-written record
    assert len(spill_folders) == 1 and not os.path.exists(spill_folders[0])


def test_the_embedded_cluster_keeps_no_mini_batch_of_finished_tasks(
    write_script: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded cluster's workers live in the driver's process: the tasks they ran must not keep
    their mini-batches there (Dask's low-level event log kept the last 1,000 tasks' arguments). The plan
    is spilled, so that only what the cluster keeps is counted (a plan this small is held in RAM)."""
    from airflow_parallel_run.core.driver import loop

    spill_everything(monkeypatch)
    from airflow_parallel_run.core.minibatch import MiniBatch

    alive: list[int] = []
    original = loop.finish_job

    def count_then_finish(driver: JobDriver) -> dict[str, Any]:
        gc.collect()
        alive.append(  # this job's (other tests in this process may leave theirs)
            sum(
                1
                for o in gc.get_objects()
                if isinstance(o, MiniBatch) and o.files and o.files[0].url.startswith(str(root))
            )
        )
        return original(driver)

    monkeypatch.setattr(loop, "finish_job", count_then_finish)
    root = tmp_path / "in"
    root.mkdir()
    for i in range(150):
        (root / f"f{i:03d}.txt").write_text("x\n")
    cfg = ParallelRunConfig(  # speculative execution: one attempt per Dask task (none fused)
        entry_script=write_script(SCRIPT),
        mini_batch_size=1,
        process_count_per_node=2,
        speculative_execution=True,
    )
    summary = run_job(
        cfg, [FileDataset.from_files(str(root))], str(tmp_path / "o"), cache_dir=str(tmp_path / "c")
    )
    assert summary["status"] == "succeeded" and summary["total_mini_batches"] == 150, summary
    assert alive and alive[0] <= 40, alive  # a few in flight at the end, not the 150 the job ran

"""A local side input (a model) that changes while the job runs: the job's cache key names the bytes it had
when the job started, so no result computed after the change may be output or cached under that key. Each
attempt whose side inputs are not those bytes when its run() returned fails with `DataChangedError`, once; a
side input touched or copied over with the same bytes is fine.

Before the check, the changed model's results were output and cached under the old model's key: putting the
old model back and running again served them as its results."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from change_once import change_once

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

# The first run() call changes the side input and every run() waits until it has, then reads the model:
# every attempt's check comes after the change (tests/change_once.py).
HEADER = """
import os, time
MODEL, ARMED, MARK = {model!r}, {armed!r}, {mark!r}
"""
RUN = """
def _model():
    path = MODEL if os.path.isfile(MODEL) else os.path.join(MODEL, "weights.txt")
    return open(path).read().strip()

{define} run(mini_batch):
    _change()
    return [os.path.basename(p) + "=" + _model() for p in mini_batch]
"""
SAME_SIZE_EDIT = 'open(MODEL, "w").write("B\\n")  # same size and inode: only mtime_ns and the bytes differ'
TOUCH = "st = os.stat(MODEL); os.utime(MODEL, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))"
NEW_FILE = 'open(os.path.join(MODEL, "extra.txt"), "w").write("x")  # a file added to the model folder'


def _script(
    write_script: Any, tmp_path: Path, model: Path, change: str, define: str = "def"
) -> tuple[str, Path]:
    armed = tmp_path / "armed"
    armed.touch()
    text = (
        HEADER.format(model=str(model), armed=str(armed), mark=str(tmp_path / "changed"))
        + change_once(change)
        + RUN.format(define=define)
    )
    return write_script(text), armed


def _job(script: str, root: Path, model: Path, out: Path, client: Any, **config: Any) -> dict[str, Any]:
    settings = {"mini_batch_size": 1, "process_count_per_node": 2, "run_max_try": 3, "error_threshold": -1}
    return run_job(
        ParallelRunConfig(entry_script=script, **{**settings, **config}),
        [FileDataset.from_files(str(root))],
        str(out),
        side_inputs=[str(model)],
        client=client,
    )


def _failed(out: Path) -> list[dict[str, str]]:
    with open(
        out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="", encoding="utf-8"
    ) as handle:
        return [row for row in csv.DictReader(handle) if row["Status"] != "RUN_DONE"]


@pytest.mark.parametrize("define", ["def", "async def"])
def test_a_side_input_changed_while_the_job_ran_fails_the_attempts_after_it_and_is_never_reused(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, define
) -> None:
    root, model = files(4), tmp_path / "model.txt"
    model.write_text("A\n")
    script, armed = _script(write_script, tmp_path, model, SAME_SIZE_EDIT, define)
    first = _job(script, root, model, tmp_path / "o1", dask_client)
    assert first["failed_mini_batches"] == 4 and first["status"] == "failed", first
    failed = _failed(tmp_path / "o1")
    assert len(failed) == 4, failed  # one attempt each: not retried (it would use the same changed model)
    for row in failed:
        assert row["Status"] == "LOAD_EXCEPTION", row
        assert f"side input {model} changed after the job fingerprinted it" in row["Error Message"], row
    assert not (tmp_path / "o1" / "parallel_run_step.txt").exists()

    # the old model back: every mini-batch runs (nothing was cached under its key) and uses it
    model.write_text("A\n")
    assert not armed.exists()
    second = _job(script, root, model, tmp_path / "o2", dask_client)
    assert second["status"] == "succeeded" and second["reused_mini_batches"] == 0, second
    lines = sorted((tmp_path / "o2" / "parallel_run_step.txt").read_text().split())
    assert lines == [f"f{i:03d}.txt=A" for i in range(4)]


def test_a_side_input_touched_with_the_same_bytes_is_fine(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, model = files(4), tmp_path / "model.txt"
    model.write_text("A\n")
    script, _armed = _script(write_script, tmp_path, model, TOUCH)
    first = _job(script, root, model, tmp_path / "o1", dask_client)
    assert first["status"] == "succeeded" and first["failed_mini_batches"] == 0, first
    second = _job(script, root, model, tmp_path / "o2", dask_client)
    assert second["reused_mini_batches"] == 4, second


def test_a_file_added_to_a_side_input_folder_fails_the_attempts_after_it(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, model = files(3), tmp_path / "model"
    model.mkdir()
    (model / "weights.txt").write_text("A\n")
    script, _armed = _script(write_script, tmp_path, model, NEW_FILE)
    summary = _job(script, root, model, tmp_path / "o", dask_client)
    assert summary["failed_mini_batches"] == 3, summary
    assert all("its bytes differ" in row["Error Message"] for row in _failed(tmp_path / "o"))
    os.remove(model / "extra.txt")


CODE_IN_SIDE_INPUT = """
import os, sys
sys.dont_write_bytecode = False  # Python's default (a test environment may turn it off)
sys.path.insert(0, {folder!r})
import modelcode

def run(mini_batch):
    # as another process importing the side input's code would: Python writes into its __pycache__
    os.makedirs(os.path.join({folder!r}, "__pycache__"), exist_ok=True)
    with open(os.path.join({folder!r}, "__pycache__", f"other.{{os.getpid()}}.pyc"), "wb") as pyc:
        pyc.write(b"bytecode")
    return [os.path.basename(p) + "=" + modelcode.VALUE for p in mini_batch]
"""


def test_a_side_input_folder_whose_code_the_script_imports_is_keyed_and_unchanged(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    """Its `__pycache__`, written as the processes import it, is not a change of the side input; its module
    is keyed code (the side input's bytes are in the key), so the results are cached; and an edit is run as
    edited, even one CPython's bytecode cache would not see (core/worker/side_code.py)."""
    root, model = files(3), tmp_path / "model"
    model.mkdir()
    (model / "modelcode.py").write_text('VALUE = "m1"\n')
    # a .pyc of this version, as an import outside the job leaves it (CPython records the source's size and
    # mtime in whole seconds)
    code = (
        f"import sys; sys.dont_write_bytecode = False; sys.path.insert(0, {str(model)!r}); import modelcode"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert list((model / "__pycache__").glob("modelcode.*.pyc")), "the stale .pyc to be"
    script = write_script(CODE_IN_SIDE_INPUT.format(folder=str(model)))
    said: list[str] = []
    config = ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2)

    def job(out: Path) -> dict[str, Any]:
        return run_job(
            config,
            [FileDataset.from_files(str(root))],
            str(out),
            side_inputs=[str(model)],
            client=dask_client,
            progress=said.append,
        )

    first = job(tmp_path / "o1")
    assert first["status"] == "succeeded" and first["failed_mini_batches"] == 0, first
    assert len(list((model / "__pycache__").glob("other.*.pyc"))) >= 1, "the scenario: written during the job"
    assert not [line for line in said if "is not cached" in line], said
    assert job(tmp_path / "o2")["reused_mini_batches"] == 3
    # the same size, within the same second as the version Python cached (CPython would take its .pyc as
    # current and run the old code); a nanosecond later, so the fingerprints' memo sees the change
    before = os.stat(model / "modelcode.py").st_mtime_ns
    (model / "modelcode.py").write_text('VALUE = "m2"\n')
    same_second = before - before % 10**9 + (before + 1) % 10**9
    os.utime(model / "modelcode.py", ns=(same_second, same_second))
    third = job(tmp_path / "o3")
    assert third["reused_mini_batches"] == 0, third
    lines = sorted((tmp_path / "o3" / "parallel_run_step.txt").read_text().split())
    assert lines == [f"f{i:03d}.txt=m2" for i in range(3)]

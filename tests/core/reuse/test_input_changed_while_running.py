"""An input file that changes after the job fingerprinted it and before its mini-batch commits: run() may have
read other bytes than the ones its cache key (and the job's record) names. Such a result is never output and
never cached (the mini-batch fails, naming the file, and is not retried: another try reads the same changed
file under the same stale key); a file whose bytes are the same after all (touched, copied over) is fine.

Before the check, the changed run's output was cached under the old content's key: putting the old content
back and running again served the changed content's result as a success."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job

# While ARMED exists, f000's run() changes f003 and f003's run() waits until it has (two processes: the waiter
# never blocks the changer). Neither file is an input of the job, so neither enters its key.
CHANGER = """
import os, time
MARK, ARMED = {mark!r}, {armed!r}
def run(mini_batch):
    out = []
    for path in mini_batch:
        name = os.path.basename(path)
        if name == "f000.txt" and os.path.exists(ARMED):
            target = os.path.join(os.path.dirname(path), "f003.txt")
            {change}
            open(MARK, "w").close()
        if name == "f003.txt" and os.path.exists(ARMED):
            deadline = time.monotonic() + 60
            while not os.path.exists(MARK) and time.monotonic() < deadline:
                time.sleep(0.02)
        out.append(name + "=" + open(path).read().strip())
    return out
"""

SAME_SIZE_EDIT = 'open(target, "w").write("9\\n")  # same size and inode: only mtime_ns and the bytes differ'
TOUCH = "st = os.stat(target); os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))"


def _armed(files: Any, tmp_path: Path, change: str) -> tuple[Path, Path, str]:
    """Four input files, the ARMED file created, and the CHANGER script's text with `change`."""
    root, armed = files(4), tmp_path / "armed"
    armed.touch()
    return root, armed, CHANGER.format(mark=str(tmp_path / "changed.mark"), armed=str(armed), change=change)


def _job(script: str, root: Path, out: Path, client: Any) -> dict[str, Any]:
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=1, process_count_per_node=2, run_max_try=3, error_threshold=-1
    )
    return run_job(config, [FileDataset.from_files(str(root))], str(out), client=client)


def _lines(out: Path) -> list[str]:
    return sorted((out / "parallel_run_step.txt").read_text().split())


def _rows(out: Path) -> list[dict[str, str]]:
    with open(
        out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="", encoding="utf-8"
    ) as handle:
        return list(csv.DictReader(handle))


def test_a_file_changed_before_its_run_read_it_fails_its_mini_batch_and_is_never_reused(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, armed, text = _armed(files, tmp_path, SAME_SIZE_EDIT)
    script = write_script(text)
    first = _job(script, root, tmp_path / "o1", dask_client)
    assert first["failed_mini_batches"] == 1 and first["succeeded_mini_batches"] == 3, first
    output = (tmp_path / "o1" / "parallel_run_step.txt").read_text()
    assert "f003.txt=9" not in output, "a result read from bytes the job's key does not name was output"
    failed = [row for row in _rows(tmp_path / "o1") if row["Status"] != "RUN_DONE"]
    assert len(failed) == 1, failed  # one attempt: not retried (it would read the same changed file)
    assert "f003.txt" in failed[0]["Error Message"]
    assert "changed after the job fingerprinted it" in failed[0]["Error Message"], failed

    # the old bytes back: the mini-batch runs again (nothing was cached for it), and reads them
    (root / "f003.txt").write_text("3\n")
    os.remove(armed)
    second = _job(script, root, tmp_path / "o2", dask_client)
    assert second["status"] == "succeeded", second
    assert second["reused_mini_batches"] == 3, second
    assert _lines(tmp_path / "o2") == [f"f{i:03d}.txt={i}" for i in range(4)]


def test_an_async_run_that_read_a_changed_file_fails_its_mini_batch(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    """The same with `async def run()`: its process reports the files' identity from another code path."""
    root, _armed_file, text = _armed(files, tmp_path, SAME_SIZE_EDIT)
    script = write_script(
        text.replace("def run(", "async def run(")
        .replace("time.sleep(0.02)", "await asyncio.sleep(0.02)")
        .replace("import os, time", "import asyncio, os, time")
    )
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=1, process_count_per_node=2, max_concurrency_per_process=2
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o"), client=dask_client)
    assert summary["failed_mini_batches"] == 1 and summary["succeeded_mini_batches"] == 3, summary
    assert "f003.txt=9" not in _lines(tmp_path / "o")


def test_a_file_touched_with_the_same_bytes_is_still_output_and_cached(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, armed, text = _armed(files, tmp_path, TOUCH)
    script = write_script(text)
    first = _job(script, root, tmp_path / "o1", dask_client)
    assert first["status"] == "succeeded" and first["failed_mini_batches"] == 0, first
    os.remove(armed)
    second = _job(script, root, tmp_path / "o2", dask_client)
    assert second["reused_mini_batches"] == 4, second
    assert _lines(tmp_path / "o2") == [f"f{i:03d}.txt={i}" for i in range(4)]


def test_a_run_that_deletes_its_input_keeps_its_result_uncached(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    """run() read the file before it went (the consume-and-delete pattern): output, but not cached, since
    nothing can tell which bytes it read."""
    root, armed = files(3), tmp_path / "armed"
    armed.touch()
    script = write_script(f"""
        import os
        def run(mini_batch):
            out = [os.path.basename(p) + "=" + open(p).read().strip() for p in mini_batch]
            if os.path.exists({str(armed)!r}) and os.path.basename(mini_batch[0]) == "f001.txt":
                os.remove(mini_batch[0])
            return out
    """)
    first = _job(script, root, tmp_path / "o1", dask_client)
    assert first["status"] == "succeeded" and first["succeeded_mini_batches"] == 3, first
    assert _lines(tmp_path / "o1") == [f"f{i:03d}.txt={i}" for i in range(3)]
    master = (tmp_path / "o1" / "logs" / "sys" / "master_role.txt").read_text()
    assert "mini-batch 1 is not cached: input file" in master and "f001.txt was deleted or moved" in master
    (root / "f001.txt").write_text("1\n")
    os.remove(armed)
    second = _job(script, root, tmp_path / "o2", dask_client)
    assert second["status"] == "succeeded" and second["reused_mini_batches"] == 2, second


TABLE_EDITOR = """
import os, time
MARK = {mark!r}
def run(frame):
    if frame["n"].iloc[0] == 0:  # the first slice: the file gets other digits, same length, same rows
        data = open({path!r}).read()
        open({path!r}, "w").write(data.replace("5", "7"))
        open(MARK, "w").close()
    else:
        deadline = time.monotonic() + 60
        while not os.path.exists(MARK) and time.monotonic() < deadline:
            time.sleep(0.02)
    return [f"{{n}}:{{v}}" for n, v in zip(frame["n"], frame["v"])]
"""


def test_a_tabular_file_edited_in_place_never_mixes_its_versions_in_the_output(  # type: ignore[no-untyped-def]
    dask_client, write_script, tmp_path
) -> None:
    """Same size, same row count per slice: the planner's byte ranges still parse, so only the check tells."""
    (tmp_path / "in").mkdir()
    table = tmp_path / "in" / "t.csv"
    table.write_text("n,v\n" + "".join(f"{i},{i % 10}\n" for i in range(400)))
    mark = tmp_path / "edited.mark"
    script = write_script(TABLE_EDITOR.format(mark=str(mark), path=str(table)))
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size="1KB",
        process_count_per_node=2,
        run_max_try=3,
        error_threshold=-1,
    )
    summary = run_job(
        config,
        [TabularDataset.from_delimited_files(str(tmp_path / "in"))],
        str(tmp_path / "o"),
        client=dask_client,
    )
    assert summary["total_mini_batches"] >= 3, summary
    assert summary["succeeded_mini_batches"] == 0, summary  # every slice's key names the old bytes
    output = tmp_path / "o" / "parallel_run_step.txt"
    assert not output.exists() or not output.read_text().strip(), (
        "rows of two versions of one file were output"
    )


def test_a_tabular_file_changed_between_two_planning_blocks_fails_the_first_blocks_mini_batches(  # type: ignore[no-untyped-def]
    dask_client, write_script, tmp_path, monkeypatch
) -> None:
    """A streamed plan fingerprints a block of mini-batches at a time; a file whose slices span two blocks
    and that changes between them has two fingerprints. The first block's keys name the old bytes, which
    no run() can read any more: those mini-batches fail; the later ones were keyed on the bytes they read."""
    from airflow_parallel_run.core.reuse import reuse as reuse_module

    (tmp_path / "in").mkdir()
    table = tmp_path / "in" / "t.csv"
    table.write_text("n,v\n" + "".join(f"{i},{i % 10}\n" for i in range(400)))
    blocks: list[list[int]] = []
    add = reuse_module.Reuse.add

    def add_then_edit(self: Any, batches: Any, memo: Any) -> None:
        add(self, batches, memo)
        blocks.append([mb.index for mb in batches])
        if len(blocks) == 1:  # a writer between the first block and the next: same size, same rows
            table.write_text(table.read_text().replace("5", "7"))

    monkeypatch.setattr(reuse_module.Reuse, "add", add_then_edit)
    script = write_script(
        'def run(frame):\n    return [f"{n}:{v}" for n, v in zip(frame["n"], frame["v"])]\n'
    )
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size="1KB", process_count_per_node=2, run_max_try=3
    )
    summary = run_job(
        config,
        [TabularDataset.from_delimited_files(str(tmp_path / "in"))],
        str(tmp_path / "o"),
        client=dask_client,
    )
    assert len(blocks) >= 2 and blocks[0] == [0], blocks  # streamed: the first block is the first mini-batch
    assert summary["failed_mini_batches"] == 1, summary
    failed = [row for row in _rows(tmp_path / "o") if row["Status"] != "RUN_DONE"]
    assert [row["Mini-batch Id"] for row in failed] == ["0"], failed
    assert "t.csv changed after the job fingerprinted it" in failed[0]["Error Message"], failed
    assert all(":5" not in line for line in _lines(tmp_path / "o")), "a row of the old bytes was output"


SYNC_READER = "def run(mini_batch):\n    return [open(p).read().strip() for p in mini_batch]\n"
ASYNC_READER = "async def run(mini_batch):\n    return [open(p).read().strip() for p in mini_batch]\n"


@pytest.mark.parametrize("reader", [SYNC_READER, ASYNC_READER], ids=["sync", "async"])
def test_files_left_as_fingerprinted_are_not_looked_at_again_by_the_driver(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, monkeypatch, reader
) -> None:
    """The entry-script process reports what its files are after run() (size, mtime_ns, inode); equal to
    what the job fingerprinted, the driver's commit makes no system call for them: planning a cold run
    stats each file once before hashing it, and nothing more."""
    root = files(12)
    calls: list[str] = []
    real = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(path).startswith(str(root)) and str(path).endswith(".txt"):
            calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    config = ParallelRunConfig(
        entry_script=write_script(reader),
        mini_batch_size=1,
        process_count_per_node=2,
        max_concurrency_per_process=4 if reader is ASYNC_READER else 1,
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o"), client=dask_client)
    assert summary["status"] == "succeeded" and summary["succeeded_mini_batches"] == 12, summary
    assert sorted(calls) == sorted(str(p) for p in root.iterdir()), sorted(calls)

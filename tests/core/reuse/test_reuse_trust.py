"""A reuse cache that cannot lie: read options are in the key, output_dir files belong to their entry, and
a damaged entry is a miss (re-run, with a warning), never output."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job

# -- the bug: a re-run with another separator (or encoding) reused results read with the old one ---------------
CSV_SCRIPT = """
def run(frame):
    return ["|".join(map(str, frame.columns)) + " " + "|".join(map(str, row)) for row in frame.itertuples(index=False)]
"""


@pytest.mark.parametrize(
    ("field", "first", "second", "data"),
    [
        ("separator", ",", ";", b"a;b,c\n1;2,3\n4;5,6\n"),
        ("encoding", "latin-1", "utf-8", "name\ncafé\nnaïve\n".encode()),
        ("header", True, False, b"a,b\n1,2\n3,4\n"),
    ],
)
def test_changing_a_read_option_is_not_reused(  # type: ignore[no-untyped-def]
    dask_client, write_script, tmp_path, field, first, second, data
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "t.csv").write_bytes(data)
    script = write_script(CSV_SCRIPT)
    config = ParallelRunConfig(entry_script=script, process_count_per_node=1)
    outputs = []
    for run, value in enumerate((first, second)):
        dataset = TabularDataset.from_delimited_files(str(tmp_path / "in"), **{field: value})
        summary = run_job(config, [dataset], str(tmp_path / f"o{run}"), client=dask_client)
        assert summary["status"] == "succeeded", summary
        outputs.append((tmp_path / f"o{run}" / "parallel_run_step.txt").read_text(encoding="utf-8"))
        if run:
            assert summary["reused_mini_batches"] == 0, f"{field} changed, yet the results were reused"
            master = (tmp_path / f"o{run}" / "logs" / "sys" / "master_role.txt").read_text()
            # the column types the job decides from the file may change with it (column_types, separator)
            changed = re.search(r"the read options of an input changed \(input 0: ([a-z_, ]+)\)", master)
            assert changed is not None and field in changed.group(1).split(", "), master
    assert outputs[0] != outputs[1], "the second run's output is the first run's"


# -- output_dir files of a summary_only job belong to the cache entry -----------------------------------------
WRITES = {
    "output_dir in run()": "out_dir = lambda: EntryScript().output_dir",
    "output_dir kept from init()": "KEPT = EntryScript().output_dir; out_dir = lambda: KEPT",
    "AZUREML_BI_OUTPUT_PATH read on import": "KEPT = os.environ['AZUREML_BI_OUTPUT_PATH']; out_dir = lambda: KEPT",
}


def files_of(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in out.glob("*.out")}


@pytest.mark.parametrize("how", list(WRITES))
def test_summary_only_files_are_restored_into_a_new_output_folder(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path, how
) -> None:
    root, calls = files(6), tmp_path / "calls.txt"
    script = write_script(f"""
        import os
        from airflow_parallel_run import EntryScript
        {WRITES[how]}
        def run(mini_batch):
            open({str(calls)!r}, "a").write("x\\n")
            for path in mini_batch:
                with open(os.path.join(out_dir(), os.path.basename(path) + ".out"), "w") as handle:
                    handle.write(open(path).read().strip() + "!")
            return mini_batch
    """)
    config = ParallelRunConfig(
        entry_script=script, output_action="summary_only", mini_batch_size=2, process_count_per_node=2
    )
    first = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o1"), client=dask_client)
    expected = {f"f{i:03d}.txt.out": f"{i}!" for i in range(6)}
    assert first["status"] == "succeeded" and files_of(tmp_path / "o1") == expected, first
    assert not list((tmp_path / "o1").glob(".staging/**/*.out"))
    second = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o2"))  # no cluster needed
    assert second["status"] == "succeeded" and second["reused_mini_batches"] == 3, second
    assert len(calls.read_text().splitlines()) == 3, "run() ran again"
    assert files_of(tmp_path / "o2") == expected, "the reused run lost the files run() wrote to output_dir"


def test_a_file_appended_to_by_many_mini_batches_is_never_reused(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    """A file that existed before run() and changed in it belongs to no single mini-batch: not cached."""
    root = files(4)
    script = write_script("""
        import os
        from airflow_parallel_run import EntryScript
        def init():
            global shared
            shared = os.path.join(EntryScript().output_dir, "all.log")
            open(shared, "a").close()
        def run(mini_batch):
            with open(shared, "a") as handle:
                handle.writelines(os.path.basename(p) + "\\n" for p in mini_batch)
            return mini_batch
    """)
    config = ParallelRunConfig(
        entry_script=script, output_action="summary_only", mini_batch_size=2, process_count_per_node=1
    )
    for run in (1, 2):
        summary = run_job(
            config, [FileDataset.from_files(str(root))], str(tmp_path / f"o{run}"), client=dask_client
        )
        assert summary["status"] == "succeeded" and summary["reused_mini_batches"] == 0, summary
        assert sorted((tmp_path / f"o{run}" / "all.log").read_text().split()) == [
            f"f{i:03d}.txt" for i in range(4)
        ]
    master = (tmp_path / "o2" / "logs" / "sys" / "master_role.txt").read_text()
    assert "is not cached: run() changed all.log in output_dir" in master


def test_a_failed_attempt_leaves_no_output_dir_file(dask_client, write_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = files(2)
    script = write_script("""
        import os
        from airflow_parallel_run import EntryScript
        def run(mini_batch):
            for path in mini_batch:
                open(os.path.join(EntryScript().output_dir, os.path.basename(path) + ".partial"), "w").close()
            raise ValueError("half way")
    """)
    config = ParallelRunConfig(
        entry_script=script,
        output_action="summary_only",
        mini_batch_size=1,
        run_max_try=1,
        process_count_per_node=1,
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o"), client=dask_client)
    assert summary["status"] == "failed"
    assert not list((tmp_path / "o").rglob("*.partial"))


# -- damaged entries are misses, never output ---------------------------------------------------------------------
def _entries(cache: Path) -> list[dict[str, Any]]:
    found = []
    for meta_path in sorted(cache.glob("entries/*/*/meta.json")):
        meta = json.loads(meta_path.read_text())
        found.append({"dir": meta_path.parent, "meta": meta, "meta_path": meta_path})
    return found


def _run_saying(
    config: ParallelRunConfig, root: Path, output: Path, client: Any
) -> tuple[dict[str, Any], list[str]]:
    """A job over the files in `root`: its summary and the lines its progress said."""
    lines: list[str] = []
    summary = run_job(
        config, [FileDataset.from_files(str(root))], str(output), client=client, progress=lines.append
    )
    return summary, lines


def _damage(entry: dict[str, Any], how: str) -> None:
    part = entry["dir"] / entry["meta"]["part"]
    data = bytearray(part.read_bytes())
    if how == "bit flip":
        data[0] ^= 0x40
        part.unlink()  # a hard link shares its bytes with the job's part: break it first
        part.write_bytes(bytes(data))
    elif how == "truncated":
        part.unlink()
        part.write_bytes(bytes(data[: len(data) // 2]))
    else:  # meta.json edited: a count changed
        meta = json.loads(entry["meta_path"].read_text())
        meta["succeeded"] += 1
        entry["meta_path"].write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["bit flip", "truncated", "meta.json edited"])
def test_a_damaged_entry_runs_again_with_a_warning(
    dask_client, write_script, files, tmp_path, isolated_cache, how
) -> None:  # type: ignore[no-untyped-def]
    root = files(8)
    script = write_script("""
        import os
        def run(mini_batch):
            return [f"{os.path.basename(p)} scored" for p in mini_batch]
    """)
    config = ParallelRunConfig(entry_script=script, mini_batch_size=4, process_count_per_node=1)
    first = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o1"), client=dask_client)
    assert first["status"] == "succeeded"
    expected = (tmp_path / "o1" / "parallel_run_step.txt").read_bytes()
    damaged = _entries(isolated_cache)[0]
    _damage(damaged, how)
    second, lines = _run_saying(config, root, tmp_path / "o2", dask_client)
    assert second["status"] == "succeeded" and second["reused_mini_batches"] == 1, second
    assert (tmp_path / "o2" / "parallel_run_step.txt").read_bytes() == expected
    key = damaged["dir"].name
    warning = [line for line in lines if line.startswith("Warning: cache entry") and key in line]
    assert warning and "failed verification" in warning[0], lines
    assert key in (tmp_path / "o2" / "logs" / "sys" / "master_role.txt").read_text()
    third = run_job(
        config, [FileDataset.from_files(str(root))], str(tmp_path / "o3")
    )  # repaired by the re-run
    assert (
        third["reused_mini_batches"] == 2
        and (tmp_path / "o3" / "parallel_run_step.txt").read_bytes() == expected
    )


def test_a_corrupt_parquet_part_does_not_fail_later_runs(
    dask_client, write_script, files, tmp_path, isolated_cache
) -> None:  # type: ignore[no-untyped-def]
    root = files(4)
    script = write_script("""
        import os
        def run(mini_batch):
            return [{"name": os.path.basename(p), "value": int(open(p).read())} for p in mini_batch]
    """)
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size=2,
        append_row_format="parquet",
        append_row_file_name="out.parquet",
    )
    run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o1"), client=dask_client)
    entry = _entries(isolated_cache)[0]
    part = entry["dir"] / entry["meta"]["part"]
    data = part.read_bytes()
    part.unlink()
    part.write_bytes(data[:-12] + b"garbage!PAR1")  # a footer that is no longer Parquet
    for run in (2, 3):
        summary = run_job(
            config, [FileDataset.from_files(str(root))], str(tmp_path / f"o{run}"), client=dask_client
        )
        assert summary["status"] == "succeeded", summary
        table: pa.Table = pq.read_table(tmp_path / f"o{run}" / "out.parquet")
        assert table.column("value").to_pylist() == [0, 1, 2, 3]


def test_damaged_entries_and_a_changed_file_are_missed_in_every_block_of_the_listing(
    dask_client, write_script, files, tmp_path, isolated_cache
) -> None:  # type: ignore[no-untyped-def]
    """The listing hands its mini-batches over in blocks of 1, 2, 4, ... 64 (core/driver/planning.py) and a
    re-run fingerprints each block's files against the memo: a damaged entry or a changed file is a miss in
    the first block as in later ones, and only those run again; the output is what a cold run writes."""
    import os

    root = files(40)
    script = write_script("""
        import os
        def run(mini_batch):
            return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
    """)
    config = ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=1)

    def job(name: str) -> dict[str, Any]:
        return run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / name), client=dask_client)

    assert job("o1")["status"] == "succeeded"
    keys = json.loads((tmp_path / "o1" / "logs" / "sys" / "job.json").read_text())["keys"]
    by_key = {entry["dir"].name: entry for entry in _entries(isolated_cache)}
    _damage(by_key[keys[0]], "bit flip")  # the first block (1 mini-batch)
    _damage(by_key[keys[21]], "truncated")  # the fifth block (16 mini-batches)
    changed = root / "f033.txt"  # the sixth block: same size, new bytes, a later mtime
    stat = changed.stat()
    changed.write_text("XX\n")
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second, lines = _run_saying(config, root, tmp_path / "o2", dask_client)
    assert second["status"] == "succeeded" and second["reused_mini_batches"] == 37, second
    expected = "".join(f"f{i:03d}.txt {'XX' if i == 33 else i}\n" for i in range(40))
    assert (tmp_path / "o2" / "parallel_run_step.txt").read_text() == expected
    warnings = [line for line in lines if line.startswith("Warning: cache entry")]
    assert len(warnings) == 2 and keys[0] in warnings[0] and keys[21] in warnings[1], warnings
    with (tmp_path / "o2" / "logs" / "sys" / "job_report" / "processed_mini-batches.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    reused = sorted(int(row["Mini-batch Id"]) for row in rows if row["Status"] == "REUSED")
    assert reused == [i for i in range(40) if i not in (0, 21, 33)]  # one row each, flushed in batches

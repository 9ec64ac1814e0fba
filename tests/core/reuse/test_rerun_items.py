"""Per-item failures in place (core/output/results.py): run() returns one entry per item, some of them
exceptions (as `asyncio.gather(..., return_exceptions=True)` gives) or `ItemFailed` markers. On a real
LocalCluster: those items, and only they, are failed items (`certain: true`, their own errors), counted
against error_threshold as ParallelRunStep counts a short result, never written to the output; a re-run runs
exactly them (the script's own call log says so) and the output ends byte-identical to a clean job."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from distributed import Client
from flaky_failures import FLAKY, flaky

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.logs.failed_items import read_failed_items
from airflow_parallel_run.core.reuse.rerun import PreviousJob

#: Marks the items named in --fail-list failed in place ("exception": the exception object; "marker":
#: ItemFailed), sync or async (gather with return_exceptions=True); appends each item it ran to --calls.
SCRIPT = """
import argparse, asyncio, os

def init():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-list")
    parser.add_argument("--calls")
    parser.add_argument("--mode", default="exception")
    parser.add_argument("--dicts", action="store_true")
    parser.add_argument("--unpicklable", action="store_true")
    args, _ = parser.parse_known_args()

class Scored:
    # a result that prints as text but cannot be pickled (it holds a lock)

    def __init__(self, text):
        import threading

        self.text, self.lock = text, threading.Lock()

    def __str__(self):
        return self.text

def score(path, bad):
    name = os.path.basename(path)
    if name in bad:
        if args.mode == "marker":
            from airflow_parallel_run import ItemFailed

            return ItemFailed(f"item {name} is on the fail list")
        raise ValueError(f"item {name} is on the fail list")
    with open(path) as handle:
        value = handle.read().strip()
    if args.dicts:
        return {"name": name, "value": int(value), "half": int(value) / 2}
    return Scored(f"{name} {value}") if args.unpicklable else f"{name} {value}"

def _safe(path, bad):
    try:
        return score(path, bad)
    except Exception as exc:
        return exc

def _log(mini_batch):
    with open(args.fail_list.removeprefix("flaky:")) as handle:
        bad = set(handle.read().split())
    with open(args.calls, "a") as handle:
        handle.write("".join(os.path.basename(p) + "\\n" for p in mini_batch))
    return bad

"""

SYNC_RUN = """
def run(mini_batch):
    bad = _log(mini_batch)
    return [_safe(p, bad) for p in mini_batch]
"""

ASYNC_RUN = """
async def _one(path, bad):
    await asyncio.sleep(0)
    result = score(path, bad)
    if not isinstance(result, (str, dict)):
        raise ValueError(result.reason)
    return result

async def run(mini_batch):
    bad = _log(mini_batch)
    return await asyncio.gather(*(_one(p, bad) for p in mini_batch), return_exceptions=True)
"""

FAILING = ["f003.txt", "f017.txt", "f030.txt", "f044.txt", "f058.txt", "f071.txt", "f089.txt"]  # 7 of 100


def _arguments(folder: Path, mode: str, dicts: bool, *more: str) -> list[str]:
    extra = ["--dicts", *more] if dicts else list(more)
    return [
        "--fail-list",
        flaky(folder / "fail.txt"),
        "--calls",
        str(folder / "calls.txt"),
        "--mode",
        mode,
        *extra,
    ]


def _calls(folder: Path) -> list[str]:
    path = folder / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _moved(argument: str, old: Path, new: Path) -> str:
    """An argument naming a file of `old` (as a path, or a flaky: one) made to name that file in `new`."""
    prefix = FLAKY if argument.startswith(FLAKY) else ""
    path = argument.removeprefix(prefix)
    return prefix + str(new / Path(path).name) if path.startswith(str(old)) else argument


def _clean(
    tmp_path: Path, client: Client, config: ParallelRunConfig, inputs: list, arguments: list[str]
) -> bytes:
    """The output of the same job where nothing fails, in a fresh cache (so it really runs)."""
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "fail.txt").write_text("")
    arguments = [_moved(a, tmp_path, clean) for a in arguments]
    summary = run_job(
        config, inputs, str(clean / "out"), arguments=arguments, client=client, cache_dir=str(clean / "cache")
    )
    assert summary["status"] == "succeeded" and summary["failed_items"] == 0, summary
    return Path(summary["append_row_file"]).read_bytes()


@pytest.mark.parametrize(
    ("mode", "fmt", "dicts", "asynchronous"),
    [
        ("exception", "text", False, False),
        ("marker", "csv", True, False),
        ("exception", "jsonl", True, True),
    ],
    ids=["exceptions-text", "itemfailed-csv", "async-gather-jsonl"],
)
def test_items_marked_failed_in_place_rerun_alone(
    tmp_path: Path,
    dask_client: Client,
    write_script: Callable[..., str],
    files: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    fmt: str,
    dicts: bool,
    asynchronous: bool,
) -> None:
    inputs = [FileDataset.from_files(str(files(100)))]
    config = ParallelRunConfig(
        entry_script=write_script(SCRIPT + (ASYNC_RUN if asynchronous else SYNC_RUN)),
        mini_batch_size=10,
        run_max_try=1,
        process_count_per_node=2,
        append_row_format=fmt,
        max_concurrency_per_process=2 if asynchronous else 1,
    )
    arguments = _arguments(tmp_path, mode, dicts)
    (tmp_path / "fail.txt").write_text("\n".join(FAILING))
    out = str(tmp_path / "out")

    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert first["status"] == "succeeded", first
    assert first["failed_items"] == len(FAILING) and first["succeeded_items"] == 100 - len(FAILING)
    assert first["failed_mini_batches"] == 0  # the mini-batches ran; some of their items failed
    failed = read_failed_items(str(tmp_path / "out" / "logs"))
    assert [Path(line["item"]["file"]).name for line in failed] == FAILING  # exactly those, in plan order
    assert all(line["certain"] is True for line in failed)
    assert [line["position"] for line in failed] == [int(n[1:4]) % 10 for n in FAILING]
    prefix = "ItemFailed: item" if mode == "marker" else "ValueError: item"
    assert [line["error"] for line in failed] == [f"{prefix} {n} is on the fail list" for n in FAILING]
    output = Path(first["append_row_file"]).read_text()
    assert "fail list" not in output and "Error" not in output  # nothing of a marker reaches the output
    assert all(n not in output for n in FAILING)
    error_txt = (tmp_path / "out" / "logs" / "user" / "error.txt").read_text()
    assert "1 x ITEM_FAILED: " + f"{prefix} f003.txt is on the fail list" in error_txt
    traces = "".join(p.read_text() for p in (tmp_path / "out" / "logs" / "user" / "error").rglob("*.txt"))
    assert "item 3 failed: " + f"{prefix} f003.txt is on the fail list" in traces

    (tmp_path / "fail.txt").write_text("")  # the failure switched off
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(_calls(tmp_path)) == FAILING  # only the failed items ran, each once
    assert second["reused_mini_batches"] == second["total_mini_batches"] - 7
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert "7 of them run only their 7 failed items" in master
    assert Path(second["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


TABULAR_SCRIPT = """
import argparse
from airflow_parallel_run import ItemFailed

def init():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-list")
    parser.add_argument("--calls")
    args, _ = parser.parse_known_args()

def run(frame):
    bad = set(open(args.fail_list.removeprefix("flaky:")).read().split())
    with open(args.calls, "a") as handle:
        handle.write("".join(f"{i}\\n" for i in frame["id"]))
    out = []
    for i, v in zip(frame["id"], frame["value"]):
        out.append(KeyError(f"row {i} is on the fail list") if str(i) in bad else {"id": i, "value": v, "n": len(v)})
    return out
"""


def test_rows_marked_failed_rerun_alone(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str]
) -> None:
    (tmp_path / "in").mkdir()
    rows = "".join(f"{i},{'v' * 40}{i}\n" for i in range(300))
    (tmp_path / "in" / "t.csv").write_text("id,value\n" + rows)
    inputs = [TabularDataset.from_delimited_files(str(tmp_path / "in" / "t.csv"))]
    config = ParallelRunConfig(
        entry_script=write_script(TABULAR_SCRIPT),
        mini_batch_size="1KB",
        run_max_try=1,
        process_count_per_node=2,
        append_row_format="csv",
    )
    failing = [i for i in range(300) if i % 14 == 5]  # 22 rows, about 7 %
    arguments = ["--fail-list", flaky(tmp_path / "fail.txt"), "--calls", str(tmp_path / "calls.txt")]
    (tmp_path / "fail.txt").write_text(" ".join(map(str, failing)))
    out = str(tmp_path / "out")
    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert first["status"] == "succeeded" and first["failed_items"] == len(failing), first
    failed = read_failed_items(str(tmp_path / "out" / "logs"))
    assert len(failed) == len(failing) and all(line["certain"] is True for line in failed)
    data = (tmp_path / "in" / "t.csv").read_bytes()
    for line, row in zip(failed, failing, strict=True):  # the slice, and the row within it, is that row
        start, end = line["item"]["bytes"]
        assert data[start:end].splitlines()[line["item"]["row"]].startswith(f"{row},".encode())
        assert line["error"] == f"KeyError: 'row {row} is on the fail list'"
    report = (tmp_path / "out" / "logs" / "report.html").read_text()
    first_item = failed[0]["item"]
    assert f"bytes {first_item['bytes'][0]}-{first_item['bytes'][1]} row {first_item['row']}<" in report

    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(int(i) for i in _calls(tmp_path)) == failing  # only the failed rows ran
    assert Path(second["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


def test_error_threshold_counts_marked_items(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """As ParallelRunStep counts total - succeeded: 7 marked items exceed error_threshold 6, not 7."""
    inputs = [FileDataset.from_files(str(files(100)))]
    (tmp_path / "fail.txt").write_text("\n".join(FAILING))
    for threshold, status in ((7, "succeeded"), (6, "failed")):
        config = ParallelRunConfig(
            entry_script=write_script(SCRIPT + SYNC_RUN),
            mini_batch_size=10,
            run_max_try=1,
            error_threshold=threshold,
        )
        summary = run_job(
            config,
            inputs,
            str(tmp_path / f"out{threshold}"),
            arguments=_arguments(tmp_path, "marker", False),
            client=dask_client,
            allow_reuse=False,
        )
        assert summary["status"] == status, summary
        if status == "failed":
            assert "error_threshold exceeded: 7 failed items > error_threshold 6" in summary["message"]


def test_summary_only_counts_marked_items_and_reruns_them_alone(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """summary_only ignores the results but not the markers: before, a list of exceptions counted as
    successes (len(result))."""
    inputs = [FileDataset.from_files(str(files(30)))]
    config = ParallelRunConfig(
        entry_script=write_script(SCRIPT + SYNC_RUN),
        mini_batch_size=10,
        run_max_try=1,
        output_action="summary_only",
    )
    arguments = _arguments(tmp_path, "exception", False)
    (tmp_path / "fail.txt").write_text("f003.txt f017.txt")
    out = str(tmp_path / "out")
    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert first["failed_items"] == 2 and first["succeeded_items"] == 28, first
    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["failed_items"] == 0 and second["succeeded_items"] == 30, second
    assert sorted(_calls(tmp_path)) == ["f003.txt", "f017.txt"]


def _first_job(
    tmp_path: Path, client: Client, script: str, files: Callable[..., Path], *more: str
) -> tuple[ParallelRunConfig, list[FileDataset], list[str], str]:
    inputs = [FileDataset.from_files(str(files(100)))]
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=10, run_max_try=1, process_count_per_node=2
    )
    arguments = _arguments(tmp_path, "exception", False, *more)
    (tmp_path / "fail.txt").write_text("\n".join(FAILING))
    out = str(tmp_path / "out")
    first = run_job(config, inputs, out, arguments=arguments, client=client)
    assert first["failed_items"] == len(FAILING), first
    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    return config, inputs, arguments, out


def _whole(names: list[str]) -> list[str]:
    """Every item of the mini-batches (of 10) that hold these."""
    return sorted(
        f"f{b * 10 + i:03d}.txt" for b in sorted({int(n[1:4]) // 10 for n in names}) for i in range(10)
    )


def test_unpicklable_results_rerun_their_mini_batches_whole(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """Successful results that cannot be kept: the re-run cannot join new results with them, so it runs those
    mini-batches whole (and says so), and the output is still the clean job's."""
    script = write_script(SCRIPT + SYNC_RUN)
    config, inputs, arguments, out = _first_job(tmp_path, dask_client, script, files, "--unpicklable")
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(_calls(tmp_path)) == _whole(FAILING)
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert (
        "Re-run: mini-batch 0 runs whole: its successful results could not be kept (not picklable)" in master
    )
    assert Path(second["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


def test_failed_items_edited_since_rerun_that_mini_batch_whole(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """failed_items.jsonl edited by hand to name a succeeded item of a partly failed mini-batch: the cache
    entry's own record of its failed items disagrees, so the mini-batch runs whole, never a wrong join."""
    script = write_script(SCRIPT + SYNC_RUN)
    config, inputs, arguments, out = _first_job(tmp_path, dask_client, script, files)
    path = tmp_path / "out" / "logs" / "sys" / "job_report" / "failed_items.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    forged = {**lines[0], "item": {"file": lines[0]["item"]["file"].replace("f003", "f004")}, "position": 4}
    path.write_text("".join(json.dumps(line) + "\n" for line in [lines[0], forged, *lines[1:]]))
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(_calls(tmp_path)) == sorted({*_whole(["f003.txt"]), *FAILING})
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert "Re-run: mini-batch 0 runs whole: its cache entry names other failed items than logs/" in master
    assert Path(second["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


def test_a_mini_batch_whose_items_all_failed_reruns_as_marked_and_again(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """No successful results to keep is not "could not keep them": the mini-batch runs its marked items; an
    item that fails again in the re-run is marked in the whole mini-batch's terms, and re-run again."""
    inputs = [FileDataset.from_files(str(files(20)))]
    config = ParallelRunConfig(entry_script=write_script(SCRIPT + SYNC_RUN), mini_batch_size=5, run_max_try=1)
    arguments = _arguments(tmp_path, "marker", False)
    failing = ["f005.txt", "f006.txt", "f007.txt", "f008.txt", "f009.txt", "f012.txt"]
    (tmp_path / "fail.txt").write_text("\n".join(failing))
    out = str(tmp_path / "out")
    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert first["failed_items"] == 6 and first["failed_mini_batches"] == 0, first
    (tmp_path / "fail.txt").write_text("f012.txt")  # still failing in the re-run: marked again
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 1, second
    assert sorted(_calls(tmp_path)) == failing
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert "2 of them run only their 6 failed items" in master and "runs whole" not in master
    [line] = read_failed_items(str(tmp_path / "out" / "logs"))  # in the whole mini-batch's terms
    assert (line["mini_batch"], line["position"], Path(line["item"]["file"]).name) == (2, 2, "f012.txt")

    (tmp_path / "fail.txt").write_text("")  # a re-run of the re-run
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    third = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert third["status"] == "succeeded" and third["failed_items"] == 0, third
    assert _calls(tmp_path) == ["f012.txt"]
    assert Path(third["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


class _Planted:
    """A pickle that, when loaded, creates a folder: what a forged cache entry could make a re-run do."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, ...]:
        import os

        return (os.mkdir, (self.sentinel,))


def test_kept_results_rewritten_in_the_cache_are_never_unpickled(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """Someone who can write the cache (not the output folder) rewrites a kept-results pickle and its
    meta.json's digests consistently: the job record's SHA-256 disagrees, so the re-run runs that mini-batch
    whole and never loads the pickle; the output is still the clean job's."""
    import pickle

    from airflow_parallel_run.core.inputs.fingerprint import hash_stream
    from airflow_parallel_run.core.reuse.cache import _meta_digest

    script = write_script(SCRIPT + SYNC_RUN)
    config, inputs, arguments, out = _first_job(tmp_path, dask_client, script, files)
    record = json.loads((tmp_path / "out" / "logs" / "sys" / "job.json").read_text())
    assert sorted(record["kept_items"]) == ["0", "1", "3", "4", "5", "7", "8"]
    entry = next(
        p.parent for p in Path(record["cache_root"]).rglob("meta.json") if record["keys"][0] in str(p)
    )
    meta = json.loads((entry / "meta.json").read_text())
    sentinel = tmp_path / "planted"
    forged = pickle.dumps(_Planted(str(sentinel)))
    (entry / meta["items"]).unlink()  # a hard link to the staged file: replaced, not written through
    (entry / meta["items"]).write_bytes(forged)
    meta["items_size"] = len(forged)
    with open(entry / meta["items"], "rb") as handle:
        meta["items_digest"] = hash_stream(handle)
    meta["digest"] = _meta_digest(meta)
    (entry / "meta.json").write_text(json.dumps(meta, sort_keys=True))

    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert not sentinel.exists()  # the forged pickle never ran
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(_calls(tmp_path)) == sorted({*_whole(["f003.txt"]), *FAILING})
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert (
        "Re-run: mini-batch 0 runs whole: its cache entry's successful results are not the ones job" in master
    )
    assert Path(second["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


def test_a_job_that_reused_a_partly_failed_mini_batch_cannot_vouch_for_its_results(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """A second, ordinary run into the folder reuses every mini-batch (their items are failed items again);
    its record names no kept results it did not write itself, so a re-run of it runs those mini-batches
    whole, and still ends with the clean job's output."""
    script = write_script(SCRIPT + SYNC_RUN)
    config, inputs, arguments, out = _first_job(tmp_path, dask_client, script, files)
    again = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert again["reused_mini_batches"] == 10 and again["failed_items"] == len(FAILING), again
    record = json.loads((tmp_path / "out" / "logs" / "sys" / "job.json").read_text())
    assert record["kept_items"] == {}
    assert [
        Path(x["item"]["file"]).name for x in read_failed_items(str(tmp_path / "out" / "logs"))
    ] == FAILING
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(_calls(tmp_path)) == _whole(FAILING)
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert f"runs whole: job {previous.job_id} reused it from the cache, so its record names no" in master
    assert Path(second["append_row_file"]).read_bytes() == _clean(
        tmp_path, dask_client, config, inputs, arguments
    )


def test_kept_results_are_checked_again_before_they_are_unpickled(tmp_path: Path) -> None:
    """The entry-script process checks the bytes it is about to load (nothing swaps them after the driver's
    check)."""
    import hashlib
    import pickle

    from airflow_parallel_run.core.output.results import InvalidResultError
    from airflow_parallel_run.core.worker.messages import PartialRun
    from airflow_parallel_run.core.worker.rerun_items import load_successes

    kept = tmp_path / "kept.pickle"
    kept.write_bytes(pickle.dumps(["a", "c"]))
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    assert load_successes(PartialRun((1,), str(kept), digest), {}) == ["a", "c"]
    sentinel = tmp_path / "planted"
    kept.write_bytes(pickle.dumps(_Planted(str(sentinel))))
    with pytest.raises(InvalidResultError, match="are not the ones its record names"):
        load_successes(PartialRun((1,), str(kept), digest), {})
    assert not sentinel.exists()


# -- the result contract, without a cluster ------------------------------------------------------------
class _Unpicklable(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_markers_are_taken_out_and_described() -> None:
    from airflow_parallel_run.core.output.results import ItemFailed, check_result

    [unprintable] = check_result([_Unprintable()], 1).item_errors  # still marks its item
    assert unprintable.error == "_Unprintable: <str() of the exception failed>"

    checked = check_result(
        ["a", ValueError("bad\nsecond line"), "c", ItemFailed("gone"), _Unpicklable("x")], 5
    )
    assert checked.value == ["a", "c"] and checked.succeeded == 2
    assert [(e.position, e.error) for e in checked.item_errors] == [
        (1, "ValueError: bad"),
        (3, "ItemFailed: gone"),
        (4, "_Unpicklable: x"),
    ]
    json.dumps([e.error for e in checked.item_errors])  # only text travels, never the exception


def test_markers_in_a_short_or_long_result_are_refused() -> None:
    from airflow_parallel_run.core.output.results import InvalidResultError, check_result

    with pytest.raises(InvalidResultError, match="needs exactly one entry per input item"):
        check_result(["a", ValueError("bad")], 3)
    with pytest.raises(InvalidResultError, match="returned 4 results for a mini-batch of 3"):
        check_result(["a", ValueError("bad"), "c", "d"], 3)
    assert check_result(["a", "b"], 3).succeeded == 2  # a short result without markers: the Azure count


def test_an_exception_inside_an_entry_is_refused() -> None:
    """Inside a dict or a DataFrame cell an exception would be written as text and counted a success."""
    import pandas as pd

    from airflow_parallel_run.core.output.results import InvalidResultError, check_result

    with pytest.raises(InvalidResultError, match="as the value of key 'p' of entry 1"):
        check_result([{"p": 1}, {"p": KeyError("k")}], 2)
    with pytest.raises(InvalidResultError, match="as the value of column 'p' of row 1"):
        check_result(pd.DataFrame({"p": ["ok", ValueError("boom")]}), 2)


def test_the_context_of_a_rerun_describes_the_items_run_gets() -> None:
    from airflow_parallel_run.core.minibatch import FileRef, MiniBatch
    from airflow_parallel_run.core.worker.child import _context
    from airflow_parallel_run.core.worker.messages import PartialRun, Run

    batch = MiniBatch(3, "file", 0, 3, files=(FileRef("/in/a"), FileRef("/in/b"), FileRef("/in/c")))
    whole = _context(Run(batch, 1, "part", "files"))
    assert whole.dataset["files"] == ["/in/a", "/in/b", "/in/c"]
    rerun = _context(Run(batch, 1, "part", "files", "", PartialRun((0, 2))))
    assert rerun.dataset["files"] == ["/in/a", "/in/c"] and rerun.minibatch_index == 3


def test_a_mini_batch_whose_run_wrote_files_reruns_whole_and_its_entry_keeps_every_file(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """run() wrote a file per successful item to output_dir and marked two items failed. Re-running only
    those two would store a cache entry holding only their files, and a later job reusing it into a new
    folder would lack the others' files while saying "succeeded": such a mini-batch re-runs whole."""
    root, calls = files(20), tmp_path / "calls.txt"
    fail = tmp_path / "fail.txt"
    script = write_script(f"""
        import os
        from airflow_parallel_run import EntryScript, ItemFailed
        def run(mini_batch):
            bad = set(open({str(fail)!r}).read().split())
            open({str(calls)!r}, "a").write("".join(os.path.basename(p) + "\\n" for p in mini_batch))
            results = []
            for path in mini_batch:
                name = os.path.basename(path)
                if name in bad:
                    results.append(ItemFailed(f"{{name}} is on the fail list"))
                    continue
                with open(os.path.join(EntryScript().output_dir, name + ".out"), "w") as handle:
                    handle.write(open(path).read().strip() + "!")
                results.append(name)
            return results
    """)
    config = ParallelRunConfig(
        entry_script=script, output_action="summary_only", mini_batch_size=10, run_max_try=1
    )
    inputs = [FileDataset.from_files(str(root))]
    expected = {f"f{i:03d}.txt.out": f"{i}!" for i in range(20)}
    fail.write_text("f003.txt f007.txt")
    out = tmp_path / "out"
    first = run_job(config, inputs, str(out), client=dask_client)
    assert first["failed_items"] == 2, first
    fail.write_text("")
    calls.unlink()
    previous = PreviousJob.load(str(out))
    second = run_job(config, inputs, str(out), client=dask_client, rerun=previous, planned=previous.plan)
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert sorted(calls.read_text().split()) == [f"f{i:03d}.txt" for i in range(10)], "mini-batch 0 ran whole"
    master = (out / "logs" / "sys" / "master_role.txt").read_text()
    assert "Re-run: mini-batch 0 runs whole: its run() wrote files to output_dir" in master, master
    assert {p.name: p.read_text() for p in out.glob("*.out")} == expected
    third = run_job(config, inputs, str(tmp_path / "again"))  # every mini-batch from the cache
    assert third["status"] == "succeeded" and third["failed_items"] == 0, third
    assert third["reused_mini_batches"] == 2, third
    assert {p.name: p.read_text() for p in (tmp_path / "again").glob("*.out")} == expected, (
        "a job reusing the re-run's entries lost files run() wrote"
    )


@pytest.mark.parametrize("batch_format", ["pandas", "pyarrow"])
def test_a_rerun_of_items_gives_run_the_selected_rows_in_its_batch_format(
    tmp_path: Path, batch_format: str
) -> None:
    """batch_format="pyarrow": the failed items of a tabular mini-batch are the Table's rows at their
    positions (the re-run read the mini-batch as a DataFrame, whatever the job's batch format)."""
    import pyarrow as pa

    from airflow_parallel_run.core.plan import plan_inputs
    from airflow_parallel_run.core.worker.messages import PartialRun
    from airflow_parallel_run.core.worker.rerun_items import read_selected

    (tmp_path / "t.csv").write_text("id,name\n1,a\n2,b\n3,c\n4,d\n")
    dataset = TabularDataset.from_delimited_files(str(tmp_path / "t.csv"))
    [batch] = list(plan_inputs([dataset], 10**9))
    data, total = read_selected(
        dataset.with_column_types([batch]), batch, PartialRun((1, 3)), str(tmp_path), batch_format
    )
    assert total == 4
    if batch_format == "pyarrow":
        assert isinstance(data, pa.Table) and data.to_pylist() == [
            {"id": 2, "name": "b"},
            {"id": 4, "name": "d"},
        ]
    else:
        assert data["id"].tolist() == [2, 4] and data["name"].tolist() == ["b", "d"]

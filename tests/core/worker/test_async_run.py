"""`async def run(mini_batch)` with `max_concurrency_per_process`: several mini-batches in flight in one
entry-script process on one event loop, against a real local HTTP scoring server (bench/scoring_server.py)
and the embedded LocalCluster (its worker threads are processes x concurrency).

What must hold: the server really sees the mini-batches overlap; the output is exactly once and in input
order however the answers come back; `run_invocation_timeout` cancels a coroutine without ending its
process, and a coroutine that blocks the loop gets its process replaced while the job goes on; async
init() works; a synchronous run() with concurrency > 1 is refused before any work.
"""

from __future__ import annotations

import csv
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.errors import ConfigError

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

from scoring_server import ScoringServer  # noqa: E402

# The entry script: async init() opens nothing but checks the server answers; run() scores each file
# of its mini-batch in turn (so the server's overlap is the engine's concurrency, not run()'s own).
ASYNC_SCRIPT = """
import asyncio, os, sys
sys.path.insert(0, os.environ["SCORING_LIB"])
from scoring_server import score

ADDRESS = None
GREETING = None

async def init():
    global ADDRESS, GREETING
    await asyncio.sleep(0)
    ADDRESS = os.environ["SCORING_ADDRESS"]
    GREETING = (await score(ADDRESS, "init")).split("\\t")[1]

async def run(mini_batch):
    out = []
    for path in mini_batch:
        name = os.path.basename(path)
        answer = await score(ADDRESS, name)
        out.append(f"{answer}\\t{GREETING}")
    return out
"""


DOC = Path(__file__).resolve().parents[3] / "docs" / "errors.md"


def documented(actual: str) -> None:
    """`actual` is one of the messages docs/errors.md lists (its <placeholders> stand for any text)."""
    for template in re.findall(r"^```\n(.+?)\n```$", DOC.read_text(encoding="utf-8"), re.M | re.S):
        parts = re.split(r"(<[a-z]+>)", template)
        pattern = "".join(".+?" if re.fullmatch(r"<[a-z]+>", p) else re.escape(p) for p in parts)
        if re.fullmatch(pattern, actual):
            return
    raise AssertionError(f"docs/errors.md does not list:\n{actual}")


def _attempts(summary: dict[str, Any]) -> list[dict[str, str]]:
    path = Path(summary["logs_dir"]) / "sys" / "job_report" / "processed_mini-batches.csv"
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run(script: str, folder: Path, out: Path, server: ScoringServer, **config: Any) -> dict[str, Any]:
    env = {"SCORING_ADDRESS": server.address, "SCORING_LIB": str(BENCH)}
    return run_job(
        ParallelRunConfig(entry_script=script, environment_variables=env, **config),
        [FileDataset.from_files(str(folder))],
        str(out),
    )


def test_concurrency_overlaps_and_output_is_exactly_once_in_input_order(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    """16 mini-batches in flight per process, answers in random order: every item once, in order."""
    folder = files(160)
    # init() is not held: it must return before its process runs anything
    with ScoringServer(
        delay=0.01, jitter=0.15, hold_until=16, hold_s=20, hold_except=frozenset({"init"})
    ) as server:
        summary = _run(
            write_script(ASYNC_SCRIPT),
            folder,
            tmp_path / "out",
            server,
            mini_batch_size=2,
            process_count_per_node=2,
            max_concurrency_per_process=16,
        )
        assert summary["status"] == "succeeded", summary
        assert server.peak >= 16, f"the server saw at most {server.peak} run() requests at once"
        names = [f"f{i:03d}.txt" for i in range(160)]
        assert Path(summary["append_row_file"]).read_text().splitlines() == [
            f"{name}\tscored\tscored" for name in names
        ]
        attempts = _attempts(summary)
        assert all(row["Status"] == "RUN_DONE" for row in attempts)
        assert len(attempts) == 80
        # one call per item per successful attempt, plus one init() call per process
        calls = Counter(server.calls)
        processes = calls.pop("init")
        assert calls == Counter(names)
        assert processes == len({row["Process"] for row in attempts}) <= 2


def test_an_async_timeout_cancels_the_coroutine_and_the_process_stays(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_script(
        ASYNC_SCRIPT
        + f"""
_run = run
MARKS = {str(marks)!r}

async def run(mini_batch):
    first = os.path.basename(mini_batch[0])
    flag = os.path.join(MARKS, first)
    if first == "f002.txt" and not os.path.exists(flag):
        open(flag, "w").close()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            open(flag + ".cancelled", "w").close()
            raise
    if first == "f004.txt" and not os.path.exists(flag):
        open(flag, "w").close()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # swallowed: returns late, as if it had finished in time
            return [os.path.basename(p) + "\tlate\tlate" for p in mini_batch]
    return await _run(mini_batch)
"""
    )
    with ScoringServer(delay=0.01) as server:
        summary = _run(
            script,
            files(8),
            tmp_path / "out",
            server,
            mini_batch_size=2,
            process_count_per_node=1,
            max_concurrency_per_process=4,
            run_invocation_timeout=2,
            run_max_try=2,
        )
    assert summary["status"] == "succeeded", summary
    assert (marks / "f002.txt.cancelled").exists(), "the coroutine was not cancelled"
    attempts = _attempts(summary)
    timed_out = [row for row in attempts if row["Status"] == "RUN_TIMEOUT"]
    # a coroutine that swallowed the cancellation and returned late timed out all the same
    assert sorted((row["Mini-batch Id"], row["Attempt"]) for row in timed_out) == [("1", "1"), ("2", "1")]
    for row in timed_out:
        documented(row["Error Message"])
    assert len({row["Process"] for row in attempts}) == 1, "the process was replaced"
    assert Path(summary["append_row_file"]).read_text().splitlines() == [
        f"f{i:03d}.txt\tscored\tscored" for i in range(8)
    ]


def test_a_coroutine_that_blocks_the_loop_gets_its_process_replaced(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_script(
        ASYNC_SCRIPT
        + f"""
import time
_run = run
MARKS = {str(marks)!r}

async def run(mini_batch):
    first = os.path.basename(mini_batch[0])
    flag = os.path.join(MARKS, first)
    if first == "f004.txt" and not os.path.exists(flag):
        open(flag, "w").close()
        time.sleep(120)  # blocks the event loop: no cancellation can reach it
    return await _run(mini_batch)
"""
    )
    with ScoringServer(delay=0.01) as server:
        summary = _run(
            script,
            files(12),
            tmp_path / "out",
            server,
            mini_batch_size=2,
            process_count_per_node=1,
            max_concurrency_per_process=3,
            # the bound of every run() and of init() (a scoring round trip): 1 s was within reach of a
            # loaded machine's init(), and a failed init() leaves the blocker to a later attempt
            run_invocation_timeout=3,
            run_max_try=3,
        )
    assert summary["status"] == "succeeded", summary
    attempts = _attempts(summary)
    # the blocker's attempt failed with the mini-batches in flight beside it on the blocked loop: the one
    # whose time ran out first is RUN_TIMEOUT (the blocker, or one that started before it and had not
    # finished when the loop stopped: a loaded machine), the others died with the process; each says
    # why, all in the first process only
    failed = [row for row in attempts if row["Status"] != "RUN_DONE"]
    first_tries = {(row["Mini-batch Id"], row["Attempt"]): row["Status"] for row in failed}
    assert first_tries.get(("2", "1")) in ("RUN_TIMEOUT", "PROCESS_DIED"), first_tries
    assert "RUN_TIMEOUT" in first_tries.values(), first_tries
    assert {row["Status"] for row in failed} <= {"RUN_TIMEOUT", "PROCESS_DIED"}
    assert {row["Attempt"] for row in failed} == {"1"}
    assert len({row["Process"] for row in failed}) == 1
    for row in failed:
        documented(row["Error Message"])
    assert len({row["Process"] for row in attempts}) == 2, "the blocked process was not replaced"
    assert Path(summary["append_row_file"]).read_text().splitlines() == [
        f"f{i:03d}.txt\tscored\tscored" for i in range(12)
    ]


def test_a_synchronous_run_with_concurrency_is_refused_before_any_work(
    write_script: Callable[..., str], tmp_path: Path
) -> None:
    script = write_script("def run(mini_batch):\n    return mini_batch\n")
    with pytest.raises(ConfigError, match="max_concurrency_per_process") as caught:
        ParallelRunConfig(entry_script=script, max_concurrency_per_process=4)
    assert "async def run(mini_batch)" in str(caught.value)
    assert ParallelRunConfig(entry_script=script).max_concurrency_per_process == 1
    for bad in (0, -1, True, 1.5, "4", 100_000):
        with pytest.raises(ConfigError, match="max_concurrency_per_process"):
            ParallelRunConfig(entry_script=script, max_concurrency_per_process=bad)  # type: ignore[arg-type]


def test_a_run_bound_at_import_is_checked_in_the_process(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    """`run = ...` cannot be judged without importing the script: the process refuses a synchronous one
    before any mini-batch runs, and the job stops on it as on any init() failure."""
    script = write_script("def _score(mini_batch):\n    return mini_batch\nrun = _score\n")
    config = ParallelRunConfig(
        entry_script=script, max_concurrency_per_process=2, process_count_per_node=1, run_max_try=1
    )
    summary = run_job(config, [FileDataset.from_files(str(files(6)))], str(tmp_path / "out"))
    assert summary["status"] == "failed", summary
    rows = _attempts(summary)
    assert rows and all(row["Status"] == "INIT_EXCEPTION" for row in rows)
    for row in rows:
        documented(row["Error Message"])


def test_the_example_script_scores_through_httpx(files: Callable[..., Path], tmp_path: Path) -> None:
    """examples/io_bound_scoring/score_async.py as documented: async init(), run() and shutdown()."""
    example = BENCH.parent / "examples" / "io_bound_scoring" / "score_async.py"
    with ScoringServer(delay=0.02, jitter=0.05) as server:
        summary = run_job(
            ParallelRunConfig(
                entry_script=str(example),
                mini_batch_size=3,
                process_count_per_node=1,
                max_concurrency_per_process=4,
                environment_variables={
                    "SCORING_URL": f"http://{server.address}/score",
                    "SCORING_REQUESTS_PER_PROCESS": "5",
                },
            ),
            [FileDataset.from_files(str(files(20)))],
            str(tmp_path / "out"),
        )
        assert summary["status"] == "succeeded", summary
        names = [f"f{i:03d}.txt" for i in range(20)]
        assert Path(summary["append_row_file"]).read_text().splitlines() == [f"{n}\tscored" for n in names]
        assert server.calls == Counter(names)
        # the process's bound holds over the 4 mini-batches of 3 items in flight (12 requests unbounded)
        assert server.peak <= 5, server.peak
    log = next((Path(summary["logs_dir"]) / "user" / "entry_script_log").rglob("*.log.txt")).read_text()
    assert f"scoring against http://{server.address}/score, at most 5 requests at once" in log


def test_failures_reach_their_own_attempt_among_those_in_flight(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    """Answers of mini-batches in flight together are routed by attempt: a raising run() and an invalid
    result fail only their own mini-batch's attempt, and the retries complete the output."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_script(
        f"""
import asyncio, os
MARKS = {str(marks)!r}

async def run(mini_batch):
    await asyncio.sleep(0.2)  # all four in flight at once
    first = os.path.basename(mini_batch[0])
    flag = os.path.join(MARKS, first)
    again = os.path.exists(flag)
    open(flag, "a").close()
    if first == "f002.txt" and not again:
        raise ValueError("bad item " + first)
    if first == "f004.txt" and not again:
        return [first]  # one result for two items: the second item failed (allowed)
    if first == "f006.txt" and not again:
        return [first, first, first]  # more results than items: invalid
    return [os.path.basename(p) for p in mini_batch]
"""
    )
    summary = run_job(
        ParallelRunConfig(
            entry_script=script,
            mini_batch_size=2,
            process_count_per_node=1,
            max_concurrency_per_process=4,
            run_max_try=2,
        ),
        [FileDataset.from_files(str(files(8)))],
        str(tmp_path / "out"),
    )
    rows = {(row["Mini-batch Id"], row["Attempt"]): row for row in _attempts(summary)}
    assert rows[("1", "1")]["Status"] == "RUN_EXCEPTION"
    assert "ValueError: bad item f002.txt" in rows[("1", "1")]["Error Message"]
    assert rows[("2", "1")]["Status"] == "RUN_DONE" and rows[("2", "1")]["Failed"] == "1"
    assert rows[("3", "1")]["Status"] == "RUN_INVALID_RESULT"
    assert {k for k, row in rows.items() if row["Status"] != "RUN_DONE"} == {("1", "1"), ("3", "1")}
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"f{i:03d}.txt" for i in range(8) if i != 5]  # mini-batch 2's second item failed
    assert summary["failed_items"] == 1, summary


def test_a_stopped_job_ends_the_processes_with_mini_batches_in_flight(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    import psutil

    started = tmp_path / "started"
    script = write_script(
        f"""
import asyncio, os

async def init():
    await asyncio.sleep(0)

async def run(mini_batch):
    open({str(started)!r}, "a").write("x")
    await asyncio.sleep(120)
    return mini_batch
"""
    )
    drivers: list[Any] = []
    stopper = threading.Thread(target=lambda: _stop_when_started(drivers, started, 8), daemon=True)
    stopper.start()
    began = time.monotonic()
    summary = run_job(
        ParallelRunConfig(
            entry_script=script, mini_batch_size=1, process_count_per_node=2, max_concurrency_per_process=4
        ),
        [FileDataset.from_files(str(files(12)))],
        str(tmp_path / "out"),
        on_driver=drivers.append,
    )
    assert time.monotonic() - began < 60, "the stop did not end the coroutines' processes"
    assert summary["status"] == "failed" and "stopped by the test" in summary["message"], summary
    assert started.read_text() == "x" * 8, "not all 8 slots ran at once before the stop"
    children = [
        p
        for p in psutil.Process().children(recursive=True)
        if "airflow_parallel_run.core.worker.child" in p.cmdline()
    ]
    assert not [p for p in children if p.status() != psutil.STATUS_ZOMBIE], "entry-script processes are left"


def _stop_when_started(drivers: list[Any], started: Path, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if drivers and started.exists() and len(started.read_text()) >= count:
            time.sleep(0.5)
            drivers[0].cancel("stopped by the test")
            return
        time.sleep(0.1)


def test_output_dir_is_each_mini_batch_s_own_inside_an_async_run(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    """Mini-batches in flight together each write to their own `EntryScript().output_dir` (a context
    variable per task) and get their context; their files reach the output folder, and a file written to
    the process's folder (`AZUREML_BI_OUTPUT_PATH`) during run() is published at the job's end and keeps
    the mini-batch out of the reuse cache."""
    script = write_script(
        """
import asyncio, os
from azureml_user.parallel_run import EntryScript

async def run(mini_batch, mini_batch_context):
    folder = EntryScript().output_dir
    await asyncio.sleep(0.3)  # the others start meanwhile, each setting its own folder
    assert EntryScript().output_dir == folder
    index = mini_batch_context.minibatch_index
    with open(os.path.join(folder, f"mb{index}.txt"), "w") as out:
        out.write(",".join(os.path.basename(p) for p in mini_batch))
    if index == 3:
        with open(os.path.join(os.environ["AZUREML_BI_OUTPUT_PATH"], "shared.txt"), "w") as out:
            out.write("from the process")
    return list(mini_batch)
"""
    )
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=2, process_count_per_node=1, max_concurrency_per_process=4
    )
    inputs = [FileDataset.from_files(str(files(8)))]
    summary = run_job(config, inputs, str(tmp_path / "out"))
    assert summary["status"] == "succeeded", summary
    out = tmp_path / "out"
    for index in range(4):
        assert (out / f"mb{index}.txt").read_text() == f"f{2 * index:03d}.txt,f{2 * index + 1:03d}.txt"
    assert (out / "shared.txt").read_text() == "from the process"
    # who wrote shared.txt cannot be told: every mini-batch in flight meanwhile stays out of the cache
    master = (Path(summary["logs_dir"]) / "sys" / "master_role.txt").read_text()
    assert "mini-batch 3 is not cached: shared.txt changed in the process's output_dir" in master
    not_cached = [line for line in master.splitlines() if "is not cached" in line]
    assert all(": shared.txt changed" in line for line in not_cached), not_cached  # mb<n>.txt: their own
    again = run_job(config, inputs, str(tmp_path / "again"))
    assert again["status"] == "succeeded" and again["reused_mini_batches"] < 4, again
    for index in range(4):
        assert (tmp_path / "again" / f"mb{index}.txt").read_text() == (out / f"mb{index}.txt").read_text()
    assert (tmp_path / "again" / "shared.txt").read_text() == "from the process"


def test_async_init_and_shutdown_with_a_synchronous_run(
    write_script: Callable[..., str], files: Callable[..., Path], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_script(
        f"""
import asyncio, os

async def init():
    global PREFIX
    await asyncio.sleep(0.01)
    PREFIX = "ready"

def run(mini_batch):
    return [PREFIX + " " + os.path.basename(p) for p in mini_batch]

async def shutdown():
    await asyncio.sleep(0.01)
    open(os.path.join({str(marks)!r}, str(os.getpid())), "w").close()
"""
    )
    summary = run_job(
        ParallelRunConfig(entry_script=script, mini_batch_size=2, process_count_per_node=1),
        [FileDataset.from_files(str(files(4)))],
        str(tmp_path / "out"),
    )
    assert summary["status"] == "succeeded", summary
    assert Path(summary["append_row_file"]).read_text().splitlines() == [
        f"ready f{i:03d}.txt" for i in range(4)
    ]
    assert len(list(marks.iterdir())) == 1, "the async shutdown() did not run"

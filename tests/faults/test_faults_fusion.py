"""Chunks of short attempts in one Dask task (core/driver/fusion.py, core/worker/chunk.py) with real
entry-script processes: the same results and accounting as one attempt per task, and the same handling
of a lost worker, a stop, a failed init(), timeouts and the watchdog.

Where a test needs a chunk at a known place, `Fusion.size` is pinned (the driver runs in this process);
the equivalence test lets the driver choose as it does in a job."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from faults_support import attempts, check_accounting, expected_line
from test_faults_kill import JobThread

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver import fusion
from airflow_parallel_run.core.driver.attempts import AttemptStream, Window, attempt_name
from airflow_parallel_run.core.driver.fusion import Fusion
from airflow_parallel_run.core.driver.loop import JobDriver
from airflow_parallel_run.core.worker import chunk

HEAD = """import os, sys, time, uuid
import psutil
from airflow_parallel_run import EntryScript
def worker_pid():  # its Dask worker: the parent, or the parent of the fork server it was forked from
    parent = psutil.Process(os.getppid())
    return parent.ppid() if "fork_server" in " ".join(parent.cmdline()) else parent.pid
"""
NODE_LINE = re.compile(r"\|(picked|completed) mini-batch (\d+) attempt (\d+)\b")


def _index(path: str) -> int:
    return int(Path(path).read_text())


def pin_chunks(monkeypatch: pytest.MonkeyPatch, k: int) -> list[int]:
    """Every submit sends chunks of `k` (the last one of a submit may be shorter), the first submit once the
    listing has ended; returns the sizes sent."""
    monkeypatch.setattr(Fusion, "size", lambda self, pending, any_succeeded: k)
    whole_plan_first(monkeypatch)
    return record_chunks(monkeypatch)


def whole_plan_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first submit waits for the listing's end, so that its chunks are the whole plan's: streaming
    planning gives the listing FIRST_FILL_S, and on a loaded machine it had listed 3 of 12 mini-batches by
    then (a first chunk of 3 where the test laid out [0-3] [4-7] [8-11])."""

    def fill_with_everything(self: JobDriver, pending: Any) -> None:
        while self.listing and not self.stop.requested:
            self._pull(pending, 0)

    monkeypatch.setattr(JobDriver, "_fill_first", fill_with_everything)


def record_chunks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    submit = AttemptStream.submit

    def recorded(self: AttemptStream, attempts: Any, workers: Any = None, **options: Any) -> None:
        attempts = list(attempts)
        if attempts:
            sent.append(1 if options.get("solo") else min(options.get("chunk", 1), len(attempts)))
        submit(self, attempts, workers, **options)

    monkeypatch.setattr(AttemptStream, "submit", recorded)
    return sent


def rows(out: Path) -> dict[int, list[dict[str, str]]]:
    by: dict[int, list[dict[str, str]]] = {}
    for row in attempts(out):
        by.setdefault(int(row["Mini-batch Id"]), []).append(row)
    return by


def node_lines(out: Path) -> list[tuple[str, int, int]]:
    found = []
    for path in (out / "logs" / "sys" / "node").rglob("*.txt"):
        for line in path.read_text().splitlines():
            match = NODE_LINE.search(line)
            if match:
                found.append((match[1], int(match[2]), int(match[3])))
    return sorted(found)


def cache_entries(root: Path) -> dict[str, bytes]:
    """Reuse-cache entries: key -> the bytes of what it holds (its part, its output_dir files), by name
    within the entry (the entry's own random file names left out)."""
    found = {}
    for meta in root.rglob("meta.json"):
        held = sorted(p for p in meta.parent.rglob("*") if p.is_file() and p.name != "meta.json")
        found[meta.parent.name] = b"|".join(
            sorted((p.name if p.parent != meta.parent else "").encode() + b"=" + p.read_bytes() for p in held)
        )
    return found


def _set_budget(seconds: float) -> float:
    """`client.run` target: the chunk time budget on a worker (returns the old one)."""
    old, chunk.CHUNK_BUDGET_S = chunk.CHUNK_BUDGET_S, seconds
    return old


# -- 1. the same job, chunked or not ------------------------------------------------------------------------
EQUIVALENCE_SCRIPT = (
    HEAD
    + """
def run(mini_batch):
    numbers = [int(open(p).read()) for p in mini_batch]
    if numbers[0] % 11 == 5:
        raise ValueError(f"mini-batch starting at {numbers[0]} fails every time")
    if numbers[0] % 5 == 0:
        with open(os.path.join(EntryScript().output_dir, f"n{numbers[0]}.out"), "w") as f:
            f.write(str(numbers))
    return [f"f{n:03d}.txt {n}" for n in numbers if n % 7 != 3]
"""
)


def _equivalence_job(
    client: Any, script: str, root: Path, out: Path, size: int, cache: Path
) -> dict[str, Any]:
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=size, process_count_per_node=2, run_max_try=2
    )
    return run_job(config, [FileDataset.from_files(str(root))], str(out), client=client, cache_dir=str(cache))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chunks_give_the_same_outputs_counts_cache_and_logs(
    dask_client, write_script, files, tmp_path, monkeypatch, seed
) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    size = rng.randint(1, 3)
    count = rng.randint(25, 60) * size - rng.randint(0, size - 1)  # 25-60 mini-batches, the last one short
    root, script = files(count), write_script(EQUIVALENCE_SCRIPT)
    sent = record_chunks(monkeypatch)
    # chunks whatever this machine's speed: by the median attempt time, a loaded machine (attempts over a
    # tenth of a second) fused none and the fused job ran as the other (fresh-clone CI of c0029a7)
    monkeypatch.setattr(fusion, "CHUNK_TARGET_S", 3600.0)
    fused = _equivalence_job(dask_client, script, root, tmp_path / "fused", size, tmp_path / "cache-fused")
    assert max(sent) > 1, f"no chunk was sent ({count} files, {size} per mini-batch): {sent}"
    monkeypatch.setattr(fusion, "CHUNK_MAX", 1)
    sent.clear()
    alone = _equivalence_job(dask_client, script, root, tmp_path / "alone", size, tmp_path / "cache-alone")
    assert set(sent) == {1}

    varying = ("duration_s", "output", "append_row_file", "logs_dir")
    assert {k: v for k, v in fused.items() if k not in varying} == {
        k: v for k, v in alone.items() if k not in varying
    }
    assert Path(fused["append_row_file"]).read_bytes() == Path(alone["append_row_file"]).read_bytes()
    check_accounting(fused, count)
    published = {
        side: {
            p.relative_to(tmp_path / side).as_posix(): p.read_bytes()
            for p in (tmp_path / side).rglob("*")
            if p.is_file()
            and "logs" not in p.parts
            and p.name != "parallel_run_step.txt"
            and not p.name.startswith(".")
        }
        for side in ("fused", "alone")
    }
    assert published["fused"] == published["alone"] and any(n.endswith(".out") for n in published["fused"])
    assert cache_entries(tmp_path / "cache-fused") == cache_entries(tmp_path / "cache-alone") != {}

    def report(out: Path) -> list[tuple[str, ...]]:
        keep = (
            "Mini-batch Id",
            "Attempt",
            "Total",
            "Succeeded",
            "Failed",
            "Status",
            "Error Message",
            "Mini-batch Detail",
        )
        return sorted(tuple(row[c] for c in keep) for row in attempts(out))

    assert report(tmp_path / "fused") == report(tmp_path / "alone")
    assert node_lines(tmp_path / "fused") == node_lines(tmp_path / "alone")
    assert len(set(node_lines(tmp_path / "fused"))) == len(node_lines(tmp_path / "fused"))  # once each

    def errors(out: Path) -> list[str]:  # one line per distinct error, counts and all (paths name processes)
        text = (out / "logs" / "user" / "error.txt").read_text()
        return sorted(re.sub(r"\(.*?\)", "", line) for line in text.splitlines())

    assert errors(tmp_path / "fused") == errors(tmp_path / "alone")


# -- 2. a worker lost while it runs a chunk -------------------------------------------------------------------
KILLER_SCRIPT = (
    HEAD
    + """
import signal
def run(mini_batch):
    n = int(open(mini_batch[0]).read())
    if n == {killer}:
        time.sleep(1.0)  # the chunk's other attempts are done: only this one dies with the worker
        os.kill(worker_pid(), signal.SIGKILL)  # its Dask worker (the nanny starts another)
        time.sleep(30)
    with open(os.path.join(EntryScript().output_dir, f"n{{n}}-{{uuid.uuid4().hex}}.out"), "w") as f:
        f.write("x")  # a name of each run's own: a lost run's file would show as a second one
    time.sleep(0.05)
    return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
"""
)


def test_a_lost_chunk_charges_only_the_attempt_that_kills_its_worker(
    external_cluster, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The scheduler gives up on a task at the first lost worker (allowed-failures 0), so the chunk comes
    back as an error: its attempts go back uncharged, each alone; the one that kills its worker again
    then fails its own tries, and the chunk's other attempts, which had completed in the lost run, run
    again and publish their files once. (Attempts after the killer in its chunk, which had not run, are
    put back the same way: tests/core/driver/test_fusion.py.)"""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")
    cluster = external_cluster(workers=2, nthreads=1, nanny=True)
    # chunks [0-3] [4-7] [8-11], the killer last: once its chunk is lost, its attempts go back alone to
    # the one worker left (the other restarts), and only an attempt queued behind the killer would be
    # lost with it again, and charged, as any attempt alone is (with allowed-failures 0)
    count, killer = 12, 11
    sent = pin_chunks(monkeypatch, 4)
    # every attempt at the first submit, so that the chunks are those three
    monkeypatch.setattr(
        Window, "room", lambda self, in_flight, any_succeeded, pending=None, **_: pending or 0
    )
    root, out = files(count), tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=write_script(KILLER_SCRIPT.format(killer=killer)),
        mini_batch_size=1,
        process_count_per_node=2,
        run_max_try=2,
    )
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), scheduler=cluster.address)
    job.start()
    summary = job.result(timeout=240)
    assert sent[0] == 4, sent
    check_accounting(summary, count, expected_lines=[expected_line(i) for i in range(count) if i != killer])
    assert summary["failed_mini_batches"] == 1, summary
    by = rows(out)
    assert [(r["Attempt"], r["Status"]) for r in by[killer]] == [("1", "PROCESS_DIED"), ("2", "PROCESS_DIED")]
    for index in set(range(count)) - {killer}:
        assert [(r["Attempt"], r["Status"]) for r in by[index]] == [("1", "RUN_DONE")], (index, by[index])
    published = sorted(p.name.split("-")[0] for p in out.rglob("n*.out"))
    assert published == sorted(f"n{i}" for i in range(count) if i != killer), published


ONCE_KILLER_SCRIPT = (
    HEAD
    + """
import signal
def run(mini_batch):
    n = int(open(mini_batch[0]).read())
    with open(os.path.join(EntryScript().output_dir, f"n{{n}}-{{uuid.uuid4().hex}}.out"), "w") as f:
        f.write("x")  # a name of each run's own: a lost run's file would show as a second one
    if n == {killer} and not os.path.exists({marker!r}):
        open({marker!r}, "w").close()
        os.kill(worker_pid(), signal.SIGKILL)  # its Dask worker, once (the nanny starts another)
        time.sleep(30)
    return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
"""
)


def test_an_attempt_alone_run_again_after_its_worker_was_lost_publishes_only_its_last_runs_files(
    external_cluster, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Not only chunks: an attempt of its own whose worker was lost is run again by the scheduler under the
    same key, so under the same attempt number; each run writes under a token of its own, and only the
    booked run's file is published."""
    cluster = external_cluster(workers=2, nthreads=1, nanny=True)
    sent = pin_chunks(monkeypatch, 1)
    count, killer = 4, 2
    root, out = files(count), tmp_path / "out"
    script = ONCE_KILLER_SCRIPT.format(killer=killer, marker=str(tmp_path / "killed-once"))
    config = ParallelRunConfig(entry_script=write_script(script), mini_batch_size=1, process_count_per_node=2)
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), scheduler=cluster.address)
    job.start()
    summary = job.result(timeout=240)
    assert set(sent) == {1}, sent
    check_accounting(summary, count, expected_lines=[expected_line(i) for i in range(count)])
    assert (tmp_path / "killed-once").exists()
    assert [(r["Attempt"], r["Status"]) for r in rows(out)[killer]] == [("1", "RUN_DONE")]
    published = sorted(p.name.split("-")[0] for p in out.rglob("n*.out"))
    assert published == sorted(f"n{i}" for i in range(count)), published


BOOKED_THEN_LOST_SCRIPT = (
    HEAD
    + """
def run(mini_batch):
    n, run_id = int(open(mini_batch[0]).read()), uuid.uuid4().hex
    with open(os.path.join(EntryScript().output_dir, f"n{{n}}.out"), "w") as f:
        f.write(run_id)
    with open(os.path.join({marks!r}, f"n{{n}}-{{run_id}}"), "w") as f:
        f.write(str(worker_pid()))  # its Dask worker
    return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
"""
)


def test_a_run_again_after_the_driver_read_the_result_leaves_the_booked_runs_files_alone(
    external_cluster, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The driver has read an attempt's result, and its worker is lost before the driver has published the
    attempt's files: the scheduler runs the task again (the driver still holds its future), and that run
    must not touch the files of the run the driver booked. Every run of a task writes under a name of its
    own (core/worker/attempt.py), so the output holds the booked run's file, and the job succeeds. (Before:
    the run again removed the attempt's output_dir folder while the driver published it, and the job
    failed with a FileNotFoundError.)"""
    cluster = external_cluster(workers=2, nthreads=1, nanny=True)
    pin_chunks(monkeypatch, 1)
    count, victim = 4, 0
    marks = tmp_path / "marks"
    marks.mkdir()
    root, out = files(count), tmp_path / "out"

    def runs() -> list[Path]:
        return sorted(marks.glob(f"n{victim}-*"))

    gather = AttemptStream._gather
    lost: list[str] = []  # the booked run's token

    def gather_then_lose_the_worker(self: AttemptStream, futures: list[Any]) -> dict[str, Any]:
        outcomes = gather(self, futures)  # the futures are still held here
        name = f"-mb{victim}-a1"
        if not lost and any(attempt_name(f.key).endswith(name) for f in futures):
            (first,) = runs()
            lost.append(first.name.split("-", 1)[1])
            os.kill(int(first.read_text()), signal.SIGKILL)
            deadline = time.monotonic() + 90
            while len(runs()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(runs()) == 2, "the scheduler did not run the task again"
        return outcomes

    monkeypatch.setattr(AttemptStream, "_gather", gather_then_lose_the_worker)
    config = ParallelRunConfig(
        entry_script=write_script(BOOKED_THEN_LOST_SCRIPT.format(marks=str(marks))),
        mini_batch_size=1,
        process_count_per_node=1,
    )
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), scheduler=cluster.address)
    job.start()
    summary = job.result(timeout=240)
    assert lost, "mini-batch 0's result was never gathered"
    check_accounting(summary, count, expected_lines=[expected_line(i) for i in range(count)])
    assert [(r["Attempt"], r["Status"]) for r in rows(out)[victim]] == [("1", "RUN_DONE")]
    assert (out / f"n{victim}.out").read_text() == lost[0]  # the booked run's, not the run again's
    assert sorted(p.name for p in out.glob("n*.out")) == [f"n{i}.out" for i in range(count)]
    assert not (out / ".staging").exists()


# -- 3. a stop while a chunk runs ------------------------------------------------------------------------------
STOP_SCRIPT = (
    HEAD
    + """
def run(mini_batch):
    n = int(open(mini_batch[0]).read())
    if n == 1:
        open({stamp!r} + ".running", "w").close()  # mini-batch 0, before it in its chunk, is done
        time.sleep(30)
    if n == 5:
        deadline = time.time() + 60  # the other chunk's processes may start later than this one's
        while not os.path.exists({stamp!r} + ".running") and time.time() < deadline:
            time.sleep(0.02)
        open({stamp!r}, "w").write(str(time.time()))
        raise ValueError("fails: the job stops (allowed_failed_count=0)")
    return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
"""
)


def test_a_stop_during_a_chunk_reports_its_later_attempts_never_started(
    dask_client, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    sent = pin_chunks(monkeypatch, 4)  # [0-3] on one worker (1 sleeps), [4-7] on the other (5 fails)
    stamp = tmp_path / "failed-at"
    root, out = files(16), tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=write_script(STOP_SCRIPT.format(stamp=str(stamp))),
        mini_batch_size=1,
        process_count_per_node=2,
        run_max_try=1,
        allowed_failed_count=0,
    )
    job = JobThread(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
    job.start()
    summary = job.result(timeout=120)
    ended = time.time()
    assert summary["status"] == "failed" and "allowed_failed_count" in summary["message"], summary
    assert sent[0] == 4, sent
    # the stop from the booked failure to the job's summary: within the stop's bounds (4.2 s) + the result
    assert ended - float(stamp.read_text()) < 4.2 + 3.0, ended - float(stamp.read_text())
    by = rows(out)
    assert [r["Status"] for r in by[0]] == ["RUN_DONE"] and [r["Status"] for r in by[1]] == ["CANCELLED"]
    assert 2 not in by and 3 not in by, by  # after the stop in the same chunk: never started, no row
    assert [r["Status"] for r in by[5]] == ["RUN_EXCEPTION"]
    picked = {(i, a) for what, i, a in node_lines(out) if what == "picked"}
    assert (2, 1) not in picked and (3, 1) not in picked


# -- 4. init() fails inside a chunk ------------------------------------------------------------------------------
INIT_SCRIPT = (
    HEAD
    + """
import glob
MARK = {mark!r}
def init():
    if os.path.exists(MARK):
        open(MARK + ".inits", "a").write("failed\\n")
        if len(open(MARK + ".inits").read().splitlines()) > 1:
            time.sleep(5)  # a later process's init() (another chunk's): the stop catches it
        raise RuntimeError("init() fails once the process of mini-batch 5 died")
    open(MARK + f".ok-{{os.getpid()}}", "w").close()
def run(mini_batch):
    n = int(open(mini_batch[0]).read())
    if n == 5:
        deadline = time.monotonic() + 60  # both first processes past init(): the other chunk's too
        while len(glob.glob(MARK + ".ok-*")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        open(MARK, "w").write("x")
        os._exit(3)
    return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
"""
)


def test_an_init_failure_ends_the_chunk_and_its_rest_is_not_charged(
    dask_client, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """[4-7]: 4 runs, 5 kills its process, 6 starts a new one whose init() fails; 7 does not run init() in
    that chunk but goes back to the driver, which books 5 and 6, reaches allowed_failed_count and stops:
    7 never runs. Run in the same task, 7 would have met init() and failed (a row, a charged try)."""
    pin_chunks(monkeypatch, 4)
    mark = tmp_path / "broken"
    root, out = files(16), tmp_path / "out"
    config = ParallelRunConfig(
        entry_script=write_script(INIT_SCRIPT.format(mark=str(mark))),
        mini_batch_size=1,
        process_count_per_node=2,
        run_max_try=1,
        allowed_failed_count=1,
    )
    dask_client.run(_set_budget, 60.0)  # the chunk's time budget could end it first: not here
    try:
        summary = run_job(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
    finally:
        dask_client.run(_set_budget, chunk.CHUNK_BUDGET_S)
    assert summary["status"] == "failed" and "allowed_failed_count" in summary["message"], summary
    by = rows(out)
    assert [r["Status"] for r in by[5]] == ["PROCESS_DIED"] and [r["Status"] for r in by[6]] == [
        "INIT_EXCEPTION"
    ]
    assert 7 not in by, by[7]
    assert (("picked", 7, 1)) not in node_lines(out)


def test_init_failing_everywhere_stops_the_job_as_before_with_no_chunk(
    dask_client, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Before any mini-batch succeeded every attempt goes alone, so `InitFailures` counts as it did."""
    sent = record_chunks(monkeypatch)
    script = write_script("def init():\n    raise RuntimeError('no model')\ndef run(b):\n    return b\n")
    config = ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2)
    summary = run_job(
        config, [FileDataset.from_files(str(files(60)))], str(tmp_path / "out"), client=dask_client
    )
    assert summary["status"] == "failed" and "init() failed 4 times" in summary["message"], summary
    assert set(sent) == {1}, sent


# -- 5. timeouts inside a chunk --------------------------------------------------------------------------------
def test_a_timeout_kills_only_its_attempt_and_the_chunk_goes_on(
    dask_client, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    pin_chunks(monkeypatch, 4)
    chunks: list[tuple[list[int], int]] = []
    book = AttemptStream._book

    def booked(self: AttemptStream, sent: Any, gathered: Any) -> Any:
        out = book(self, sent, gathered)
        chunks.append(([mb.index for mb, _ in sent.attempts], len(out)))
        return out

    monkeypatch.setattr(AttemptStream, "_book", booked)
    script = write_script(
        "import os, time\ndef run(b):\n    if open(b[0]).read().strip() == '1':\n        time.sleep(30)\n"
        "    return [os.path.basename(p) for p in b]\n"
    )
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size=1,
        process_count_per_node=2,
        run_invocation_timeout=2,
        run_max_try=1,
    )
    dask_client.run(_set_budget, 60.0)  # the budget would end the chunk after the timeout: not here
    try:
        summary = run_job(
            config, [FileDataset.from_files(str(files(8)))], str(tmp_path / "out"), client=dask_client
        )
    finally:
        dask_client.run(_set_budget, chunk.CHUNK_BUDGET_S)
    assert summary["failed_mini_batches"] == 1 and summary["succeeded_mini_batches"] == 7, summary
    assert ([0, 1, 2, 3], 4) in chunks, chunks  # one task ran all four
    by = rows(tmp_path / "out")
    timed_out = by[1][0]
    assert timed_out["Status"] == "RUN_TIMEOUT" and 2.0 <= float(timed_out["Elapsed Seconds"]) < 8.0, (
        timed_out
    )
    for index in (2, 3):  # after the kill, in a new process (init() again), charged nothing
        assert [(r["Attempt"], r["Status"]) for r in by[index]] == [("1", "RUN_DONE")]
        assert by[index][0]["Process"] != timed_out["Process"]


# -- 6. the watchdog sees each attempt of a chunk -----------------------------------------------------------------
def test_the_watchdog_names_the_attempt_running_in_a_chunk_and_those_waiting(
    dask_client, write_script, files, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    pin_chunks(monkeypatch, 4)
    script = write_script(
        "import os, time\ndef run(b):\n    if open(b[0]).read().strip() == '1':\n        time.sleep(60)\n"
        "    return [os.path.basename(p) for p in b]\n"
    )
    config = ParallelRunConfig(
        entry_script=script, mini_batch_size=1, process_count_per_node=2, progress_update_timeout=4
    )
    summary = run_job(
        config, [FileDataset.from_files(str(files(8)))], str(tmp_path / "out"), client=dask_client
    )
    message = summary["message"]
    assert "progress_update_timeout" in message, summary
    assert re.search(r"mini-batch 1 \(.*attempt 1\) has run for [\d.]+ s in \S+ on ", message), message
    # 2 and 3, and 0, which ran but whose chunk has not reported: the driver knows tasks, not their steps
    assert "3 submitted mini-batch(es) not running in any process" in message, message
    picked = [(i, a) for what, i, a in node_lines(tmp_path / "out") if what == "picked"]
    assert (0, 1) in picked and (1, 1) in picked and (2, 1) not in picked

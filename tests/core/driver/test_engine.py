"""The engine on a real Dask LocalCluster: contract, failures, retries, thresholds, outputs, logs."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from distributed import Client

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job


def job(client: Client, script: str, inputs: list[Any], out: Path, **kw: Any) -> dict[str, Any]:
    options = {k: kw.pop(k) for k in ("side_inputs", "arguments") if k in kw}
    kw.setdefault("process_count_per_node", 2)
    return run_job(ParallelRunConfig(entry_script=script, **kw), inputs, str(out), client=client, **options)


def attempts(out: Path) -> list[dict[str, str]]:
    with open(out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline="") as handle:
        return list(csv.DictReader(handle))


ECHO = """
import os
def run(mini_batch):
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""


def test_file_job_output_in_order_and_identical_across_process_counts(
    dask_client, write_script, files, tmp_path
):
    root = files(23)
    script = write_script(ECHO)
    outputs = []
    for count in (1, 2):
        summary = job(
            dask_client,
            script,
            [FileDataset.from_files(str(root))],
            tmp_path / f"o{count}",
            mini_batch_size=3,
            process_count_per_node=count,
        )
        assert summary["status"] == "succeeded", summary
        assert (summary["total_items"], summary["succeeded_items"], summary["failed_items"]) == (23, 23, 0)
        assert summary["total_mini_batches"] == 8 and summary["succeeded_mini_batches"] == 8
        outputs.append(Path(summary["append_row_file"]).read_text())
    assert outputs[0] == outputs[1] == "".join(f"f{i:03d}.txt {i}\n" for i in range(23))
    assert set(
        json.loads(Path(tmp_path / "o2" / "logs" / "job_result.txt").read_text().split("\n\n")[-1])
    ) >= {
        "status",
        "total_items",
        "succeeded_items",
        "failed_items",
        "total_mini_batches",
        "succeeded_mini_batches",
        "failed_mini_batches",
        "reused_mini_batches",
        "output",
        "append_row_file",
        "logs_dir",
        "cache_key",
        "duration_s",
    }
    assert not (tmp_path / "o2" / ".staging").exists()


def test_contract_context_arguments_env_side_input_entry_script(dask_client, write_script, files, tmp_path):
    root = files(4)
    labels = tmp_path / "labels.txt"
    labels.write_text("side-input-content")
    script = write_script("""
        import argparse, os, sys
        from azureml_user.parallel_run import EntryScript
        from airflow_parallel_run import EntryScript as Ours
        def init():
            global args, content
            parser = argparse.ArgumentParser()
            parser.add_argument("--labels")
            parser.add_argument("--flag")
            args, _ = parser.parse_known_args()
            content = open(args.labels).read()
            assert EntryScript() is Ours()
            EntryScript().logger.info("init ran in %s", os.getcwd())
            print("hello from init")
        def run(mini_batch, mini_batch_context):
            es = EntryScript()
            return [
                f"{mini_batch_context.minibatch_index}|{os.path.isabs(p)}|{args.flag}|{content}|{os.environ['MY_VAR']}|"
                f"{es.agent_name.startswith('process')}|{os.environ['AZUREML_BI_OUTPUT_PATH'] == es.output_dir}"
                for p in mini_batch
            ]
        def shutdown():
            open(os.path.join(EntryScript().output_dir, "shutdown-" + EntryScript().agent_name), "w").close()
    """)
    out = tmp_path / "out"
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(root))],
        out,
        mini_batch_size=2,
        arguments=["--labels", str(labels), "--flag=yes"],
        side_inputs=[str(labels)],
        environment_variables={"MY_VAR": "v1"},
    )
    assert summary["status"] == "succeeded", summary
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"{i // 2}|True|yes|side-input-content|v1|True|True" for i in range(4)]
    assert list(out.glob("shutdown-process*")), "shutdown() did not run"
    stdout = "".join(p.read_text() for p in (out / "logs" / "user" / "stdout").rglob("*.stdout.txt"))
    assert "hello from init" in stdout
    entry_logs = "".join(
        p.read_text() for p in (out / "logs" / "user" / "entry_script_log").rglob("*.log.txt")
    )
    assert "init ran in" in entry_logs and "|INFO|" in entry_logs


def test_hung_run_is_killed_within_timeout_and_retried(dask_client, write_script, files, tmp_path):
    root = files(4)
    marker = tmp_path / "hung-once"
    script = write_script(f"""
        import os, time
        INITS = 0
        def init():
            global INITS
            INITS += 1
            print("init", os.getpid())
        def run(mini_batch):
            if any(p.endswith("f002.txt") for p in mini_batch) and not os.path.exists({str(marker)!r}):
                open({str(marker)!r}, "w").close()
                time.sleep(600)
            return [os.path.basename(p) for p in mini_batch]
    """)
    started = time.monotonic()
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(root))],
        tmp_path / "out",
        mini_batch_size=1,
        run_invocation_timeout=3,
    )
    assert time.monotonic() - started < 3 + 15
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 4, summary
    rows = attempts(tmp_path / "out")
    timed_out = [r for r in rows if r["Status"] == "RUN_TIMEOUT"]
    assert (
        len(timed_out) == 1
        and timed_out[0]["Mini-batch Id"] == "2"
        and "did not finish in 3 s" in timed_out[0]["Error Message"]
    )
    retried = [r for r in rows if r["Mini-batch Id"] == "2" and r["Status"] == "RUN_DONE"]
    assert retried and retried[0]["Attempt"] == "2"
    assert float(timed_out[0]["Elapsed Seconds"]) < 3 + 5
    # the killed process was replaced: a new process name ran init() again
    assert retried[0]["Process"] != timed_out[0]["Process"] or len({r["Process"] for r in rows}) > 2
    assert Path(summary["append_row_file"]).read_text().splitlines() == [f"f{i:03d}.txt" for i in range(4)]


def test_abort_in_run_fails_that_attempt_only(dask_client, write_script, files, tmp_path):
    root = files(6)
    script = write_script("""
        import os
        def run(mini_batch):
            if any(p.endswith("f003.txt") for p in mini_batch):
                print("about to abort", flush=True)
                os.abort()
            return [os.path.basename(p) for p in mini_batch]
    """)
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(root))],
        tmp_path / "out",
        mini_batch_size=1,
        run_max_try=2,
    )
    assert summary["status"] == "succeeded", summary  # error_threshold -1: failures are tolerated
    assert (summary["succeeded_items"], summary["failed_items"], summary["failed_mini_batches"]) == (5, 1, 1)
    rows = [r for r in attempts(tmp_path / "out") if r["Mini-batch Id"] == "3"]
    assert [r["Status"] for r in rows] == ["PROCESS_DIED", "PROCESS_DIED"]
    assert "SIGABRT" in rows[0]["Error Message"]
    errors = (tmp_path / "out" / "logs" / "user" / "error.txt").read_text()
    assert "2 x PROCESS_DIED" in errors and "logs/user/error/" in errors
    assert "f003" not in Path(summary["append_row_file"]).read_text()


def test_exception_in_init_stops_the_job_soon_with_trace(dask_client, write_script, files, tmp_path):
    root = files(40)
    script = write_script("""
        def init():
            raise RuntimeError("model file is missing")
        def run(mini_batch):
            return mini_batch
    """)
    out = tmp_path / "out"
    summary = job(
        dask_client, script, [FileDataset.from_files(str(root))], out, mini_batch_size=1, run_max_try=3
    )
    assert summary["status"] == "failed" and summary["succeeded_items"] == 0
    assert "init() failed 4 times and no mini-batch has succeeded" in summary["message"]
    assert "RuntimeError: model file is missing" in summary["message"]
    rows = attempts(out)
    assert {r["Status"] for r in rows} <= {"INIT_EXCEPTION", "CANCELLED"} and len(rows) <= 4 + 8, len(rows)
    assert summary["failed_items"] == 40 and summary["total_items"] == 40
    error_txt = (out / "logs" / "user" / "error.txt").read_text()
    assert "INIT_EXCEPTION: RuntimeError: model file is missing" in error_txt
    traces = "".join(p.read_text() for p in (out / "logs" / "user" / "error").rglob("*.txt"))
    assert (
        "Traceback (most recent call last)" in traces
        and 'raise RuntimeError("model file is missing")' in traces
    )
    assert "model file is missing" in (out / "logs" / "job_result.txt").read_text()
    assert not (out / "parallel_run_step.txt").exists()


def test_partial_results_none_and_too_many(dask_client, write_script, files, tmp_path):
    root = files(9)
    script = write_script("""
        import os
        def run(mini_batch):
            names = [os.path.basename(p) for p in mini_batch]
            if "f003.txt" in names:
                return None
            if "f006.txt" in names:
                return names + ["extra"]
            return names[:-1]  # the last item of each mini-batch fails
    """)
    out = tmp_path / "out"
    summary = job(
        dask_client, script, [FileDataset.from_files(str(root))], out, mini_batch_size=3, run_max_try=1
    )
    assert summary["status"] == "succeeded"
    assert (summary["total_items"], summary["succeeded_items"], summary["failed_items"]) == (9, 2, 7)
    by_batch = {r["Mini-batch Id"]: r for r in attempts(out)}
    assert by_batch["0"]["Status"] == "RUN_DONE" and (
        by_batch["0"]["Succeeded"],
        by_batch["0"]["Failed"],
    ) == ("2", "1")
    assert (
        by_batch["1"]["Status"] == "RUN_INVALID_RESULT"
        and "It returned NoneType" in by_batch["1"]["Error Message"]
    )
    assert (
        by_batch["2"]["Status"] == "RUN_INVALID_RESULT"
        and "returned 4 results for a mini-batch of 3" in by_batch["2"]["Error Message"]
    )
    assert Path(summary["append_row_file"]).read_text().splitlines() == ["f000.txt", "f001.txt"]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"error_threshold": 2}, "error_threshold exceeded: 3 failed items > error_threshold 2"),
        (
            {"allowed_failed_count": 1},
            "allowed_failed_count exceeded: 2 failed mini-batches > allowed_failed_count 1",
        ),
        ({"allowed_failed_percent": 10}, "allowed_failed_percent exceeded"),
    ],
)
def test_thresholds_stop_the_job_early(dask_client, write_script, files, tmp_path, settings, fragment):
    root = files(40)
    script = write_script("""
        import os, time
        def run(mini_batch):
            time.sleep(0.05)
            if int(open(mini_batch[0]).read()) % 2:
                raise ValueError("odd input " + os.path.basename(mini_batch[0]))
            return mini_batch
    """)
    out = tmp_path / "out"
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(root))],
        out,
        mini_batch_size=1,
        run_max_try=1,
        **settings,
    )
    assert summary["status"] == "failed" and fragment in summary["message"], summary
    if "allowed_failed_percent" not in settings:  # checked only once everything is scheduled
        assert len({r["Mini-batch Id"] for r in attempts(out)}) < 40, "the job did not stop early"
    assert summary["succeeded_items"] + summary["failed_items"] == summary["total_items"] == 40
    assert "ValueError: odd input" in (out / "logs" / "user" / "error.txt").read_text()
    assert fragment in (out / "logs" / "job_result.txt").read_text()


def test_flaky_run_retried_without_duplicates(dask_client, write_script, files, tmp_path):
    root = files(30)
    seen = tmp_path / "seen"
    seen.mkdir()
    script = write_script(f"""
        import os
        def run(mini_batch):
            out = []
            for p in mini_batch:
                flag = os.path.join({str(seen)!r}, os.path.basename(p))
                if int(open(p).read()) % 3 == 0 and not os.path.exists(flag):
                    open(flag, "w").close()
                    raise IOError("transient failure on " + os.path.basename(p))
                out.append(os.path.basename(p))
            return out
    """)
    summary = job(
        dask_client, script, [FileDataset.from_files(str(root))], tmp_path / "out", mini_batch_size=2
    )
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 30
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"f{i:03d}.txt" for i in range(30)]


@pytest.mark.parametrize("fmt", ["text", "csv", "jsonl", "parquet"])
def test_tabular_output_formats(dask_client, write_script, tmp_path, fmt):
    source = tmp_path / "rows.csv"
    frame = pd.DataFrame(
        {"id": range(200), "note": [f'line "{i}"\nsecond' if i % 7 == 0 else f"n{i}" for i in range(200)]}
    )
    frame.to_csv(source, index=False)
    script = write_script("""
        def run(mini_batch):
            mini_batch["double"] = mini_batch["id"] * 2
            return mini_batch[["id", "double"]]
    """)
    out = tmp_path / "out"
    summary = job(
        dask_client,
        script,
        [TabularDataset.from_delimited_files(str(source))],
        out,
        mini_batch_size="512",
        append_row_format=fmt,
        append_row_file_name=f"result.{fmt}",
    )
    assert summary["status"] == "succeeded" and summary["total_items"] == 200, summary
    assert summary["total_mini_batches"] > 3
    target = Path(summary["append_row_file"])
    if fmt == "text":  # Azure-compatible: space-separated, no header
        assert target.read_text().splitlines() == [f"{i} {2 * i}" for i in range(200)]
        return
    read = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[
        fmt
    ]
    back = read(target)
    assert back["id"].tolist() == list(range(200)) and back["double"].tolist() == [2 * i for i in range(200)]


def test_summary_only_writes_no_output_file(dask_client, write_script, files, tmp_path):
    root = files(5)
    script = write_script("""
        def run(mini_batch):
            return mini_batch
    """)
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(root))],
        tmp_path / "out",
        output_action="summary_only",
    )
    assert summary["status"] == "succeeded" and summary["append_row_file"] is None
    assert not (tmp_path / "out" / "parallel_run_step.txt").exists()


def test_file_job_process_started_fresh_does_not_import_pandas_or_pyarrow(
    dask_client, write_script, files, tmp_path
):
    """A job of files with text results needs neither: importing them cost ~0.6 s of CPU per process. A job
    with `environment_variables` starts its processes fresh (others fork from a server that imported them
    once per worker, tests/core/worker/test_fork_server.py)."""
    root = files(4)
    script = write_script("""
        import sys

        def run(mini_batch):
            return [f"{p.rsplit('/', 1)[-1]} {'pandas' in sys.modules} {'pyarrow' in sys.modules}" for p in mini_batch]
    """)
    out = tmp_path / "out"
    summary = job(
        dask_client, script, [FileDataset.from_files(str(root))], out, environment_variables={"A": "1"}
    )
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert len(lines) == 4 and all(line.endswith(" False False") for line in lines), lines
    started = [
        line
        for path in (out / "logs" / "sys" / "node").rglob("*.txt")
        for line in path.read_text().splitlines()
        if "|started pid " in line
    ]
    assert started and not any("forked from" in line for line in started), started


def test_entry_process_gets_the_user_environment_not_dask_worker_settings(
    dask_client, write_script, files, tmp_path
):
    """Dask's worker tweaks (MALLOC_TRIM_THRESHOLD_, one OMP/MKL thread) stay out of the user's process;
    `environment_variables` still set anything, those names included."""
    worker_env = dask_client.run(
        lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MKL_NUM_THREADS")}
    )
    assert all(env["MALLOC_TRIM_THRESHOLD_"] == "65536" for env in worker_env.values()), (
        "premise: Dask set it"
    )
    script = write_script("""
        import os

        def run(mini_batch):
            names = ("MALLOC_TRIM_THRESHOLD_", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
            return [" ".join(f"{n}={os.environ.get(n)}" for n in names) for _ in mini_batch]
    """)
    summary = job(
        dask_client,
        script,
        [FileDataset.from_files(str(files(2)))],
        tmp_path / "out",
        environment_variables={"OMP_NUM_THREADS": "1"},
    )
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == ["MALLOC_TRIM_THRESHOLD_=None MKL_NUM_THREADS=None OMP_NUM_THREADS=1"] * 2


def test_parquet_input_row_groups(dask_client, write_script, tmp_path):
    source = tmp_path / "data.parquet"
    pd.DataFrame({"x": range(1000)}).to_parquet(source, row_group_size=100)
    script = write_script("""
        def run(df):
            return [int(v) for v in df["x"]]
    """)
    summary = job(
        dask_client,
        script,
        [TabularDataset.from_parquet_files(str(source))],
        tmp_path / "out",
        mini_batch_size="1KB",
    )
    assert (
        summary["status"] == "succeeded"
        and summary["total_items"] == 1000
        and summary["total_mini_batches"] > 1
    )
    assert Path(summary["append_row_file"]).read_text().splitlines() == [str(i) for i in range(1000)]


def test_embedded_cluster_when_no_client(write_script, files, tmp_path):
    root = files(6)
    summary = run_job(
        ParallelRunConfig(entry_script=write_script(ECHO), mini_batch_size=2, process_count_per_node=2),
        [FileDataset.from_files(str(root))],
        str(tmp_path / "out"),
    )
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 6
    assert os.path.exists(summary["append_row_file"])


def test_second_job_into_the_same_output_folder_is_refused(dask_client, write_script, files, tmp_path):
    import threading

    from airflow_parallel_run.core import ConfigError

    root = files(6)
    script = write_script("import time\ndef run(b):\n    time.sleep(1)\n    return b\n")
    config = ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=1)
    out = tmp_path / "shared"
    results: list[dict[str, Any]] = []
    first = threading.Thread(
        target=lambda: results.append(
            run_job(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
        )
    )
    first.start()
    deadline = time.monotonic() + 30
    while not (out / "logs" / "sys" / "master_role.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ConfigError, match="output_path.*no other running job writes to"):
        run_job(config, [FileDataset.from_files(str(root))], str(out), client=dask_client, allow_reuse=False)
    assert (out / "logs" / "sys" / "master_role.txt").exists(), (
        "the refused job must not touch the first job's logs"
    )
    first.join(60)
    assert results[0]["status"] == "succeeded"
    assert (out / "parallel_run_step.txt").read_text().count("\n") == 6
    # the folder is free again, and a lock left by a killed driver (dead pid) does not block
    (out / ".airflow-parallel-run.lock").write_text(
        json.dumps({"host": os.uname().nodename, "pid": 999999999})
    )
    again = run_job(config, [FileDataset.from_files(str(root))], str(out), client=dask_client)
    assert again["status"] == "succeeded" and not (out / ".airflow-parallel-run.lock").exists()


@pytest.mark.parametrize("fused", [False, True], ids=["alone", "chunks"])
def test_the_workers_queues_are_empty_when_the_last_mini_batch_is_submitted(
    dask_client, write_script, files, tmp_path, monkeypatch, fused
):
    """Attempts beyond the slots wait in some worker's queue; at the end of a job that worker is still busy
    with them while the other slots idle (the I/O-bound bench's last wave). The driver keeps at most
    `slots + left to submit` attempts in flight: a window ahead early on, no queue at the end. With
    chunks (core/driver/fusion.py) the window counts Dask tasks and the tail's rule still attempts."""
    from airflow_parallel_run.core.driver import fusion
    from airflow_parallel_run.core.driver.attempts import WINDOW_EXTRA, WINDOW_PER_SLOT
    from airflow_parallel_run.core.driver.loop import JobDriver

    if not fused:
        monkeypatch.setattr(fusion, "CHUNK_MAX", 1)
    seen: list[tuple[int, int, int]] = []  # per submit that sent something: (left, attempts, tasks in flight)
    submit = JobDriver._submit

    def recorded(self: JobDriver, stream: Any, pending: Any) -> None:
        before = len(pending)
        submit(self, stream, pending)
        if len(pending) < before:
            seen.append((len(pending), len(stream), stream.tasks))

    monkeypatch.setattr(JobDriver, "_submit", recorded)
    count, slots = 60, 2
    script = write_script("import time\ndef run(b):\n    time.sleep(0.02)\n    return b\n")
    summary = job(
        dask_client, script, [FileDataset.from_files(str(files(count)))], tmp_path / "out", mini_batch_size=1
    )
    assert summary["status"] == "succeeded" and summary["succeeded_mini_batches"] == count, summary
    window = WINDOW_PER_SLOT * slots + WINDOW_EXTRA
    if fused:
        assert max(tasks for _left, _in_flight, tasks in seen) <= window, seen
        assert any(in_flight > tasks for _left, in_flight, tasks in seen), seen  # chunks were sent
    else:
        assert max(in_flight for _left, in_flight, _tasks in seen) == window, seen
        assert all(in_flight == tasks for _left, in_flight, tasks in seen), seen
    assert all(in_flight <= slots + left for left, in_flight, _tasks in seen), seen
    assert seen[-1][0] == 0 and seen[-1][1] <= slots, seen  # the last submit: nothing queued on a worker
    assert len(attempts(tmp_path / "out")) == count  # one attempt each: nothing ran twice

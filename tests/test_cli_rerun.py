"""`airflow-parallel-run run --rerun-failed OUTPUT_FOLDER`: the recorded job again, only its failed items run
(counted by the script), the output completed byte-identical to a job where nothing failed; usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

BIN = [sys.executable, "-m", "airflow_parallel_run.cli"]

SCRIPT = """
import os

def run(mini_batch):
    bad = set(open(os.environ["FAIL_LIST"]).read().split())
    with open(os.environ["CALLS"], "a") as handle:
        handle.write("".join(os.path.basename(p) + "\\n" for p in mini_batch))
    for path in mini_batch:
        if os.path.basename(path) in bad:
            raise ValueError(f"item {os.path.basename(path)} is on the fail list")
    return [f"{os.path.basename(p)} {open(p).read().strip()} {os.environ['STAGE']}" for p in mini_batch]
"""


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIN, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_rerun_failed_from_the_command_line(
    tmp_path: Path, files: Callable[..., Path], write_script: Callable[..., str]
) -> None:
    import os

    root = files(30)
    script = write_script(SCRIPT)
    env = {**os.environ, "FAIL_LIST": str(tmp_path / "fail.txt"), "CALLS": str(tmp_path / "calls.txt")}
    (tmp_path / "fail.txt").write_text("f004.txt f021.txt")
    job = [
        "--entry-script",
        script,
        "--mini-batch-size",
        "2",
        "--process-count-per-node",
        "2",
        "--run-max-try",
        "1",
    ]
    first = cli(
        "run",
        "--input",
        str(root),
        "--output",
        "out",
        *job,
        "--environment-variables",
        "STAGE=prod",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["failed_items"] == 4  # two mini-batches of two files each
    lines = (tmp_path / "out" / "logs" / "sys" / "job_report" / "failed_items.jsonl").read_text().splitlines()
    assert [Path(json.loads(line)["item"]["file"]).name for line in lines] == [
        "f004.txt",
        "f005.txt",
        "f020.txt",
        "f021.txt",
    ]

    without = cli("run", "--rerun-failed", "out", cwd=tmp_path, env=env)  # STAGE is not given again
    assert without.returncode == 2 and "Traceback" not in without.stderr
    assert without.stderr.startswith(
        "airflow-parallel-run: error: rerun_failed='out' is not allowed: a re-run given"
    )
    assert "STAGE" in without.stderr and "prod" not in without.stderr

    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    again = cli(
        "run",
        "--rerun-failed",
        "out",
        "--environment-variables",
        "STAGE=prod",
        "--run-invocation-timeout",
        "45",
        "--process-count-per-node",
        "1",
        "--json",
        cwd=tmp_path,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert (
        "Started: 2 mini-batches to run, 13 reused, 1 processes" in again.stderr
    )  # a setting outside the key
    summary = json.loads(again.stdout)
    assert summary["status"] == "succeeded" and summary["failed_items"] == 0
    assert summary["reused_mini_batches"] == 13 and summary["total_mini_batches"] == 15
    assert sorted((tmp_path / "calls.txt").read_text().split()) == [
        "f004.txt",
        "f005.txt",
        "f020.txt",
        "f021.txt",
    ]
    assert "Re-run of job" in again.stderr

    (tmp_path / "calls.txt").unlink()
    clean = cli(
        "run",
        "--input",
        str(root),
        "--output",
        "clean",
        *job,
        "--environment-variables",
        "STAGE=prod",
        "--cache-dir",
        str(tmp_path / "clean-cache"),
        cwd=tmp_path,
        env=env,
    )
    assert clean.returncode == 0, clean.stderr
    assert len((tmp_path / "calls.txt").read_text().split()) == 30  # the clean job really ran everything
    output = (tmp_path / "out" / "parallel_run_step.txt").read_bytes()
    assert output == (tmp_path / "clean" / "parallel_run_step.txt").read_bytes()


def test_rerun_failed_usage_errors(tmp_path: Path) -> None:
    import os

    env = dict(os.environ)
    (tmp_path / "out").mkdir()
    done = cli("run", "--rerun-failed", "out", "--entry-script", "x.py", cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert (
        "argument --entry-script: not allowed with --rerun-failed (the previous job's record gives it)"
        in done.stderr
    )
    done = cli("run", "--rerun-failed", "out", "--mini-batch-size", "3", cwd=tmp_path, env=env)
    assert (
        done.returncode == 2 and "argument --mini-batch-size: not allowed with --rerun-failed" in done.stderr
    )
    done = cli("run", "--rerun-failed", "out", "--", "--tag", "x", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "arguments after --: not allowed with --rerun-failed" in done.stderr
    done = cli("run", "--rerun-failed", "out", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "airflow-parallel-run: error: rerun_failed='out' is not allowed: a folder a finished job wrote; it holds no "
        "job record (logs/sys/job.json): no job ran there, it did not finish, or a release without re-runs wrote it"
    )
    done = cli("run", "--input", "in", "--entry-script", "x.py", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "the following arguments are required: --output" in done.stderr

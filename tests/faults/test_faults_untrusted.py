"""Hostile temp folders, undecodable file names, impossible process counts, signals during startup, and
configuration values that used to be accepted and then failed (or hung) the job: each is refused up front or
handled, with exit code 2 and a message naming the field or file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from faults_support import cli_run_argv, closed_port, entry_processes, run_cli, wait_for

from airflow_parallel_run.core import FileDataset, InputError, ParallelRunConfig, run_job
from airflow_parallel_run.core.worker.spec import bundle_scripts

LOCK = ".airflow-parallel-run.lock"
HONEST = 'import os\ndef run(mini_batch):\n    return [f"{os.path.basename(p)} honest" for p in mini_batch]\n'


def test_a_prepared_code_folder_on_a_shared_host_never_runs(files, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Someone else made the folder the code would be unpacked to (its name is computable from the script)."""
    root, script = files(3), write_script(HONEST)
    bundle_hash = bundle_scripts(script, None)[1]
    tmp = tmp_path / "tmp"
    hostile = 'def run(mini_batch):\n    return ["pwned"] * len(mini_batch)\n'
    for base in (tmp / "airflow-parallel-run", tmp / f"airflow-parallel-run-{os.getuid()}"):
        code = base / "code" / bundle_hash[:32]
        code.mkdir(parents=True)
        (code / "score.py").write_text(hostile)
        for folder in (base, base / "code", code):
            os.chmod(folder, 0o777)  # a world-writable folder owned by someone else
            os.chown(folder, 65534, 65534)
    done = run_cli(
        cli_run_argv(root, tmp_path / "out", script, "--process-count-per-node", "1"),
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = (tmp_path / "out" / "parallel_run_step.txt").read_text()
    assert output.splitlines() == [f"f{i:03d}.txt honest" for i in range(3)], output
    private = [
        p
        for p in tmp.iterdir()
        if p.name.startswith("airflow-parallel-run-") and p.stat().st_uid == os.getuid()
    ]
    assert private and all(p.stat().st_mode & 0o777 == 0o700 for p in private), private


def test_a_file_name_that_is_not_utf8_is_refused_naming_the_file(files, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, script = files(2), write_script(HONEST)
    bad = os.path.join(os.fsencode(root), b"caf\xe9.txt")
    with open(bad, "w") as handle:
        handle.write("x\n")
    done = run_cli(cli_run_argv(root, tmp_path / "out", script))
    assert done.returncode == 2, done
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "caf\\xe9.txt' has a name that is not valid UTF-8" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="not valid UTF-8"):
        run_job(
            ParallelRunConfig(entry_script=script), [FileDataset.from_files(str(root))], str(tmp_path / "o")
        )


# -- process counts and signals during startup --------------------------------------------------------------------
def test_more_processes_than_the_embedded_cluster_can_run_is_a_config_error(
    files, write_script, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    root, script = files(2), write_script(HONEST)
    limit = 4 * (os.cpu_count() or 1)
    started = time.monotonic()
    done = run_cli(
        cli_run_argv(root, tmp_path / "out", script, "--process-count-per-node", str(20 * limit)), timeout=90
    )
    assert done.returncode == 2 and time.monotonic() - started < 60, done
    assert (
        f"process_count_per_node={20 * limit} is not allowed: at most {limit} on the embedded cluster"
        in done.stderr
    )
    assert not (tmp_path / "out").exists()


def test_entry_script_processes_start_with_no_signal_blocked(files, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CLI blocks SIGINT/SIGTERM in its threads (its signal relay takes them, cli_signals.py); the
    entry-script processes the embedded cluster's workers start get a fresh program's mask, so the script
    and what it starts can be stopped by those signals as anywhere else."""
    root, out = files(2), tmp_path / "out"
    script = write_script(
        "import signal\n"
        "def run(mini_batch):\n"
        "    return [sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))]\n"
    )
    done = run_cli(cli_run_argv(root, out, script, "--mini-batch-size", "2", "--process-count-per-node", "1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert (out / "parallel_run_step.txt").read_text().split() == ["[]"]


def _signal_after(proc: subprocess.Popen[str], ready: Any, sig: int) -> tuple[int, str, str, float]:
    wait_for(ready, 90, "the CLI to reach the stage")
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, time.monotonic() - sent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["connecting to the scheduler", "starting the embedded cluster", "running"])
def test_a_signal_at_each_stage_of_startup_ends_the_cli_promptly(
    files, write_script, tmp_path, stage, sig
) -> None:  # type: ignore[no-untyped-def]
    root, out = files(6), tmp_path / "out"
    script = write_script("import time\ndef run(mini_batch):\n    time.sleep(60)\n    return mini_batch\n")
    extra = {
        "connecting to the scheduler": ["--scheduler", f"tcp://127.0.0.1:{closed_port()}"],
        "starting the embedded cluster": ["--process-count-per-node", str(4 * (os.cpu_count() or 1))],
        "running": ["--process-count-per-node", "2"],
    }[stage]
    proc = subprocess.Popen(
        cli_run_argv(root, out, script, "--mini-batch-size", "1", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if stage == "running":
            ready = lambda: len(entry_processes(out, proc.pid)) >= 1  # noqa: E731
        else:
            ready = (out / LOCK).exists  # planned and fingerprinted: the job owns its output folder
        code, stdout, stderr, seconds = _signal_after(proc, ready, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert seconds < 40, f"the CLI needed {seconds:.0f} s to stop after {sig.name}"
    # Dask may log a worker's lost heartbeat (with its trace) while the cluster goes down; the CLI itself
    # must never end in a traceback
    assert "airflow_parallel_run/cli.py" not in stderr, stderr[-3000:]
    if stage == "running":  # the job stops the ordinary way: its summary says why
        assert code == 1, stderr[-2000:]
        assert f"interrupted by signal {sig.name}" in json.loads(stdout)["message"]
    else:
        assert code == 128 + sig and stdout == "", stderr[-2000:]
        assert f"airflow-parallel-run: interrupted by {sig.name} while " in stderr
    # an orphaned entry-script process notices its parent is gone within a second and exits
    wait_for(lambda: entry_processes(out, root_pid=0) == [], 1.5, "no entry-script process of the job left")
    assert not (out / LOCK).exists() or json.loads((out / LOCK).read_text())["pid"] == proc.pid


def test_a_signal_the_launcher_blocked_still_ends_the_cli_promptly(files, write_script, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A launcher whose thread had SIGINT and SIGTERM blocked when it started the CLI (a signal mask is
    inherited across fork and exec) must not make the CLI deaf to them: blocked, a SIGTERM stayed
    pending while the CLI tried to connect, and the CLI ended 30 s later with the connection error
    (exit 2) instead of the signal's exit code."""
    root, out = files(3), tmp_path / "out"
    script = write_script(HONEST)
    blocked = {signal.SIGINT, signal.SIGTERM}
    proc = subprocess.Popen(
        cli_run_argv(root, out, script, "--scheduler", f"tcp://127.0.0.1:{closed_port()}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.pthread_sigmask(
            signal.SIG_BLOCK, blocked
        ),  # the mask only: no Python code of note in the child
    )
    try:
        code, stdout, stderr, seconds = _signal_after(proc, (out / LOCK).exists, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 128 + signal.SIGTERM and stdout == "", stderr[-2000:]
    assert seconds < 20, f"the CLI needed {seconds:.0f} s to stop after SIGTERM"
    assert "airflow-parallel-run: interrupted by SIGTERM while " in stderr


# -- values that were accepted and then failed, or hung, the job ---------------------------------------------------
def _src_with_fifo(tmp_path: Path) -> list[str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text(HONEST)
    os.mkfifo(src / "pipe")
    return ["--source-directory", str(src), "--entry-script", "score.py"]


def _script_outside(tmp_path: Path) -> list[str]:
    (tmp_path / "src").mkdir()
    (tmp_path / "elsewhere.py").write_text(HONEST)
    return ["--source-directory", str(tmp_path / "src"), "--entry-script", "../elsewhere.py"]


ROW14: dict[str, tuple[Any, str]] = {
    "repeated partition key": (
        lambda p: ["--partition-keys", "a", "--partition-format", "{a}/{a}.txt"],
        "partition_format='{a}/{a}.txt' is not allowed: each {key} at most once (a appears more than once)",
    ),
    "unbalanced brace": (
        lambda p: ["--partition-keys", "a", "--partition-format", "{a/x.txt"],
        "partition_format='{a/x.txt' is not allowed: braces only around key names",
    ),
    "timeout nan": (
        lambda p: ["--run-invocation-timeout", "nan"],
        "run_invocation_timeout=nan is not allowed: a finite number of seconds > 0",
    ),
    "timeout inf": (
        lambda p: ["--run-invocation-timeout", "inf"],
        "run_invocation_timeout=inf is not allowed: a finite number of seconds > 0",
    ),
    "300-character output file name": (
        lambda p: ["--append-row-file-name", "r" * 300 + ".txt"],
        "is not allowed: a file name of at most 200 bytes in UTF-8",
    ),
    "FIFO in source_directory": (
        _src_with_fifo,
        "is not allowed: a folder of regular files only (every file is shipped to the workers); src/pipe is a FIFO",
    ),
    "entry script outside source_directory": (
        _script_outside,
        "entry_script='../elsewhere.py' is not allowed: a file inside source_directory",
    ),
}


@pytest.mark.parametrize("case", list(ROW14))
def test_a_value_the_job_cannot_use_is_refused_before_any_work(files, write_script, tmp_path, case) -> None:  # type: ignore[no-untyped-def]
    root, out, calls = files(2), tmp_path / "out", tmp_path / "calls.txt"
    script = write_script(
        f"def run(mini_batch):\n    open({str(calls)!r}, 'a').write('x')\n    return mini_batch\n"
    )
    make_args, message = ROW14[case]
    argv = cli_run_argv(root, out, script, *make_args(tmp_path))
    started = time.monotonic()
    done = run_cli(argv, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert time.monotonic() - started < 30
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert message in done.stderr.strip().splitlines()[-1], done.stderr[-1000:]
    assert not out.exists() and not calls.exists(), "work started before the value was refused"

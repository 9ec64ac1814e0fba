"""The output location: read-only, full, or already used by a running job.

Read-only and full folders are real tmpfs mounts (root only; skipped where mounting is not allowed).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults_support import (
    check_accounting,
    cli_run_argv,
    expected_line,
    lines_of,
    mount_tmpfs,
    run_cli,
    unmount,
    wait_for,
)

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver import JobDriver
from airflow_parallel_run.core.output.assemble import assemble


def _inputs(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"f{i:03d}.txt").write_text(f"{i}\n")
    return folder


# -- read-only output -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    done: subprocess.CompletedProcess[str]
    out: Path
    mount: Path


@pytest.fixture(scope="module")
def read_only_output(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    tmp = tmp_path_factory.mktemp("read-only")
    root = _inputs(tmp / "in", 3)
    script = tmp / "echo.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    mount = tmp / "ro"
    mount_tmpfs(mount, "ro,size=1m")
    try:
        out = mount / "out"
        done = run_cli(cli_run_argv(root, out, str(script), "--cache-dir", str(tmp / "cache")), timeout=120)
    finally:
        unmount(mount)
    return Outcome(done, out, mount)


def test_read_only_output_fails_before_anything_runs(read_only_output: Outcome) -> None:
    done = read_only_output.done
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert str(read_only_output.out) in done.stderr and "Read-only file system" in done.stderr, done.stderr


def test_read_only_output_message_names_the_output_not_the_scheduler(read_only_output: Outcome) -> None:
    stderr = read_only_output.done.stderr
    assert "scheduler" not in stderr and "output" in stderr, stderr


# -- disk full --------------------------------------------------------------------------------------------
@dataclass
class DiskFull:
    done: subprocess.CompletedProcess[str]
    out: Path
    leftovers: list[str]


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> DiskFull:
    """A job whose output folder is a 2 MiB tmpfs and whose results need about 2.4 MiB."""
    tmp = tmp_path_factory.mktemp("disk-full")
    root = _inputs(tmp / "in", 40)
    script = tmp / "big.py"
    script.write_text(
        "import os\n"
        "def run(mini_batch):\n"
        '    return [os.path.basename(p) + " " + "x" * 60000 for p in mini_batch]\n'
    )
    mount = tmp / "small"
    mount_tmpfs(mount, "size=2m")
    try:
        out = mount / "out"
        argv = cli_run_argv(
            root,
            out,
            str(script),
            "--cache-dir",
            str(tmp / "cache"),
            "--mini-batch-size",
            "2",
            "--process-count-per-node",
            "2",
            "--resource-monitor-interval",
            "0",
        )
        done = run_cli(argv, timeout=180)
        leftovers = sorted(
            str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "logs" not in p.parts
        )
    finally:
        unmount(mount)
    return DiskFull(done, out, leftovers)


def test_disk_full_fails_clearly_without_a_complete_looking_output(disk_full: DiskFull) -> None:
    done = disk_full.done
    assert done.returncode != 0, done.stdout[-2000:]
    assert "No space left on device" in done.stdout + done.stderr
    assert "parallel_run_step.txt" not in disk_full.leftovers, "a partial output was presented as complete"


def test_disk_full_gives_a_failed_summary_and_cleans_up(disk_full: DiskFull) -> None:
    done = disk_full.done
    assert done.returncode == 1, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    check_accounting(summary, 40)
    assert "No space left on device" in summary["message"], summary
    assert disk_full.leftovers == [], disk_full.leftovers


def test_driver_log_that_cannot_be_written_fails_the_job_without_an_output(  # type: ignore[no-untyped-def]
    dask_client, echo_script, files, tmp_path
) -> None:
    """Every write of the driver's log sys/master_role.txt fails (a folder now has its name); the job still
    ends with a summary, fails, names the log and the error, and leaves no output, .staging or lock."""
    out = tmp_path / "out"
    master = out / "logs" / "sys" / "master_role.txt"

    def break_the_log(_driver: JobDriver) -> None:
        master.unlink()
        master.mkdir()

    summary = run_job(
        ParallelRunConfig(entry_script=echo_script(), mini_batch_size=2, process_count_per_node=2),
        [FileDataset.from_files(str(files(6)))],
        str(out),
        client=dask_client,
        on_driver=break_the_log,
        cache_dir=str(tmp_path / "cache"),
    )
    check_accounting(summary, 6)
    assert summary["message"] == (
        f"Job failed: could not write the job's logs ({master}: [Errno 21] Is a directory)"
    ), summary
    assert sorted(p.name for p in out.iterdir()) == ["logs"], "no output, no .staging, no lock"
    assert summary["message"] in (out / "logs" / "job_result.txt").read_text()


def test_output_assembly_on_a_full_disk_leaves_no_temp_file(tmp_path: Path) -> None:
    """/dev/full fails every write with ENOSPC: a full disk for one file, without root or a mount."""
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    part = tmp_path / "part.txt"
    part.write_text("a\n")
    target = tmp_path / "out.txt"
    Path(f"{target}.assembling").symlink_to(full)  # written, never read
    with pytest.raises(OSError, match="No space left on device"):
        assemble([(0, str(part), [])], str(target), "text", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.txt"]


# -- two runs into one output folder -------------------------------------------------------------------
def test_second_cli_run_into_a_busy_output_folder_is_refused(echo_script, files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """tests/core/driver/test_engine.py proves this for run_job; here the CLI: exit 2, one message, first run intact."""
    root, calls, out = files(6), tmp_path / "calls.txt", tmp_path / "shared"
    release = tmp_path / "release"  # the first run holds the folder until the second has been refused
    script = echo_script(
        f"open({str(calls)!r}, 'a').write('x\\n')\n"
        f"deadline = time.monotonic() + 90\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline:\n"
        f"    time.sleep(0.05)"
    )
    args = ("--mini-batch-size", "1", "--process-count-per-node", "1", "--cache-dir", str(tmp_path / "cache"))
    first = subprocess.Popen(
        cli_run_argv(root, out, script, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: bool(lines_of(calls)) or first.poll() is not None, 90, "the first run to start")
    second = run_cli(cli_run_argv(root, out, script, *args, "--no-reuse"), timeout=120)
    release.touch()
    assert second.returncode == 2, second.stderr
    assert second.stdout == "" and "Traceback" not in second.stderr
    lock_words = (
        f"output_path='{out}' is not allowed: a folder no other running job writes to; job pid {first.pid}"
    )
    assert lock_words in second.stderr, second.stderr
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    check_accounting(json.loads(stdout), 6, expected_lines=[expected_line(i) for i in range(6)])

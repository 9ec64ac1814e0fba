"""allow_reuse: unchanged mini-batches never run twice; interrupted runs resume; reuse is byte-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job


def counting_script(write_script: Any, calls: Path, extra: str = "") -> str:
    return write_script(f"""
        import os
        {extra}
        def run(mini_batch):
            with open({str(calls)!r}, "a") as log:
                log.write(os.path.basename(mini_batch[0]) + "\\n")
            return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
    """)


def calls_of(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def master_log(out: Path) -> str:
    return (out / "logs" / "sys" / "master_role.txt").read_text()


def go(script: str, root: Path, out: Path, client: Any = None, **kw: Any) -> dict[str, Any]:
    options = {k: kw.pop(k) for k in ("side_inputs", "arguments", "allow_reuse") if k in kw}
    kw.setdefault("mini_batch_size", 3)
    kw.setdefault("process_count_per_node", 2)
    summary = run_job(
        ParallelRunConfig(entry_script=script, **kw),
        [FileDataset.from_files(str(root))],
        str(out),
        client=client,
        **options,
    )
    assert summary["status"] == "succeeded", summary
    return summary


def test_unchanged_rerun_runs_nothing_and_is_byte_identical(dask_client, write_script, files, tmp_path):
    root, calls = files(20), tmp_path / "calls.txt"
    script = counting_script(write_script, calls)
    first = go(script, root, tmp_path / "o1", dask_client)
    assert len(calls_of(calls)) == 7 and first["reused_mini_batches"] == 0
    started = time.monotonic()
    # no client given: a fully reused run must not even start a cluster; process count and tries differ
    second = go(
        script, root, tmp_path / "o2", process_count_per_node=1, run_max_try=5, run_invocation_timeout=9
    )
    assert time.monotonic() - started < 5
    assert len(calls_of(calls)) == 7, "run() was called again"
    assert second["reused_mini_batches"] == 7 and second["succeeded_items"] == 20
    assert second["cache_key"] == first["cache_key"]
    assert Path(second["append_row_file"]).read_bytes() == Path(first["append_row_file"]).read_bytes()
    assert "Reuse: 7 of 7 mini-batches reused" in master_log(tmp_path / "o2")
    rows = (tmp_path / "o2" / "logs" / "sys" / "job_report" / "processed_mini-batches.csv").read_text()
    assert rows.count("REUSED") == 7


def test_touch_keeps_and_content_change_invalidates_one_mini_batch(
    dask_client, write_script, files, tmp_path
):
    root, calls = files(12), tmp_path / "calls.txt"
    script = counting_script(write_script, calls)
    go(script, root, tmp_path / "o1", dask_client)
    later = time.time() + 100
    os.utime(root / "f004.txt", (later, later))
    go(script, root, tmp_path / "o2", dask_client)
    assert len(calls_of(calls)) == 4, "touching a file (mtime only) invalidated it"
    (root / "f004.txt").write_text("changed\n")
    third = go(script, root, tmp_path / "o3", dask_client)
    assert calls_of(calls)[4:] == ["f003.txt"], "exactly the mini-batch holding f004 runs again"
    assert third["reused_mini_batches"] == 3
    assert "f004.txt changed" in master_log(tmp_path / "o3")
    assert "f004.txt changed" in Path(third["append_row_file"]).read_text()


@pytest.mark.parametrize("change", ["script", "source_directory", "argument", "side_input", "environment"])
def test_job_components_invalidate_everything(dask_client, write_script, files, tmp_path, change):
    root, calls = files(6), tmp_path / "calls.txt"
    src = tmp_path / "src"
    src.mkdir()
    (src / "helper.py").write_text("FACTOR = 1\n")
    (src / "score.py").write_text(Path(counting_script(write_script, calls, "import helper")).read_text())
    side = tmp_path / "labels.csv"
    side.write_text("a,b\n")
    settings: dict[str, Any] = {
        "source_directory": str(src),
        "arguments": ["--mode", "a"],
        "side_inputs": [str(side)],
        "environment_variables": {"STAGE": "1"},
    }
    go("score.py", root, tmp_path / "o1", dask_client, **settings)
    assert len(calls_of(calls)) == 2
    expected = {
        "script": "entry script",
        "source_directory": "helper.py",
        "argument": "arguments changed",
        "side_input": "side input changed",
        "environment": "environment_variables changed",
    }[change]
    if change == "script":
        (src / "score.py").write_text((src / "score.py").read_text() + "\n# tuned\n")
    elif change == "source_directory":
        (src / "helper.py").write_text("FACTOR = 2\n")
    elif change == "argument":
        settings["arguments"] = ["--mode", "b"]
    elif change == "side_input":
        side.write_text("a,c\n")
    else:
        settings["environment_variables"] = {"STAGE": "2"}
    second = go("score.py", root, tmp_path / "o2", dask_client, **settings)
    assert second["reused_mini_batches"] == 0 and len(calls_of(calls)) == 4
    assert expected in master_log(tmp_path / "o2")


def test_allow_reuse_false_runs_all_and_refreshes(dask_client, write_script, files, tmp_path):
    root, calls = files(6), tmp_path / "calls.txt"
    script = counting_script(write_script, calls)
    go(script, root, tmp_path / "o1", dask_client)
    forced = go(script, root, tmp_path / "o2", dask_client, allow_reuse=False)
    assert forced["reused_mini_batches"] == 0 and len(calls_of(calls)) == 4
    assert "allow_reuse is False" in master_log(tmp_path / "o2")
    assert go(script, root, tmp_path / "o3")["reused_mini_batches"] == 2


def _cli(root: Path, out: Path, script: str, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "airflow_parallel_run.cli",
        "run",
        "--input",
        str(root),
        "--output",
        str(out),
        "--entry-script",
        script,
        "--cache-dir",
        str(cache),
        "--json",
        *extra,
    ]


def test_killed_driver_resumes_only_unfinished(write_script, files, tmp_path):
    root, calls, cache = files(24), tmp_path / "calls.txt", tmp_path / "cache"
    script = counting_script(write_script, calls, "import time; time.sleep(0.4)")
    slow = write_script(
        Path(script).read_text().replace("def run(mini_batch):", "def run(mini_batch):\n    time.sleep(0.4)"),
        name="slow.py",
    )
    args = ("--mini-batch-size", "2", "--process-count-per-node", "1")
    driver = subprocess.Popen(
        _cli(root, tmp_path / "o1", slow, cache, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(calls_of(calls)) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)  # the driver (and the embedded cluster living in it) dies at once
    driver.wait()
    time.sleep(1.5)  # an orphaned entry-script process notices its dead parent within a second and exits
    ran_before = len(calls_of(calls))
    assert 5 <= ran_before < 12, ran_before
    done = subprocess.run(
        _cli(root, tmp_path / "o2", slow, cache, *args), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    ran_after = len(calls_of(calls)) - ran_before
    assert (
        summary["reused_mini_batches"] >= ran_before - 1
    )  # the one in flight at the kill may not have committed
    assert summary["reused_mini_batches"] + ran_after == 12
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == [f"f{i:03d}.txt {i}" for i in range(24)]


def test_two_concurrent_runs_of_the_same_job(write_script, files, tmp_path):
    root, calls, cache = files(16), tmp_path / "calls.txt", tmp_path / "cache"
    script = counting_script(write_script, calls)
    runs = [
        subprocess.Popen(
            _cli(
                root,
                tmp_path / f"o{i}",
                script,
                cache,
                "--mini-batch-size",
                "2",
                "--process-count-per-node",
                "1",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [r.communicate(timeout=180) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [e[-1500:] for _, e in results]
    outputs = [Path(json.loads(out)["append_row_file"]).read_bytes() for out, _ in results]
    assert outputs[0] == outputs[1] and outputs[0].decode().count("\n") == 16
    third = subprocess.run(
        _cli(root, tmp_path / "o3", script, cache, "--mini-batch-size", "2"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(third.stdout)["reused_mini_batches"] == json.loads(third.stdout)["total_mini_batches"]


def test_cli_cache_info_prune_clear(write_script, files, tmp_path):
    root, cache = files(4), tmp_path / "cache"
    script = counting_script(write_script, tmp_path / "calls.txt")
    assert (
        subprocess.run(
            _cli(root, tmp_path / "o", script, cache, "--mini-batch-size", "1"),
            capture_output=True,
            timeout=120,
        ).returncode
        == 0
    )

    def cache_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "airflow_parallel_run.cli", "cache", *args, "--cache-dir", str(cache)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    info = json.loads(cache_cmd("info").stdout)
    assert info["entries"] == 4 and info["bytes"] > 0
    assert "removed 0 entries" in cache_cmd("prune", "--older-than", "7d").stdout
    assert cache_cmd("prune").returncode == 2
    assert cache_cmd("prune", "--older-than", "7days").returncode == 2
    time.sleep(1.1)
    assert "removed 4 entries" in cache_cmd("prune", "--older-than", "1s").stdout
    assert json.loads(cache_cmd("info").stdout)["entries"] == 0
    assert "removed 0 entries" in cache_cmd("clear").stdout

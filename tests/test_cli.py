"""The CLI: flags per config field, `--` arguments, --json summary on stdout, exit codes 0/1/2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

BIN = [sys.executable, "-m", "airflow_parallel_run.cli"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BIN, *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_success_json_and_arguments(tmp_path: Path, files, write_script) -> None:  # type: ignore[no-untyped-def]
    root = files(7)
    script = write_script("""
        import argparse, os
        def init():
            global tag
            tag = argparse.ArgumentParser().parse_known_args()[1]
        def run(mini_batch):
            return [f"{os.path.basename(p)} {' '.join(tag)} {os.environ['STAGE']}" for p in mini_batch]
    """)
    done = cli(
        "run",
        "--input",
        str(root),
        "--output",
        "out",
        "--entry-script",
        script,
        "--mini-batch-size",
        "3",
        "--process-count-per-node",
        "2",
        "--environment-variables",
        "STAGE=prod",
        "--json",
        "--",
        "--tag",
        "x",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout holds only the JSON document
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 7
    assert "Processed 3 of 3 mini-batches" in done.stderr
    assert (tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines()[0] == "f000.txt --tag x prod"


def test_max_concurrency_per_process_runs_an_async_run_and_refuses_a_sync_one(
    tmp_path: Path,
    files,
    write_script,  # type: ignore[no-untyped-def]
) -> None:
    root = files(6)
    script = write_script("""
        import asyncio, os
        async def run(mini_batch):
            await asyncio.sleep(0.05)
            return [os.path.basename(p) for p in mini_batch]
    """)
    argv = ["run", "--input", str(root), "--entry-script", script, "--mini-batch-size", "1", "--json"]
    flags = ["--process-count-per-node", "1", "--max-concurrency-per-process", "3"]
    done = cli(*argv, "--output", "out", *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert "6 mini-batches to run, 0 reused, 3 mini-batches at once (3 per process)" in done.stderr
    assert (tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(6)
    ]
    sync = write_script("def run(mini_batch):\n    return mini_batch\n", name="sync.py")
    refused = cli(*argv[:4], sync, *argv[5:], "--output", "out2", *flags, cwd=tmp_path)
    assert refused.returncode == 2
    assert (
        "max_concurrency_per_process=3 is not allowed: 1 for a synchronous run(mini_batch)" in refused.stderr
    )
    assert not (tmp_path / "out2").exists()


def test_failed_job_exits_1_with_json(tmp_path: Path, files, write_script) -> None:  # type: ignore[no-untyped-def]
    root = files(3)
    script = write_script("def run(mini_batch):\n    raise KeyError('label')\n")
    done = cli(
        "run",
        "--input",
        str(root),
        "--output",
        "out",
        "--entry-script",
        script,
        "--run-max-try",
        "1",
        "--error-threshold",
        "0",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed" and "error_threshold exceeded" in summary["message"]


def test_usage_and_config_errors_exit_2_without_traceback(tmp_path: Path, files, write_script) -> None:  # type: ignore[no-untyped-def]
    root = files(1)
    script = write_script("def run(b):\n    return b\n")
    cases = [
        (
            ["--input", str(root), "--output", "o", "--entry-script", script, "--mini-batch-size", "1MB"],
            "mini_batch_size",
        ),
        (
            ["--input", str(root), "--output", "o", "--entry-script", script, "--run-max-try", "0"],
            "run_max_try",
        ),
        (
            [
                "--input",
                str(root),
                "--output",
                "o",
                "--entry-script",
                script,
                "--first-task-creation-timeout",
                "0",
            ],
            "first_task_creation_timeout=0.0 is not allowed",
        ),
        (
            [
                "--input",
                str(root),
                "--output",
                "o",
                "--entry-script",
                script,
                "--speculation-multiplier",
                "0.5",
            ],
            "speculation_multiplier=0.5 is not allowed",
        ),
        (["--input", str(tmp_path / "missing"), "--output", "o", "--entry-script", script], "missing"),
        (["--input", str(root), "--output", "o", "--entry-script", "nope.py"], "entry_script"),
        (
            ["--input", str(root), "--output", "o", "--entry-script", script, "--output-action", "file"],
            "output-action",
        ),
        (["--output", "o", "--entry-script", script], "--input"),
    ]
    for args, fragment in cases:
        done = cli("run", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert fragment in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "o").exists(), "a rejected job must not create its output folder"


def test_a_hung_run_fails_by_progress_update_timeout(tmp_path: Path, files, write_script) -> None:  # type: ignore[no-untyped-def]
    root = files(1)
    script = write_script("import time\ndef run(mini_batch):\n    time.sleep(3600)\n")
    started = time.monotonic()
    done = cli(
        "run",
        "--input",
        str(root),
        "--output",
        "out",
        "--entry-script",
        script,
        "--process-count-per-node",
        "1",
        "--run-invocation-timeout",
        "3600",
        "--progress-update-timeout",
        "3",
        "--first-task-creation-timeout",
        "60",
        "--speculative-execution",  # no copy: nothing finished to compare with
        "--speculation-multiplier",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    message = json.loads(done.stdout)["message"]
    assert "no mini-batch finished or failed for" in message and "(progress_update_timeout 3 s)" in message
    assert "mini-batch 0 (" in message and "has run for" in message, message
    assert time.monotonic() - started < 90


def test_core_never_imports_airflow(tmp_path: Path, files, write_script) -> None:  # type: ignore[no-untyped-def]
    """Dask workers must not need Airflow: run a whole job with `airflow` made unimportable."""
    root = files(4)
    script = write_script(
        "def run(b):\n    import sys\n    assert 'airflow' not in sys.modules\n    return b\n"
    )
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ImportError("airflow is blocked in this test")
        sys.meta_path.insert(0, _Block())
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(guard)}
    code = (
        "import sys, airflow_parallel_run.core as core, airflow_parallel_run.cli\n"
        "from airflow_parallel_run import ParallelRunConfig, FileDataset, run_job\n"
        "assert not [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]\n"
        f"s = run_job(ParallelRunConfig(entry_script={script!r}, process_count_per_node=1), "
        f"[FileDataset.from_files({str(root)!r})], {str(tmp_path / 'out')!r})\n"
        "assert s['status'] == 'succeeded', s\n"
        "assert not [m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    blocked = subprocess.run(
        [sys.executable, "-c", "import airflow"], env=env, capture_output=True, text=True
    )
    assert blocked.returncode != 0 and "blocked" in blocked.stderr


SUMMARY_KEYS = [
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
]


def test_summary_keys_in_their_documented_order(tmp_path: Path, files, write_script) -> None:  # type: ignore[no-untyped-def]
    """The summary's keys and their order (/work/shared/DESIGN.md, result summary): `--json`, the plain
    listing and the failed job's `message`, which comes last."""
    root = files(2)
    good = write_script("def run(b):\n    return b\n")
    bad = write_script("def run(b):\n    raise ValueError('no')\n", name="bad.py")
    base = ["run", "--input", str(root), "--process-count-per-node", "1", "--run-max-try", "1"]
    done = cli(*base, "--output", "ok", "--entry-script", good, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert list(json.loads(done.stdout)) == SUMMARY_KEYS
    plain = cli(*base, "--output", "ok2", "--entry-script", good, cwd=tmp_path)
    listed = [line.split(":", 1)[0] for line in plain.stdout.splitlines() if ": " in line]
    assert listed[-len(SUMMARY_KEYS) :] == SUMMARY_KEYS
    failed = cli(*base, "--output", "no", "--entry-script", bad, "--json", cwd=tmp_path)
    assert failed.returncode == 1, failed.stderr
    assert list(json.loads(failed.stdout)) == [*SUMMARY_KEYS, "message"]


def test_any_installed_input_type_as_json(tmp_path: Path, write_script) -> None:  # type: ignore[no-untyped-def]
    """`--dataset` takes the serialised form of any input type (here a TabularDataset with its read
    options); bad documents are usage errors that name the flag or the field."""
    (tmp_path / "t.csv").write_text("a;b\n1;x\n2;y\n3;z\n")
    script = write_script("def run(frame):\n    return frame['b'].tolist()\n")
    document = {
        "type": "TabularDataset",
        "paths": [str(tmp_path / "t.csv")],
        "format": "csv",
        "separator": ";",
    }
    base = ["run", "--entry-script", script, "--process-count-per-node", "1"]
    done = cli(*base, "--dataset", json.dumps(document), "--output", "out", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["succeeded_items"] == 3
    assert (tmp_path / "out" / "parallel_run_step.txt").read_text() == "x\ny\nz\n"
    for bad, fragment in [
        ("{not json", "--dataset: not JSON"),
        ('["TabularDataset"]', 'expected a JSON object with a "type"'),
        ('{"type": "NoSuchDataset", "paths": ["/x"]}', "input type 'NoSuchDataset' is unknown here"),
        (json.dumps({**document, "colour": "red"}), "dataset="),
    ]:
        failed = cli(*base, "--dataset", bad, "--output", "o", cwd=tmp_path)
        assert failed.returncode == 2, (bad, failed.stderr)
        assert fragment in failed.stderr and "Traceback" not in failed.stderr, failed.stderr

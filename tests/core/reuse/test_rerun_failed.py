"""Re-running only the failed items of a job (core/reuse/rerun.py) on a real LocalCluster: the failed items
file names them, the re-run runs exactly them (counted by the script itself), the output ends byte-identical
to a job where nothing failed, and every refusal names what differs."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client
from flaky_failures import flaky

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.logs.failed_items import FAILED_ITEMS_FILE, read_failed_items
from airflow_parallel_run.core.reuse.rerun import PreviousJob

DOC = Path(__file__).resolve().parents[3] / "docs" / "errors.md"

#: Fails on the items named in the file given by --fail-list ("raise": the whole mini-batch fails; "skip":
#: run() leaves them out of its result, Azure's partial failure); appends each item it ran to --calls. The
#: fail list is named as a flaky failure (tests/flaky_failures.py).
SCRIPT = """
import argparse, os

def init():
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-list")
    parser.add_argument("--calls")
    parser.add_argument("--mode", default="raise")
    args, _ = parser.parse_known_args()

def run(mini_batch):
    with open(args.fail_list.removeprefix("flaky:")) as handle:
        bad = set(handle.read().split())
    with open(args.calls, "a") as handle:
        handle.write("".join(os.path.basename(p) + "\\n" for p in mini_batch))
    results = []
    for path in mini_batch:
        name = os.path.basename(path)
        if name in bad:
            if args.mode == "raise":
                raise ValueError(f"item {name} is on the fail list")
            continue
        with open(path) as handle:
            results.append(f"{name} {handle.read().strip()}")
    return results
"""

FAILING = ["f003.txt", "f017.txt", "f030.txt", "f044.txt", "f058.txt", "f071.txt", "f089.txt"]  # 7 of 100


def _job(
    tmp_path: Path, script: str, mode: str, size: int, **settings: object
) -> tuple[ParallelRunConfig, list[str]]:
    config = ParallelRunConfig(
        entry_script=script,
        mini_batch_size=size,
        run_max_try=1,
        process_count_per_node=2,
        **settings,  # type: ignore[arg-type]
    )
    arguments = [
        "--fail-list",
        flaky(tmp_path / "fail.txt"),
        "--calls",
        str(tmp_path / "calls.txt"),
        "--mode",
        mode,
    ]
    return config, arguments


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _clean_output(
    tmp_path: Path, client: Client, config: ParallelRunConfig, inputs: list[FileDataset], mode: str
) -> bytes:
    """The output of the same job where nothing fails, in a fresh cache (so it really runs)."""
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "fail.txt").write_text("")
    arguments = [
        "--fail-list",
        flaky(clean / "fail.txt"),
        "--calls",
        str(clean / "calls.txt"),
        "--mode",
        mode,
    ]
    summary = run_job(
        config, inputs, str(clean / "out"), arguments=arguments, client=client, cache_dir=str(clean / "cache")
    )
    assert summary["status"] == "succeeded" and summary["failed_items"] == 0
    return Path(summary["append_row_file"]).read_bytes()


@pytest.mark.parametrize(("mode", "size"), [("raise", 1), ("skip", 4)])
def test_rerun_runs_only_the_failed_items_and_completes_the_output(
    tmp_path: Path,
    dask_client: Client,
    write_script: Callable[..., str],
    files: Callable[..., Path],
    mode: str,
    size: int,
) -> None:
    inputs = [FileDataset.from_files(str(files(100)))]
    config, arguments = _job(tmp_path, write_script(SCRIPT), mode, size)
    (tmp_path / "fail.txt").write_text("\n".join(FAILING))
    out = str(tmp_path / "out")

    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert first["status"] == "succeeded", first  # error_threshold -1: failed items do not fail the job
    failed = read_failed_items(str(tmp_path / "out" / "logs"))
    failing_batches = sorted({int(name[1:4]) // size for name in FAILING})
    assert sorted({line["mini_batch"] for line in failed}) == failing_batches
    if mode == "raise":  # the whole mini-batch (one item) failed: the item is known for sure
        assert [Path(line["item"]["file"]).name for line in failed] == FAILING
        assert {line["status"] for line in failed} == {"RUN_EXCEPTION"}
        assert all(line["certain"] and line["error"].startswith("ValueError: item f") for line in failed)
        assert first["failed_items"] == len(FAILING)
    else:  # run() returned fewer results: 1 of its 4 items failed, which one it did not say
        assert len(failed) == size * len(failing_batches)
        assert {line["status"] for line in failed} == {"RUN_DONE"}
        assert all(not line["certain"] and line["mini_batch_failed"] == 1 for line in failed)
        assert first["failed_items"] == len(FAILING)
    result = (tmp_path / "out" / "logs" / "job_result.txt").read_text()
    assert f"Failed items: logs/{FAILED_ITEMS_FILE} ({len(failed)} line(s))" in result

    (tmp_path / "fail.txt").write_text("")  # the failure switched off
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    ran = _calls(tmp_path)
    expected = (
        FAILING
        if mode == "raise"
        else [f"f{i:03d}.txt" for b in failing_batches for i in range(b * size, b * size + size)]
    )
    assert sorted(ran) == sorted(expected)  # exactly the failed items ran, each once
    assert second["reused_mini_batches"] == second["total_mini_batches"] - len(failing_batches)
    assert read_failed_items(str(tmp_path / "out" / "logs")) == []  # written, and empty: nothing failed
    master = (tmp_path / "out" / "logs" / "sys" / "master_role.txt").read_text()
    assert (
        f"Re-run of job {previous.job_id}: {len(failing_batches)} mini-batches with failed items run again"
        in master
    )

    output = Path(second["append_row_file"]).read_bytes()
    assert output == _clean_output(tmp_path, dask_client, config, inputs, mode)
    assert len(output.splitlines()) == 100


def _failed_job(
    tmp_path: Path, client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> tuple[ParallelRunConfig, list[FileDataset], list[str], str]:
    inputs = [FileDataset.from_files(str(files(6)))]
    config, arguments = _job(tmp_path, write_script(SCRIPT), "raise", 2)
    (tmp_path / "fail.txt").write_text("f003.txt")
    out = str(tmp_path / "out")
    summary = run_job(config, inputs, out, arguments=arguments, client=client)
    assert summary["failed_items"] == 2
    return config, inputs, arguments, out


def _doc_matches(message: str) -> None:
    """The message is one docs/errors.md lists (placeholders <like> stand for any text)."""
    text = DOC.read_text(encoding="utf-8")
    templates = re.findall(r"```\n(rerun_failed=.*?)\n```", text, flags=re.S)
    for template in templates:
        pattern = "".join(
            ".+?" if p.startswith("<") and p.endswith(">") else re.escape(p)
            for p in re.split(r"(<[a-z_]+>)", template)
        )
        if re.fullmatch(pattern, message):
            return
    raise AssertionError(f"docs/errors.md does not list:\n{message}")


def _refused(tmp_path: Path, call: Callable[[], object]) -> str:
    before = (
        sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*"))
        if (tmp_path / "out").exists()
        else []
    )
    with pytest.raises(ConfigError) as info:
        call()
    after = (
        sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*"))
        if (tmp_path / "out").exists()
        else []
    )
    assert after == before  # a refusal changes nothing in the folder
    _doc_matches(str(info.value))
    return str(info.value)


def test_refused_without_a_job_record(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    message = _refused(tmp_path, lambda: PreviousJob.load(str(tmp_path / "out")))
    assert "holds no job record (logs/sys/job.json)" in message


def test_refused_when_nothing_failed(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    inputs = [FileDataset.from_files(str(files(4)))]
    config, arguments = _job(tmp_path, write_script(SCRIPT), "raise", 2)
    (tmp_path / "fail.txt").write_text("")
    summary = run_job(config, inputs, str(tmp_path / "out"), arguments=arguments, client=dask_client)
    assert summary["status"] == "succeeded"
    assert (tmp_path / "out" / "logs" / FAILED_ITEMS_FILE).read_text() == ""
    message = _refused(tmp_path, lambda: PreviousJob.load(str(tmp_path / "out")))
    assert "nothing failed in job" in message


def test_refused_when_failed_items_name_another_mini_batch(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    _failed_job(tmp_path, dask_client, write_script, files)
    path = tmp_path / "out" / "logs" / FAILED_ITEMS_FILE
    line = json.loads(path.read_text().splitlines()[0])
    path.write_text(path.read_text() + json.dumps({**line, "mini_batch": 99}) + "\n")
    message = _refused(tmp_path, lambda: PreviousJob.load(str(tmp_path / "out")))
    assert "names mini-batch 99, job" in message and "had 3 (0 to 2)" in message


@dataclass
class Job:
    """A job whose mini-batch 1 failed, as a change sees it: it may edit files or replace a part."""

    tmp_path: Path
    cache: Path
    write_script: Callable[..., str]
    files: Callable[..., Path]
    config: ParallelRunConfig
    inputs: list[FileDataset]
    arguments: list[str]


def _script_changed(job: Job) -> None:
    job.write_script(SCRIPT + "\n# changed\n")


def _arguments_changed(job: Job) -> None:
    job.arguments = [*job.arguments, "--x"]


def _input_changed(job: Job) -> None:
    (job.tmp_path / "in" / "f001.txt").write_text("changed\n")


def _other_inputs(job: Job) -> None:
    job.inputs = [FileDataset.from_files(str(job.files(2, "other")))]


def _cache_cleared(job: Job) -> None:
    shutil.rmtree(job.cache / "entries")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_script_changed, "the entry script or a file in source_directory changed (score.py)"),
        (_arguments_changed, "the arguments changed"),
        (_input_changed, "f001.txt changed"),
        (_other_inputs, "input 0 has paths=["),
        (_cache_cleared, "(mini-batches 0, 2) have no intact entry"),
    ],
    ids=["script", "arguments", "input_content", "other_inputs", "cache_cleared"],
)
def test_refused_when_the_job_changed(
    tmp_path: Path,
    dask_client: Client,
    write_script: Callable[..., str],
    files: Callable[..., Path],
    isolated_cache: Path,
    change: Callable[[Job], None],
    named: str,
) -> None:
    config, inputs, arguments, out = _failed_job(tmp_path, dask_client, write_script, files)
    previous = PreviousJob.load(out)
    job = Job(tmp_path, isolated_cache, write_script, files, config, inputs, arguments)
    change(job)
    message = _refused(
        tmp_path,
        lambda: run_job(
            job.config,
            job.inputs,
            out,
            arguments=job.arguments,
            client=dask_client,
            rerun=previous,
            planned=previous.plan,
        ),
    )
    assert named in message and f"job {previous.job_id}" in message


def test_record_and_failed_items_hold_no_secret(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    inputs = [
        FileDataset.from_files(
            str(files(4)),
        ).with_credentials({"key": "s3cr3t-key"})
    ]
    config, arguments = _job(
        tmp_path, write_script(SCRIPT), "raise", 2, environment_variables={"API_TOKEN": "s3cr3t-token"}
    )
    (tmp_path / "fail.txt").write_text("f001.txt")
    run_job(
        config,
        inputs,
        str(tmp_path / "out"),
        arguments=arguments,
        client=dask_client,
        storage_options={"secret": "s3cr3t-opt"},
    )
    logs = tmp_path / "out" / "logs"
    for path in (logs / FAILED_ITEMS_FILE, logs / "sys" / "job.json"):
        text = path.read_text()
        assert "s3cr3t" not in text, path
    record = json.loads((logs / "sys" / "job.json").read_text())
    assert set(record["config"]["environment_variables"]) == {"API_TOKEN"}
    previous = PreviousJob.load(str(tmp_path / "out"))
    message = _refused(tmp_path, lambda: previous.config({}))
    assert "API_TOKEN" in message and "s3cr3t" not in message


def test_refused_when_an_environment_variable_differs(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    inputs = [FileDataset.from_files(str(files(4)))]
    config, arguments = _job(
        tmp_path, write_script(SCRIPT), "raise", 2, environment_variables={"API_TOKEN": "s3cr3t-token"}
    )
    (tmp_path / "fail.txt").write_text("f001.txt")
    out = str(tmp_path / "out")
    run_job(config, inputs, out, arguments=arguments, client=dask_client)
    previous = PreviousJob.load(out)
    changed = previous.config({"API_TOKEN": "another"})
    message = _refused(
        tmp_path,
        lambda: run_job(
            changed,
            inputs,
            out,
            arguments=arguments,
            client=dask_client,
            rerun=previous,
            planned=previous.plan,
        ),
    )
    assert "API_TOKEN differ(s)" in message and "s3cr3t" not in message and "another" not in message


TABULAR_SCRIPT = """
import argparse

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
    hit = [str(i) for i in frame["id"] if str(i) in bad]
    if hit:
        raise ValueError(f"row {hit[0]} is on the fail list")
    return [f"{i} {v}" for i, v in zip(frame["id"], frame["value"])]
"""


def test_rerun_of_tabular_slices(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str]
) -> None:
    from airflow_parallel_run.core import TabularDataset

    (tmp_path / "in").mkdir()
    rows = "".join(f"{i},{'v' * 40}{i}\n" for i in range(300))
    (tmp_path / "in" / "t.csv").write_text("id,value\n" + rows)
    inputs = [TabularDataset.from_delimited_files(str(tmp_path / "in" / "t.csv"))]
    config = ParallelRunConfig(
        entry_script=write_script(TABULAR_SCRIPT),
        mini_batch_size="1KB",
        run_max_try=1,
        process_count_per_node=2,
    )
    arguments = ["--fail-list", flaky(tmp_path / "fail.txt"), "--calls", str(tmp_path / "calls.txt")]
    (tmp_path / "fail.txt").write_text("17 250")
    out = str(tmp_path / "out")
    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    failed = read_failed_items(str(tmp_path / "out" / "logs"))
    assert len(failed) == 2 and all(
        set(line["item"]) == {"file", "bytes", "rows", "first_line"} for line in failed
    )
    data = (tmp_path / "in" / "t.csv").read_bytes()
    for line, row in zip(failed, (17, 250), strict=True):  # the byte range holds the failing row
        start, end = line["item"]["bytes"]
        assert f"\n{row},".encode() in data[start - 1 : end]
        assert line["item"]["rows"] == data[start:end].count(b"\n")
    assert first["failed_items"] == sum(line["item"]["rows"] for line in failed)

    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded" and second["failed_items"] == 0, second
    assert len(_calls(tmp_path)) == first["failed_items"]  # only the rows of the failed slices ran
    expected = "".join(f"{i} {'v' * 40}{i}\n" for i in range(300)).encode()
    assert Path(second["append_row_file"]).read_bytes() == expected


def test_rerun_of_a_job_a_threshold_stopped(
    tmp_path: Path, dask_client: Client, write_script: Callable[..., str], files: Callable[..., Path]
) -> None:
    """error_threshold 0 stops the job at its first failed item: the mini-batches it did not finish are failed
    items too (CANCELLED), and the re-run runs exactly those and the failed one, whichever they were."""
    inputs = [FileDataset.from_files(str(files(40)))]
    config, arguments = _job(tmp_path, write_script(SCRIPT), "raise", 1, error_threshold=0)
    (tmp_path / "fail.txt").write_text("f005.txt")
    out = str(tmp_path / "out")
    first = run_job(config, inputs, out, arguments=arguments, client=dask_client)
    assert first["status"] == "failed" and "error_threshold exceeded" in first["message"]
    failed = read_failed_items(str(tmp_path / "out" / "logs"))
    names = sorted(Path(line["item"]["file"]).name for line in failed)
    assert "f005.txt" in names and len(names) == 40 - first["succeeded_items"]
    statuses = {Path(line["item"]["file"]).name: line["status"] for line in failed}
    assert statuses.pop("f005.txt") == "RUN_EXCEPTION"
    assert set(statuses.values()) <= {"CANCELLED"}  # never finished: the job stopped first

    (tmp_path / "fail.txt").write_text("")
    (tmp_path / "calls.txt").unlink()
    previous = PreviousJob.load(out)
    second = run_job(
        config, inputs, out, arguments=arguments, client=dask_client, rerun=previous, planned=previous.plan
    )
    assert second["status"] == "succeeded", second
    assert sorted(_calls(tmp_path)) == names
    expected = "".join(f"f{i:03d}.txt {i}\n" for i in range(40)).encode()
    assert Path(second["append_row_file"]).read_bytes() == expected

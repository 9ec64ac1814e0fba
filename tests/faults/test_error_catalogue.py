"""docs/errors.md is true: each configuration mistake it lists, triggered for real, gives exactly its message.

Each case runs in a scratch folder (the current directory) so relative names appear as written in the
doc; absolute paths are compared with the scratch folder written as `/data`. Placeholders in the doc
(`<pid>`, `<host>`, `<time>`, `<port>`) match any value.
"""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from faults_support import CLI, check_documented, closed_port, doc_text

from airflow_parallel_run.core import (
    ConfigError,
    FileDataset,
    InputError,
    OutputBusyError,
    ParallelRunConfig,
    TabularDataset,
    run_job,
)
from airflow_parallel_run.core.output.folder import OutputLock
from airflow_parallel_run.core.output.formats import encode_part
from airflow_parallel_run.core.output.results import InvalidResultError
from airflow_parallel_run.core.output.schema import JobSchema
from airflow_parallel_run.core.plan import plan


def _read_jsonl_job(text: str, column_types: dict[str, str], sample: bool = True) -> None:
    """Every mini-batch of a JSON Lines job read as a worker reads it (`sample=False`: the job's types are
    exactly `column_types`, as when the first file's start lacks a field)."""
    from airflow_parallel_run.core.inputs.batch_format import read_batch
    from airflow_parallel_run.core.plan import plan_inputs

    Path("scores.jsonl").write_text(text)
    dataset = TabularDataset.from_json_lines_files("scores.jsonl", column_types=column_types)
    batches = list(plan_inputs([dataset], 10))
    job_input = dataset.with_column_types(batches) if sample else dataset
    for batch in batches:
        read_batch(job_input, batch, ".", "pandas")


def _read_csv_job(text: str, column_types: dict[str, str]) -> None:
    """Every mini-batch of a CSV job read as a worker reads it."""
    from airflow_parallel_run.core.inputs.batch_format import read_batch
    from airflow_parallel_run.core.plan import plan_inputs

    Path("scores.csv").write_text(text)
    dataset = TabularDataset.from_delimited_files("scores.csv", column_types=column_types)
    batches = list(plan_inputs([dataset], 10))
    job_input = dataset.with_column_types(batches)
    for batch in batches:
        read_batch(job_input, batch, ".", "pandas")


@dataclass(frozen=True)
class Case:
    name: str
    trigger: Callable[[], object]
    message: str
    error: type[Exception] = ConfigError


def config(**settings: object) -> ParallelRunConfig:
    return ParallelRunConfig(entry_script="score.py", **settings)  # type: ignore[arg-type]


def files(path: str = "in") -> FileDataset:
    return FileDataset.from_files(path)


MBS_TEN = (
    "mini_batch_size='ten' is not allowed: digits with an optional KB/MB/GB unit, e.g. 10, '1024KB', '10MB'"
)
EMPTY = "input 'empty_folder' matched no files (names starting with '.' or '_' are skipped in folders)"
BUSY = (
    "output_path='/data/out' is not allowed: a folder no other running job writes to; job pid <pid> on <host> "
    "has used it since <time> UTC, last heartbeat <seconds> s ago (its lock /data/out/.airflow-parallel-run.lock "
    "is taken over once the heartbeat is more than 30 s old; retry later, or use another output_path)"
)
NOT_OURS = (
    "output_path='/data/{folder}' is not allowed: a folder where airflow-parallel-run replaces only what it "
    "wrote: /data/{folder}/{name} is someone else's ({why}) and would be replaced; use another output_path, or "
    "remove it yourself if it may go"
)

CASES = [
    # 1. ParallelRunConfig
    Case("mini_batch_size not a number", lambda: config(mini_batch_size="ten"), MBS_TEN),
    Case(
        "mini_batch_size zero",
        lambda: config(mini_batch_size=0),
        "mini_batch_size=0 is not allowed: at least 1",
    ),
    Case(
        "mini_batch_size float",
        lambda: config(mini_batch_size=2.5),
        "mini_batch_size=2.5 is not allowed: an int or a string like '10', '512KB', '10MB', '1GB'",
    ),
    Case(
        "mini_batch_size bytes for file input",
        lambda: plan([files()], config(mini_batch_size="1MB")),
        "mini_batch_size='1MB' is not allowed: a number of files for file input (units KB/MB/GB are for tabular input)",
    ),
    Case(
        "unknown output_action",
        lambda: config(output_action="append_rows"),
        "output_action='append_rows' is not allowed: append_row or summary_only",
    ),
    Case(
        "unknown append_row_format",
        lambda: config(append_row_format="xml"),
        "append_row_format='xml' is not allowed: text, csv, jsonl, parquet",
    ),
    Case(
        "path in append_row_file_name",
        lambda: config(append_row_file_name="../out.txt"),
        "append_row_file_name='../out.txt' is not allowed: a plain file name: no path separators, no '..', "
        'none of ~"#%&*:<>?/\\{|}',
    ),
    Case(
        "entry script missing",
        lambda: ParallelRunConfig(entry_script="nope.py"),
        "entry_script='nope.py' is not allowed: an existing file (looked for nope.py)",
    ),
    Case(
        "entry script without run",
        lambda: ParallelRunConfig(entry_script="no_run.py"),
        "entry_script='no_run.py' is not allowed: a script that defines run(mini_batch)",
    ),
    Case(
        "entry script not Python",
        lambda: ParallelRunConfig(entry_script="broken.py"),
        "entry_script='broken.py' is not allowed: valid Python (line 1: expected ':')",
    ),
    Case(
        "source_directory missing",
        lambda: config(source_directory="no_such_folder"),
        "source_directory='no_such_folder' is not allowed: an existing directory",
    ),
    Case(
        "error_threshold",
        lambda: config(error_threshold=-2),
        "error_threshold=-2 is not allowed: an integer >= -1",
    ),
    Case(
        "allowed_failed_percent",
        lambda: config(allowed_failed_percent=150),
        "allowed_failed_percent=150 is not allowed: a number from 0 to 100",
    ),
    Case("run_max_try", lambda: config(run_max_try=0), "run_max_try=0 is not allowed: an integer >= 1"),
    Case(
        "run_invocation_timeout",
        lambda: config(run_invocation_timeout=0),
        "run_invocation_timeout=0 is not allowed: a number of seconds > 0",
    ),
    Case(
        "run_invocation_timeout not finite",
        lambda: config(run_invocation_timeout=float("nan")),
        "run_invocation_timeout=nan is not allowed: a finite number of seconds > 0",
    ),
    Case(
        "resource_monitor_interval not finite",
        lambda: config(resource_monitor_interval=float("inf")),
        "resource_monitor_interval=inf is not allowed: a finite number of seconds >= 0 (0 turns monitoring off)",
    ),
    Case(
        "process_count_per_node",
        lambda: config(process_count_per_node=0),
        "process_count_per_node=0 is not allowed: an integer >= 1",
    ),
    Case(
        "progress_update_timeout",
        lambda: config(progress_update_timeout=0),
        "progress_update_timeout=0 is not allowed: a number of seconds > 0",
    ),
    Case(
        "first_task_creation_timeout not finite",
        lambda: config(first_task_creation_timeout=float("inf")),
        "first_task_creation_timeout=inf is not allowed: a finite number of seconds > 0",
    ),
    Case(
        "speculative_execution",
        lambda: config(speculative_execution="yes"),
        "speculative_execution='yes' is not allowed: True or False",
    ),
    Case(
        "speculative_execution with several mini-batches per process",
        lambda: ParallelRunConfig(
            entry_script="score_async.py", speculative_execution=True, max_concurrency_per_process=2
        ),
        "speculative_execution=True is not allowed: False when max_concurrency_per_process > 1 (a losing copy "
        "is stopped by ending its process, which holds other mini-batches of an async run())",
    ),
    Case(
        "speculation_multiplier",
        lambda: config(speculation_multiplier=1),
        "speculation_multiplier=1 is not allowed: a finite number > 1 (times the median mini-batch duration)",
    ),
    Case(
        "max_concurrency_per_process",
        lambda: config(max_concurrency_per_process=0),
        "max_concurrency_per_process=0 is not allowed: an integer >= 1 and <= 256",
    ),
    Case(
        "max_concurrency_per_process with a synchronous run()",
        lambda: config(max_concurrency_per_process=4),
        "max_concurrency_per_process=4 is not allowed: 1 for a synchronous run(mini_batch); several mini-batches "
        "share one process only with `async def run(mini_batch)` (or raise process_count_per_node for more "
        "processes)",
    ),
    Case(
        "append_row_file_name too long",
        lambda: config(append_row_file_name="r" * 296 + ".txt"),
        "append_row_file_name='<name>' is not allowed: a file name of at most 200 bytes in UTF-8 (file systems "
        "allow 255 and the engine adds up to 55 for temporary names); this one has 300",
    ),
    Case(
        "entry_script outside source_directory",
        lambda: ParallelRunConfig(source_directory="src", entry_script="../score.py"),
        "entry_script='../score.py' is not allowed: a file inside source_directory ('src'): only that folder is "
        "shipped to the workers",
    ),
    Case(
        "FIFO in source_directory",
        lambda: (os.mkfifo("src/pipe"), ParallelRunConfig(source_directory="src", entry_script="score.py")),
        "source_directory='src' is not allowed: a folder of regular files only (every file is shipped to the "
        "workers); src/pipe is a FIFO",
    ),
    Case(
        "node_count as a string",
        lambda: config(node_count="2"),
        "node_count='2' is not allowed: an integer >= 1",
    ),
    Case(
        "logging_level",
        lambda: config(logging_level="TRACE"),
        "logging_level='TRACE' is not allowed: DEBUG, INFO, WARNING",
    ),
    Case(
        "empty partition_keys",
        lambda: config(partition_keys=[]),
        "partition_keys=[] is not allowed: a non-empty list of key names",
    ),
    Case(
        "environment variable without a name",
        lambda: config(environment_variables={"": "x"}),
        "environment_variables={'': 'x'} is not allowed: a mapping of variable names to string values",
    ),
    Case(
        "misspelt override",
        lambda: config().with_overrides(mini_batch_sise=3),
        "mini_batch_sise=3 is not allowed: one of allowed_failed_count, allowed_failed_percent, "
        "append_row_file_name, append_row_format, batch_format, entry_script, environment_variables, error_threshold, "
        "first_task_creation_timeout, logging_level, max_concurrency_per_process, mini_batch_size, "
        "node_count, output_action, partition_keys, process_count_per_node, progress_update_timeout, "
        "resource_monitor_interval, run_invocation_timeout, run_max_try, source_directory, "
        "speculation_multiplier, speculative_execution",
    ),
    Case(
        "batch_format unknown",
        lambda: config(batch_format="arrow"),
        "batch_format='arrow' is not allowed: pandas or pyarrow (what run() receives for a tabular mini-batch)",
    ),
    Case(
        "column_types not a type",
        lambda: TabularDataset.from_delimited_files("rows.csv", column_types={"zip": "text"}),
        "column_types={'zip': 'text'} is not allowed: Arrow type names (int64, float64, string, bool, "
        "timestamp[s], date32, ...); 'text' for column 'zip' is not one",
    ),
    Case(
        "column_types a type JSON Lines cannot be",
        lambda: TabularDataset.from_json_lines_files("rows.jsonl", column_types={"raw": "binary"}),
        "column_types={'raw': 'binary'} is not allowed: for JSON Lines, int*/uint*, float*, bool, string, "
        "timestamp[...], date32/date64 or object (nested or mixed values kept as they are); 'binary' is not one",
    ),
    # 2. inputs
    Case(
        "mixed input types",
        lambda: plan([files(), TabularDataset.from_delimited_files("header.csv")], config()),
        "inputs=['FileDataset', 'TabularDataset'] is not allowed: datasets of one type (all file or all tabular)",
    ),
    Case(
        "no inputs",
        lambda: plan([], config()),
        "inputs=[] is not allowed: at least one FileDataset or TabularDataset",
    ),
    Case(
        "empty path list",
        lambda: FileDataset.from_files([]),
        "path=[] is not allowed: a path, glob, folder or fsspec URL, or a non-empty list of them",
    ),
    Case("empty folder", lambda: plan([files("empty_folder")], config()), EMPTY, InputError),
    Case(
        "missing input",
        lambda: plan([files("no_such_input")], config()),
        "input 'no_such_input' does not exist (no file, folder or glob match)",
        InputError,
    ),
    Case(
        "partition key missing",
        lambda: plan([files()], config(partition_keys=["user"])),
        "file '/data/in/a.txt' has no value for partition key(s) ['user'] (hive key=value folders; keys found: [])",
        InputError,
    ),
    Case(
        "partition_format without keys",
        lambda: plan(
            [FileDataset.from_files("in", partition_format="no keys")], config(partition_keys=["user"])
        ),
        "partition_format='no keys' is not allowed: a path template with {key} fields, e.g. "
        "'{user}/{season}/{genres}.wav'",
    ),
    Case(
        "partition_format with a repeated key",
        lambda: FileDataset.from_files("in", partition_format="{a}/{a}.txt"),
        "partition_format='{a}/{a}.txt' is not allowed: each {key} at most once (a appears more than once)",
    ),
    Case(
        "partition_format with an unclosed brace",
        lambda: FileDataset.from_files("in", partition_format="{a/x.txt"),
        "partition_format='{a/x.txt' is not allowed: braces only around key names, e.g. "
        "'{user}/{season}/{genres}.wav' ('{' at character 1 does not open a {name} field)",
    ),
    Case(
        "partition_format with a stray closing brace",
        lambda: FileDataset.from_files("in", partition_format="{a}/b}.txt"),
        "partition_format='{a}/b}.txt' is not allowed: braces only around key names, e.g. "
        "'{user}/{season}/{genres}.wav' ('}' without '{' at character 6)",
    ),
    Case(
        "file name not UTF-8",
        lambda: (open(b"in/caf\xe9.txt", "w").close(), plan([files()], config())),
        "input file b'/data/in/caf\\xe9.txt' has a name that is not valid UTF-8; rename it (for example with "
        "convmv) or leave it out of the inputs",
        InputError,
    ),
    Case(
        "corrupt parquet",
        lambda: plan([TabularDataset.from_parquet_files("bad.parquet")], config()),
        "/data/bad.parquet: not a readable Parquet file: Parquet magic bytes not found in footer. Either the "
        "file is corrupted or this is not a parquet file.",
        InputError,
    ),
    Case(
        "separator",
        lambda: TabularDataset.from_delimited_files("header.csv", separator=",,"),
        "separator=',,' is not allowed: one ASCII character other than a quote or a newline",
    ),
    Case(
        "separator not ASCII",  # it planned (a byte of its code point) and failed to read, or planning crashed
        lambda: TabularDataset.from_delimited_files("header.csv", separator="€"),
        "separator='€' is not allowed: one ASCII character other than a quote or a newline",
    ),
    Case(
        "tabular format",
        lambda: TabularDataset(("x",), "xml"),
        "format='xml' is not allowed: csv, parquet, jsonl",
    ),
    Case(
        "compressed csv",
        lambda: plan([TabularDataset.from_delimited_files("rows.csv.gz")], config()),
        "/data/rows.csv.gz: gzip-compressed csv is not supported: tabular files are split into mini-batches by "
        "byte ranges, which a compressed stream does not allow; decompress the file first (Parquet compresses "
        "internally and splits by row groups)",
        InputError,
    ),
    Case(
        "jsonl value outside its field's type",
        lambda: _read_jsonl_job('{"v": 1}\n{"v": 1.5}\n', {"v": "int64"}),
        "/data/scores.jsonl bytes [<start>, <end>): field 'v' is int64 for every mini-batch of the job (decided "
        "once from the start of the first file, or given with column_types), but line 2 has 1.5 (float), which "
        "is not converted silently; give this field's type, e.g. TabularDataset.from_json_lines_files(..., "
        "column_types={'v': 'float64'})",
        InputError,
    ),
    Case(
        "csv number that pandas reads as text",
        lambda: _read_csv_job("v\n1\n0x1f\n", {"v": "int64"}),
        "/data/scores.csv bytes [<start>, <end>): cannot read as csv with the job's column types: column 'v' "
        "(int64) holds '0x1f', a number for Arrow but text for pandas.read_csv, which reads such a column as "
        "string. The types of the columns are decided once for every mini-batch from the start of the first "
        "file (or given with column_types); give this column's type, e.g. "
        "TabularDataset.from_delimited_files(..., column_types={'<column>': 'string'})",
        InputError,
    ),
    Case(
        "jsonl field without a type",
        lambda: _read_jsonl_job('{"v": 1}\n{"v": 2, "note": "late"}\n', {"v": "int64"}, sample=False),
        "/data/scores.jsonl bytes [<start>, <end>): field 'note' (line 2) was not in the first 1 MiB of the "
        "first file, from which the job's field types are decided, nor in column_types, so it has no type that "
        "every mini-batch reads it with; give its type, e.g. TabularDataset.from_json_lines_files(..., "
        "column_types={'note': 'string'})",
        InputError,
    ),
    Case(
        "csv quote never closed",
        lambda: plan([TabularDataset.from_delimited_files("open.csv")], config()),
        "/data/open.csv: the quote opened at byte 6 is never closed (unterminated quoted field from line 2 to "
        "the end of the CSV file; a quote is special only where a field starts, as pandas reads it)",
        InputError,
    ),
    Case(
        "csv header record holding rows after a lone CR",
        lambda: plan([TabularDataset.from_delimited_files("mac.csv")], config()),
        "/data/mac.csv: the header record (bytes [0, 12)) holds 2 rows of data after the header: a lone CR, not "
        "followed by LF, is a line break for Arrow and pandas, but the file is split into records at LF only, so "
        "those rows would be lost; convert the file's line endings to LF or CRLF",
        InputError,
    ),
]


@contextmanager
def _held_lock(workspace: Path) -> Iterator[None]:
    """out/ exists and its lock is held, as if another job of this host were running there."""
    out = workspace / "out"
    out.mkdir()
    lock = OutputLock(str(out))
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class RunJobCase:
    """`run_job(ParallelRunConfig(entry_script="score.py", **config), [inputs], output, **kwargs)` refused
    before any work with `error` and `message` (nothing created), or, with `error=None`, run and failed
    with `message` in its summary. `setup` prepares the workspace for the call."""

    name: str
    message: str
    config: dict[str, object] = field(default_factory=dict)
    output: str = "out"
    kwargs: dict[str, object] = field(default_factory=dict)
    tabular: str | None = None  # a CSV file as the input instead of the folder `in`
    setup: Callable[[Path], AbstractContextManager[None]] | None = None
    error: type[Exception] | None = ConfigError


RUN_JOB_CASES = [
    # 3. run_job and the output folder
    RunJobCase(
        "output path is a file",
        "output_path='out.txt' is not allowed: a folder (a file of that name exists)",
        output="out.txt",
    ),
    RunJobCase(
        "side input missing",
        "side_inputs='no_such_side_input' is not allowed: an existing file or folder, or an fsspec URL",
        kwargs={"side_inputs": ["no_such_side_input"]},
    ),
    RunJobCase(
        "more processes than the embedded cluster runs",
        "process_count_per_node=100000 is not allowed: at most <limit> on the embedded cluster (4 per CPU; this "
        "host has <cpus>); for more, run on a Dask cluster (--scheduler or dask_conn_id)",
        config={"process_count_per_node": 100_000},
    ),
    RunJobCase(
        "argument neither a string nor a number",
        "arguments=None is not allowed: a string (or a number)",
        kwargs={"arguments": ["--n", None]},
    ),
    RunJobCase(
        "reserved output file name",
        "append_row_file_name='logs' is not allowed: a name other than logs, .staging or one starting with "
        ".airflow-parallel-run (the engine keeps its logs, staging area and lock there)",
        config={"append_row_file_name": "logs"},
    ),
    RunJobCase(
        "output inside the input",
        "output_path='in/out' is not allowed: a folder that neither is, contains nor lies inside the input 'in' "
        "(a later run would read this job's output and logs as its inputs)",
        output="in/out",
    ),
    RunJobCase(
        "output inside the cache",
        "output_path='reuse-cache/out' is not allowed: a folder that neither is, contains nor lies inside the "
        "reuse cache /data/reuse-cache",
        output="reuse-cache/out",
    ),
    RunJobCase(
        "output inside a protected folder",
        "output_path='home/out' is not allowed: a folder that neither is, contains nor lies inside /data/home, "
        "which is protected (AIRFLOW_HOME, the DAGs folder and the like hold files of other programs)",
        output="home/out",
        kwargs={"protected_paths": ["home"]},  # made absolute in the workspace
    ),
    RunJobCase(
        "someone else's logs",
        NOT_OURS.format(folder="home", name="logs", why="it has no marker logs/.airflow-parallel-run"),
        output="home",
    ),
    RunJobCase(
        "someone else's staging area",
        NOT_OURS.format(folder="staged", name=".staging", why="logs/.airflow-parallel-run is missing"),
        output="staged",
    ),
    RunJobCase(
        "someone else's output file",
        NOT_OURS.format(folder="taken", name="parallel_run_step.txt", why="no earlier job wrote it"),
        output="taken",
    ),
    RunJobCase(
        "batch_format for file input",
        "batch_format='pyarrow' is not allowed: \"pandas\" (the default) for file input: run() gets a list of "
        "local file paths, which has no batch format; use a TabularDataset to get pyarrow Tables",
        config={"batch_format": "pyarrow"},
    ),
    RunJobCase("busy output folder", BUSY, output="/data/out", setup=_held_lock, error=OutputBusyError),
    # 6. failed jobs
    RunJobCase(
        "no items", "Job failed: the inputs hold no items to process", tabular="header.csv", error=None
    ),
]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "score_async.py").write_text("async def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "no_run.py").write_text("def init():\n    pass\n")
    (tmp_path / "broken.py").write_text("def run(mini_batch)\n    return mini_batch\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a\n")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "header.csv").write_text("a,b\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "rows.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n"))
    (tmp_path / "open.csv").write_text('a,b\n1,"open\n2,3\n')
    (tmp_path / "mac.csv").write_bytes(b"a,b\r1,2\r3,4\r")
    (tmp_path / "out.txt").write_text("a file, not a folder\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "home" / "logs").mkdir(parents=True)  # like AIRFLOW_HOME: another program's logs
    (tmp_path / "home" / "logs" / "scheduler.log").write_text("not ours\n")
    (tmp_path / "staged" / ".staging" / "job").mkdir(parents=True)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "parallel_run_step.txt").write_text("someone's results\n")
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_documented_message(case: Case, workspace: Path) -> None:
    with pytest.raises(case.error) as info:
        case.trigger()
    check_documented(case.message, str(info.value).replace(str(workspace), "/data"))
    assert not (workspace / "out").exists(), "a rejected job created its output folder"


@pytest.mark.parametrize("case", RUN_JOB_CASES, ids=[c.name for c in RUN_JOB_CASES])
def test_documented_run_job_message(case: RunJobCase, workspace: Path) -> None:
    inputs = [TabularDataset.from_delimited_files(case.tabular) if case.tabular else files()]
    output = case.output.replace("/data", str(workspace))
    kwargs = dict(case.kwargs)
    if "protected_paths" in kwargs:
        kwargs["protected_paths"] = [os.path.abspath(str(p)) for p in kwargs["protected_paths"]]  # type: ignore[attr-defined]
    with case.setup(workspace) if case.setup else nullcontext():
        if case.error is None:
            message = str(run_job(config(**case.config), inputs, output, **kwargs)["message"])  # type: ignore[arg-type]
        else:
            with pytest.raises(case.error) as info:
                run_job(config(**case.config), inputs, output, **kwargs)  # type: ignore[arg-type]
            message = str(info.value)
    check_documented(case.message, message.replace(str(workspace), "/data"))
    if case.error is not None and case.setup is None:
        assert not (workspace / "out").exists(), "a rejected job created its output folder"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--mini-batch-size", "ten"], f"airflow-parallel-run: error: {MBS_TEN}"),
        (["--input", "empty_folder"], f"airflow-parallel-run: error: {EMPTY}"),
        (
            ["--environment-variables", "NOEQUALS"],
            "airflow-parallel-run run: error: argument --environment-variables: expected KEY=VALUE, got 'NOEQUALS'",
        ),
    ],
    ids=["config", "input", "usage"],
)
def test_cli_messages(workspace: Path, args: list[str], line: str) -> None:
    argv = [*CLI, "run", "--input", "in", "--output", "out", "--entry-script", "score.py", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done
    assert "Traceback" not in done.stderr
    check_documented(line, done.stderr.strip().splitlines()[-1])
    assert not (workspace / "out").exists()


# -- an unreachable scheduler ------------------------------------------------------------------------------
# Dask retries for 30 s. The CLI starts in the background with this module (session-scoped, so it lives on)
# and the test that collects it is marked `faults_last`: tests/faults/conftest.py runs it after every other
# test, so the 30 s overlap with the rest of the suite instead of adding to it.
class Background(threading.Thread):
    """The CLI run, waited for in a thread that notes when it ended."""

    def __init__(self, argv: list[str], cwd: Path, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout = self.stderr = ""
        self.seconds = -1.0

    def run(self) -> None:
        self.stdout, self.stderr = self.proc.communicate()
        self.seconds = time.monotonic() - self.started


@pytest.fixture(scope="module", autouse=True)
def _start_unreachable_early(unreachable_scheduler: Background) -> None:
    """Starts the background CLI when this module starts."""


@pytest.fixture(scope="session")
def unreachable_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    folder = tmp_path_factory.mktemp("unreachable")
    (folder / "in").mkdir()
    (folder / "in" / "a.txt").write_text("a\n")
    (folder / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    port = closed_port()
    argv = [*CLI, "run", "--input", "in", "--output", "out", "--entry-script", "score.py"]
    background = Background([*argv, "--scheduler", f"tcp://127.0.0.1:{port}"], folder, port)
    background.start()
    yield background
    if background.proc.poll() is None:
        background.proc.kill()
    background.join(10)


@pytest.mark.faults_last
def test_unreachable_scheduler_fails_in_bounded_time(unreachable_scheduler: Background) -> None:
    run = unreachable_scheduler
    run.join(120)
    stdout, stderr, seconds = run.stdout, run.stderr, run.seconds
    assert run.proc.returncode == 2, stderr
    assert 0 < seconds < 60, f"the CLI needed {seconds:.0f} s to give up"
    assert "Traceback" not in stderr and stdout == ""
    check_documented(
        "airflow-parallel-run: error: cannot use Dask scheduler 'tcp://127.0.0.1:<port>': Timed out trying to "
        "connect to tcp://127.0.0.1:<port> after 30 s",
        stderr.strip().splitlines()[-1],
    )
    assert f"127.0.0.1:{run.port}" in stderr


INTERRUPTED = (
    "airflow-parallel-run: interrupted by SIGINT while <stage>; the job did not run and nothing it started is "
    "left running"
)


def test_cli_interrupted_during_startup(workspace: Path) -> None:
    """A signal before the job runs (here: while the CLI connects to a scheduler that is not there)."""
    argv = [*CLI, "run", "--input", "in", "--output", "out", "--entry-script", "score.py"]
    proc = subprocess.Popen(
        [*argv, "--scheduler", f"tcp://127.0.0.1:{closed_port()}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    while not (workspace / "out" / ".airflow-parallel-run.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stdout == "" and "Traceback" not in stderr, stderr
    check_documented(INTERRUPTED, stderr.strip().splitlines()[0])


def test_the_doc_lists_no_untested_message() -> None:
    """Every fenced message in sections 1-4 of docs/errors.md is one a test here checks."""
    text = doc_text()
    engine_part = text[text.index("## 1. ParallelRunConfig") : text.index("## 5. Airflow")]
    documented = re.findall(r"```\n(.*?)\n```", engine_part, flags=re.S)
    tested = (
        {c.message for c in CASES}
        | {c.message for c in RUN_JOB_CASES}
        | {
            f"airflow-parallel-run: error: {MBS_TEN}",
            f"airflow-parallel-run: error: {EMPTY}",
            "airflow-parallel-run run: error: argument --environment-variables: expected KEY=VALUE, got 'NOEQUALS'",
            "airflow-parallel-run: error: cannot use Dask scheduler 'tcp://127.0.0.1:<port>': Timed out trying to "
            "connect to tcp://127.0.0.1:<port> after 30 s",
            INTERRUPTED,
        }
    )
    untested = [m for m in documented if m not in tested]
    assert not untested, f"docs/errors.md lists messages no test checks: {untested}"


def _types_that_do_not_join() -> str | None:
    schema = JobSchema("parquet")
    for index, result in enumerate([[{"v": 1.5}], [{"v": [1, 2]}]]):
        _, columns, part_schema = encode_part(result, "parquet")
        problem = schema.admit(index, columns, part_schema)
    return problem


def _values_of_no_one_type() -> str | None:
    with pytest.raises(InvalidResultError) as info:
        encode_part([{"v": [1, 2]}, {"v": 3}], "jsonl")
    return str(info.value)


def _duplicate_column_names() -> str | None:
    import pandas as pd

    with pytest.raises(InvalidResultError) as info:
        encode_part(pd.DataFrame([[1, 2]], columns=["a", "a"]), "parquet")
    return str(info.value)


def _duplicate_names_across_mini_batches() -> str | None:
    import pandas as pd

    text = JobSchema("csv")
    assert text.admit(0, encode_part(pd.DataFrame([[1, 2]], columns=["a", "a"]), "csv")[1], None) is None
    return text.admit(1, encode_part(pd.DataFrame({"a": [1], "b": [2]}), "csv")[1], None)


def _arrow_list_with_other_values() -> str | None:
    import pyarrow as pa

    with pytest.raises(InvalidResultError) as info:
        encode_part([pa.table({"a": [1]}), {"a": 2}], "parquet")
    return str(info.value)


def _nested_arrow_column_as_csv() -> str | None:
    import pyarrow as pa

    with pytest.raises(InvalidResultError) as info:
        encode_part(pa.table({"v": [[1, 2]]}), "csv")
    return str(info.value)


def _arrow_tables_that_do_not_join() -> str | None:
    import pyarrow as pa

    with pytest.raises(InvalidResultError) as info:
        encode_part([pa.table({"v": [1]}), pa.table({"v": [[1]]})], "parquet")
    return str(info.value).split(" (")[0]


def _markers_in_a_short_result() -> str | None:
    from airflow_parallel_run.core.output.results import ItemFailed, check_result

    with pytest.raises(InvalidResultError) as info:
        check_result(["a", ItemFailed("gone")], 3)
    return str(info.value)


def _an_exception_inside_an_entry() -> str | None:
    from airflow_parallel_run.core.output.results import check_result

    with pytest.raises(InvalidResultError) as info:
        check_result([{"p": 1}, {"p": KeyError("k")}], 2)
    return str(info.value)


def _kept_results_changed() -> str | None:
    import tempfile

    from airflow_parallel_run.core.worker.messages import PartialRun
    from airflow_parallel_run.core.worker.rerun_items import load_successes

    with tempfile.TemporaryDirectory() as folder:
        kept = Path(folder) / "kept.pickle"
        kept.write_bytes(b"changed")
        with pytest.raises(InvalidResultError) as info:
            load_successes(PartialRun((1,), str(kept), "0" * 64), {})
    return str(info.value)


def _a_count_in_a_rerun_of_items() -> str | None:
    from airflow_parallel_run.core.worker.messages import PartialRun
    from airflow_parallel_run.core.worker.rerun_items import join_results

    with pytest.raises(InvalidResultError) as info:
        join_results(["x"], PartialRun((0, 2)), ["b"], 3, summary_only=False)
    return str(info.value)


#: Section 6: results outside the job's one schema, from the encoder (entry process) and from the schema
#: the driver keeps: (how the message is produced, the documented message).
SCHEMA_CASES = [
    (
        _markers_in_a_short_result,
        "run() returned 2 results for a mini-batch of 3 items, 1 of them failed-item markers (exceptions or "
        "ItemFailed): a result that marks failed items needs exactly one entry per input item, in input order, "
        "so that each marker names its item",
    ),
    (
        _an_exception_inside_an_entry,
        "run() returned KeyError \"'k'\" as the value of key 'p' of entry 1: an exception is never written to the "
        "output. To fail that item, put the exception (or ItemFailed) itself in the item's place in a list with one "
        "entry per input item",
    ),
    (
        _kept_results_changed,
        "the previous job's successful results in <url> are not the ones its record names (SHA-256 differs): "
        "they were changed since, and are not loaded",
    ),
    (
        _a_count_in_a_rerun_of_items,
        "a re-run of 2 failed items of this mini-batch needs a list (or tuple) with one entry per item, in input "
        "order; run() returned a list of length 1. The failed items' results take their places among the previous "
        "job's, so each must say which item it is for",
    ),
    (
        _types_that_do_not_join,
        "run() returned column 'v' as list<item: int64> in mini-batch 1, which cannot be combined with double "
        "from mini-batch 0: the records of all mini-batches form one output schema, and Arrow's type rules (int "
        "and float give float, null takes the other type, mixed scalar types give string) do not join these",
    ),
    (
        _values_of_no_one_type,
        "run() returned column 'v' with values that do not form one type, e.g. [1, 2] and 3: a column holds "
        "either scalars (numbers, strings, dates, ...) or lists or dicts of one shape",
    ),
    (
        _duplicate_column_names,
        "run() returned duplicate column names ['a']: each column of the output needs its own name (rename "
        "them, e.g. with DataFrame.columns = [...])",
    ),
    (
        _duplicate_names_across_mini_batches,
        "run() returned columns ['a', 'b'] in mini-batch 1 and ['a', 'a'] in mini-batch 0: with duplicate column "
        "names the columns of different mini-batches cannot be matched by name (give every column its own name)",
    ),
    (
        _arrow_list_with_other_values,
        "run() returned a list mixing pyarrow Tables/RecordBatches with dict values: return one Table, a list of "
        "Tables/RecordBatches (their rows are the result), or a list of rows without any Table",
    ),
    (
        _nested_arrow_column_as_csv,
        "run() returned column 'v' as list<item: int64>, which append_row_format=csv cannot write (CSV holds "
        "scalar values): use append_row_format='jsonl' or 'parquet', or turn the column into strings",
    ),
    (
        _arrow_tables_that_do_not_join,
        "run() returned 2 pyarrow Tables/RecordBatches whose schemas do not join into one table",
    ),
]


@pytest.mark.parametrize(
    ("produce", "message"), SCHEMA_CASES, ids=[p.__name__.strip("_") for p, _ in SCHEMA_CASES]
)
def test_results_that_cannot_join_the_output_schema(produce: Callable[[], str | None], message: str) -> None:
    problem = produce()
    assert problem is not None
    check_documented(message, problem)

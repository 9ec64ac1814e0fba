"""The report's reader of processed_mini-batches.csv (`load_attempts`: text columns as categoricals, read in
chunks) against a reference reader (the whole file at once, every text cell a string): the same page for
logs with the values that make categoricals differ from text, over random logs and chunk sizes."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from airflow_parallel_run.core.logs import report
from airflow_parallel_run.core.logs.joblogs import ATTEMPT_COLUMNS
from airflow_parallel_run.core.logs.report import ATTEMPTS_CSV, REPORT_COLUMNS, build_report

#: Values whose categories order, fill or join differently from text if the reader gets them wrong: empty
#: cells, pandas' missing-value words, HTML, non-ASCII, and pairs that join to one label ("a/b" + "c",
#: "a" + "b/c").
NODES = ["127.0.0.1", "", "node<b>&amp;", "nœud-é", "a/b", "a", "Z", "NA"]
PROCESSES = ["process001", "process002", "", "b/c", "c", "<i>p</i>", "null", "Ä"]
STATUSES = [
    "RUN_DONE",
    "REUSED",
    "RUN_EXCEPTION",
    "RUN_TIMEOUT",
    "PROCESS_DIED",
    "SPECULATIVE_LOST",
    "",
    "None",
]


def reference_attempts(path: str) -> pd.DataFrame:
    """What the report read before its columns became categoricals: every text cell a string."""
    frame = pd.read_csv(
        path, usecols=lambda name: name in REPORT_COLUMNS, dtype={"Node": str, "Process": str, "Status": str}
    )
    frame["Start"] = pd.to_datetime(frame.pop("Start Time (UTC)"), errors="coerce")
    frame["Elapsed Seconds"] = pd.to_numeric(frame["Elapsed Seconds"], errors="coerce").fillna(0.0)
    frame["End"] = frame["Start"] + pd.to_timedelta(frame["Elapsed Seconds"], unit="s")
    frame["Node"] = frame["Node"].fillna("")
    frame["Process"] = frame["Process"].fillna("")
    frame["Status"] = frame["Status"].fillna("UNKNOWN")
    labels = frame["Node"] + "/" + frame["Process"]
    frame["Label"] = labels.map({label: report._e(label) for label in labels.unique()})
    return frame


def _write_log(logs: Path, rows: int, seed: int) -> None:
    rnd = random.Random(seed)
    path = logs / ATTEMPTS_CSV
    path.parent.mkdir(parents=True)
    plain = rnd.randint(0, rows)  # the first rows hold common values only: later chunks bring new ones
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(ATTEMPT_COLUMNS)
        for i in range(rows):
            odd = i >= plain
            node = rnd.choice(NODES) if odd else "127.0.0.1"
            process = rnd.choice(PROCESSES) if odd else "process001"
            status = rnd.choice(STATUSES) if odd else "RUN_DONE"
            when = (
                ""
                if rnd.random() < 0.05
                else f"2026-01-01 00:{i // 600 % 60:02d}:{i // 10 % 60:02d}.{i % 10}00"
            )
            writer.writerow([i // 2, 1 + i % 2, node, process, when, 3, 3 * (status == "RUN_DONE"), 0,
                             f"{rnd.random():.3f}", "0.001", "0.000", status, "x\ny" if "EXC" in status else "",
                             json.dumps({"files": [f"/in/{i}"]})])  # fmt: skip
    (logs / "job_result.txt").write_text("Job succeeded: test\n")


def _page(logs: Path) -> str:
    return re.sub(r"generated [^<]*", "generated", Path(build_report(str(logs))).read_text())


@pytest.mark.parametrize(
    ("rows", "chunk", "seed"), [(0, 3, 0), (1, 3, 1), (40, 3, 2), (300, 7, 3), (900, 64, 4)]
)
def test_the_report_reads_attempts_as_the_reference_reader_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int, chunk: int, seed: int
) -> None:
    logs = tmp_path / "logs"
    _write_log(logs, rows, seed)
    monkeypatch.setattr(report, "READ_CHUNK_ROWS", chunk)
    page = _page(logs)
    monkeypatch.setattr(report, "load_attempts", reference_attempts)
    assert page == _page(logs)

"""The report of a 100,000-attempt job stays small and bounded: what a page carries per plot does not
grow with the number of attempts (only the counts in it do), and the counts it shows are the log's."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from airflow_parallel_run.core.logs.joblogs import ATTEMPT_COLUMNS
from airflow_parallel_run.core.logs.report import (
    ATTEMPTS_CSV,
    HISTOGRAM_BINS,
    MAX_LINE_POINTS,
    MAX_TIMELINE_ATTEMPTS,
    build_report,
)

ATTEMPTS = 100_000
HEADER = ATTEMPT_COLUMNS
#: What the page may carry besides plotly.js and the plots' bounded data: sections, tables, notes.
PAGE_BUDGET_BYTES = 1_500_000


def _figure(page: str, div_id: str) -> list[dict]:
    """The traces of one plot, as plotly's `Plotly.newPlot("<id>", [traces], ...)` call holds them."""
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert match, f"no plot {div_id}"
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    return list(traces)


def _values(data: list | dict) -> list[float]:
    """A trace's array: a JSON list, or plotly's typed array (`{"dtype", "bdata"}`: base64 of numpy bytes)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


@pytest.fixture(scope="module")
def big_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, pd.DataFrame]:
    logs = tmp_path_factory.mktemp("logs")
    path = logs / ATTEMPTS_CSV
    path.parent.mkdir(parents=True)
    start = pd.Timestamp("2026-01-01 00:00:00")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(ATTEMPTS):
            elapsed = 0.005 + (i % 97) / 1000 + (2.5 if i % 1000 == 0 else 0.0)
            status = "RUN_EXCEPTION" if i % 250 == 0 else "RUN_DONE"
            when = (start + pd.Timedelta(milliseconds=3 * i)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            writer.writerow(
                [i, 1, "127.0.0.1", f"process00{1 + i % 2}", when, 1, int(status == "RUN_DONE"),
                 int(status != "RUN_DONE"), f"{elapsed:.3f}", "0.001", "0.000", status,
                 "boom" if status != "RUN_DONE" else "", json.dumps({"files": [f"/in/{i}.txt"]})]
            )  # fmt: skip
    page = Path(build_report(str(logs))).read_text()
    return page, pd.read_csv(path)


def test_report_of_100k_attempts_stays_small(big_report):
    page, _ = big_report
    assert len(page.encode()) - len(get_plotlyjs().encode()) < PAGE_BUDGET_BYTES


def test_durations_are_binned_and_count_every_attempt(big_report):
    page, attempts = big_report
    traces = _figure(page, "plot-durations")
    assert {t["type"] for t in traces} == {"bar"}
    per_status = {t["name"]: t for t in traces}
    assert set(per_status) == {"RUN_DONE", "RUN_EXCEPTION"}
    for status, trace in per_status.items():
        counts = _values(trace["y"])
        assert len(counts) == HISTOGRAM_BINS
        assert sum(counts) == int((attempts["Status"] == status).sum())  # binned, none lost
    # the bins span every value: the slowest attempts are in the last bin
    widest = max(
        float(x) + float(w) / 2
        for x, w in zip(_values(traces[0]["x"]), _values(traces[0]["width"]), strict=True)
    )
    assert widest >= attempts["Elapsed Seconds"].max() - 1e-6


def test_timeline_and_lines_are_capped(big_report):
    page, _ = big_report
    bars = sum(len(_values(t["x"])) for t in _figure(page, "plot-timeline"))
    assert bars == MAX_TIMELINE_ATTEMPTS
    assert f"Showing the first {MAX_TIMELINE_ATTEMPTS} of {ATTEMPTS} attempts" in page
    for trace in _figure(page, "plot-progress"):
        assert len(_values(trace["x"])) <= MAX_LINE_POINTS + 2

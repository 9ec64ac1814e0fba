"""The report of a 100,000-attempt job stays small and bounded: what a page carries per plot does not
grow with the number of attempts (only the counts in it do), and the counts it shows are the log's."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from airflow_parallel_run.core.logs.joblogs import ATTEMPT_COLUMNS
from airflow_parallel_run.core.logs.report import (
    ATTEMPTS_CSV,
    HISTOGRAM_BINS,
    MAX_LINE_POINTS,
    MAX_MARKERS,
    MAX_TIMELINE_ATTEMPTS,
    build_report,
    plotlyjs,
)
from tests.core.logs.plots import figure, timeline_bars, values

ATTEMPTS = 100_000
HEADER = ATTEMPT_COLUMNS
#: What the page may carry besides plotly.js and the plots' bounded data: sections, tables, notes.
PAGE_BUDGET_BYTES = 1_500_000
#: SVG elements all plots may draw: the open time in a browser follows them. With an element or two per
#: timeline bar and per line marker, this page drew 13,000; as one path per status and unmarked long lines,
#: about 650.
SVG_ELEMENTS_BUDGET = 1500
CHROMIUM = "/usr/bin/chromium"


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
    assert len(page.encode()) - len(plotlyjs().encode()) < PAGE_BUDGET_BYTES


def test_durations_are_binned_and_count_every_attempt(big_report):
    page, attempts = big_report
    traces = figure(page, "plot-durations")
    assert {t["type"] for t in traces} == {"bar"}
    per_status = {t["name"]: t for t in traces}
    assert set(per_status) == {"RUN_DONE", "RUN_EXCEPTION"}
    for status, trace in per_status.items():
        counts = values(trace["y"])
        assert len(counts) == HISTOGRAM_BINS
        assert sum(counts) == int((attempts["Status"] == status).sum())  # binned, none lost
    # the bins span every value: the slowest attempts are in the last bin
    widest = max(
        float(x) + float(w) / 2
        for x, w in zip(values(traces[0]["x"]), values(traces[0]["width"]), strict=True)
    )
    assert widest >= attempts["Elapsed Seconds"].max() - 1e-6


def test_timeline_and_lines_are_capped(big_report):
    page, _ = big_report
    # every attempt shown is named by the hover points (one per attempt, more only along the few bars
    # wider than HOVER_STEP of the span); its bar is in a rectangle, and overlapping bars are merged
    hover = [t for t in figure(page, "plot-timeline") if t.get("hoverinfo") == "text"]
    named = {text.split("<br>")[0] for t in hover for text in t["hovertext"]}
    assert len(named) == MAX_TIMELINE_ATTEMPTS
    assert MAX_TIMELINE_ATTEMPTS <= sum(len(values(t["x"])) for t in hover) <= MAX_TIMELINE_ATTEMPTS * 1.05
    assert 1 <= sum(len(rects) for rects in timeline_bars(page).values()) < MAX_TIMELINE_ATTEMPTS / 10
    assert f"Showing the first {MAX_TIMELINE_ATTEMPTS} of {ATTEMPTS} attempts" in page
    for trace in figure(page, "plot-progress"):
        assert len(values(trace["x"])) <= MAX_LINE_POINTS + 2
        assert trace["mode"] == ("lines" if len(values(trace["x"])) > MAX_MARKERS else "lines+markers")


def test_report_of_100k_attempts_draws_few_svg_elements(big_report, tmp_path):
    """What the browser draws is bounded too: every plot's SVG elements, counted in headless Chromium."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (Debian)")
    sync_api = pytest.importorskip("playwright.sync_api")
    report = tmp_path / "report.html"
    report.write_text(big_report[0], encoding="utf-8")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.as_uri())
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plotly-graph-div')].every(p => p.querySelector('.main-svg'))",
                timeout=30_000,
            )
            drawn = page.eval_on_selector_all(
                ".js-plotly-plot", "plots => plots.map(p => p.querySelectorAll('.main-svg *').length)"
            )
        finally:
            browser.close()
    assert len(drawn) == big_report[0].count("Plotly.newPlot(") == 3  # progress, durations, timeline
    assert sum(drawn) < SVG_ELEMENTS_BUDGET, drawn


def _report_peak_kib(logs: Path) -> int:
    """A fresh process's peak RSS while it builds the report of `logs`, above what it held before (KiB)."""
    probe = (
        "import sys\n"
        "from airflow_parallel_run.core.logs.report import build_report, warm_up\n"
        "def kib(key):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        "warm_up()\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kib('VmRSS:')\n"
        "build_report(sys.argv[1])\n"
        "print(kib('VmHWM:') - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(logs)], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


def test_the_report_of_100k_attempts_holds_little_per_attempt(tmp_path: Path) -> None:
    """The report is built at the end of every job, in the driver: its memory is the driver's peak then.
    It reads only the columns it shows (`REPORT_COLUMNS`), a chunk of rows at a time, and each section
    copies only what it uses, and its node, process, status and label columns are categoricals: 395 bytes
    per attempt at its peak; 620 with those as text, 1,070 when it read every column at once and the
    progress section sorted whole rows."""
    path = tmp_path / ATTEMPTS_CSV
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(ATTEMPTS):
            when = (
                f"2026-01-01 {i // 360_000:02d}:{i // 6000 % 60:02d}:{i // 100 % 60:02d}.{i % 100 * 10:03d}"
            )
            ok = i % 250 != 0
            writer.writerow([i, 1, "127.0.0.1", f"process00{1 + i % 2}", when, 10, 10 * ok, 10 * (not ok),
                             f"{0.005 + i % 97 / 1000:.3f}", "0.001", "0.000", "RUN_DONE" if ok else "RUN_EXCEPTION",
                             "" if ok else "boom", json.dumps({"files": [f"/in/{i}/{j}.txt" for j in range(10)]})])  # fmt: skip
    per_attempt = _report_peak_kib(tmp_path) * 1024 / ATTEMPTS
    assert per_attempt < 500, f"{per_attempt:.0f} bytes per attempt"


def test_the_report_does_not_hold_each_mini_batch_s_files(tmp_path: Path) -> None:
    """Building the report of a job whose mini-batches name many files holds no copy of those names: the
    "Mini-batch Detail" column (every file of every mini-batch) is not read (it was the driver's largest
    memory peak at the end of a 1,000,000-file job)."""

    path = tmp_path / ATTEMPTS_CSV
    path.parent.mkdir(parents=True)
    files = [f"/data/folder/{'x' * 380}-{j:03d}.txt" for j in range(10)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for i in range(10_000):  # about 40 MB of details, each its own
            when = f"2026-01-01 00:{i // 6000:02d}:{i % 60:02d}.{i % 1000:03d}"
            detail = json.dumps({"input_index": 0, "files": [f"{name}.{i}" for name in files]})
            writer.writerow([i, 1, "127.0.0.1", "process001", when, 10, 10, 0, "0.010", "0.001", "0.000",
                             "RUN_DONE", "", detail])  # fmt: skip
    peak_kib = _report_peak_kib(tmp_path)
    size = path.stat().st_size
    assert peak_kib * 1024 < 2 * size, (peak_kib, size)  # 1.2 x without the details, 3.9 x with them

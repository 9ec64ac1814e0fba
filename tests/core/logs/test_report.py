"""The HTML report of a real job's logs: sections, escaping, missing files, and plots rendered in Chromium."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.logs import report as report_module
from airflow_parallel_run.core.logs.report import (
    ATTEMPTS_CSV,
    STATUS_COLOURS,
    _merged_bars,
    build_report,
    parse_error_lines,
    parse_job_result,
    plotlyjs,
)
from airflow_parallel_run.core.worker.monitor import ResourceMonitor
from tests.core.logs.plots import figure, layout, timeline_bars, values

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PLOTS = ["plot-progress", "plot-durations", "plot-timeline", "plot-resources", "plot-process-memory"]
SCRIPT = """
import os
import time

def run(mini_batch):
    for path in mini_batch:
        name = os.path.basename(path)
        if name.startswith("b_raise"):
            raise ValueError(f"bad <input> & 'quoted' in {name}")
        if name.startswith("c_sleep"):
            time.sleep(30)
    return [os.path.basename(p) for p in mini_batch]
"""


@pytest.fixture(scope="module")
def job_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real job on the embedded LocalCluster: 3 good mini-batches, one exception, one timeout."""
    root = tmp_path_factory.mktemp("report-job")
    inputs = root / "in"
    inputs.mkdir()
    for name in ["a0", "a1", "a2", "a3", "a4", "a5", "b_raise0", "b_raise1", "c_sleep0"]:
        (inputs / f"{name}.txt").write_text(name)
    script = root / "score.py"
    script.write_text(textwrap.dedent(SCRIPT))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_PARALLEL_RUN_CACHE", str(root / "cache"))
        summary = run_job(
            ParallelRunConfig(
                entry_script=str(script),
                mini_batch_size=2,
                process_count_per_node=2,
                run_invocation_timeout=2,
                run_max_try=1,
                resource_monitor_interval=0,
            ),
            [FileDataset.from_files(str(inputs))],
            str(root / "out"),
        )
    assert summary["failed_mini_batches"] == 2, summary
    logs = root / "out" / "logs"
    # Monitoring was off: this report must say so.
    no_perf = Path(build_report(str(logs), str(root / "no-perf.html")))
    monitor = ResourceMonitor(str(logs), "127.0.0.1", 1)
    monitor.track(os.getpid(), "process001")
    assert monitor.sample_once() == []
    assert monitor.sample_once() == []
    return {"root": root, "logs": logs, "no_perf": no_perf, "report": Path(build_report(str(logs)))}


def test_report_has_every_section_and_escapes_log_text(job_logs):
    report = job_logs["report"]
    assert report == job_logs["logs"] / "report.html"
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for section in ("summary", "progress", "durations", "timeline", "resources", "errors", "progress-log"):
        assert f'id="{section}"' in page, section
    for plot in PLOTS:
        assert f'id="{plot}"' in page, plot
    assert "Items succeeded" in page and "Mini-batches failed" in page
    assert "RUN_EXCEPTION" in page and "RUN_TIMEOUT" in page
    assert "bad &lt;input&gt; &amp; &#x27;quoted&#x27; in b_raise0.txt" in page
    assert "bad <input>" not in page
    assert "<td>process001</td>" in page and "<td>process002</td>" in page  # per-process table
    # the failed items: linked, one row per item of the two failed mini-batches, error escaped
    assert 'id="failed-items"' in page
    assert '3 line(s) in <a href="sys/job_report/failed_items.jsonl">' in page
    for name in ("b_raise0", "b_raise1", "c_sleep0"):
        assert page.count(f"/in/{name}.txt</td>") == 1, name
    assert "<td>RUN_TIMEOUT</td>" in page
    # Offline: plotly.js is inline, nothing is loaded from elsewhere.
    assert "<script src=" not in page and "<script charset" not in page and "<link " not in page
    assert page.count("Plotly.newPlot(") == len(PLOTS)
    assert "monitoring was off" not in page

    no_perf = job_logs["no_perf"].read_text(encoding="utf-8")
    assert "resource monitoring was off" in no_perf
    assert 'id="plot-resources"' not in no_perf and 'id="plot-timeline"' in no_perf


def _gaps(points: list) -> list:
    """NaN (a typed array's) and null (a JSON list's) alike: both are a gap in plotly.js's line."""
    return [None if point is None or point != point else point for point in points]


def test_the_page_inlines_the_basic_bundle_of_plotlys_version(job_logs):
    """The report inlines plotly.js's basic bundle (kept in the package), not plotly's full one: it must be
    the plotly.js version the installed plotly package was made for (its template and JSON are that
    version's; a plotly upgrade in constraints.txt fails here until plotlyjs/ is replaced too), and it must
    draw every trace type the report uses (the basic bundle has scatter, bar and pie only)."""
    from plotly.offline import get_plotlyjs_version

    bundle = plotlyjs()
    # the npm file unchanged: its digest is the one plotlyjs/README.md records (an edit or a truncated copy
    # in the package would otherwise pass the version line)
    readme = (Path(report_module.__file__).parent / "plotlyjs" / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", readme)
    assert recorded, "plotlyjs/README.md records the bundle's sha256"
    assert hashlib.sha256(bundle.encode("utf-8")).hexdigest() == recorded.group(1)
    assert bundle.startswith(f"/**\n* plotly.js (basic - minified) v{get_plotlyjs_version()}\n")
    page = job_logs["report"].read_text(encoding="utf-8")
    assert bundle in page
    used = {trace["type"] for plot in PLOTS for trace in figure(page, plot)}
    assert used == {"scatter", "bar"}


def test_the_kept_template_is_the_installed_plotlys(job_logs):
    """plotlyjs/plotly_white.json is the template the pinned plotly resolves, key for key and in its order
    (the page's JSON follows the dict's order); every plot of a page carries it; and making a report does
    not import plotly's template classes, which the file is there to avoid."""
    import plotly.io as pio

    report_module._template.cache_clear()
    kept = report_module._template()
    resolved = pio.templates["plotly_white"].to_plotly_json()
    assert json.dumps(kept) == json.dumps(resolved)
    page = job_logs["report"].read_text(encoding="utf-8")
    for plot in PLOTS:
        assert layout(page, plot)["template"] == resolved

    probe = (
        "import sys\n"
        "from airflow_parallel_run.core.logs.report import build_report\n"
        f"build_report({str(job_logs['logs'])!r})\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('plotly.graph_objs.layout'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)


def test_every_plot_carries_the_logs_data(job_logs):
    """Each plot's traces and points, read from the page's `Plotly.newPlot` calls, against the log files:
    the figures are plain dicts that nothing validates, so a plot that lost a trace or its data (and would
    still render, empty) fails here."""
    page = job_logs["report"].read_text(encoding="utf-8")
    logs = job_logs["logs"]
    attempts = pd.read_csv(logs / ATTEMPTS_CSV)
    per_status = attempts["Status"].value_counts().to_dict()
    assert set(per_status) == {"RUN_DONE", "RUN_EXCEPTION", "RUN_TIMEOUT"}
    ok_ids = attempts.loc[attempts["Status"] == "RUN_DONE", "Mini-batch Id"].nunique()
    failed_ids = attempts["Mini-batch Id"].nunique() - ok_ids

    progress = {t["name"]: t for t in figure(page, "plot-progress")}
    assert list(progress) == ["mini-batches succeeded", "mini-batches failed", "attempts finished"]
    for name, done in (("mini-batches succeeded", ok_ids), ("mini-batches failed", failed_ids)):
        trace = progress[name]
        assert values(trace["y"]) == list(range(done + 1)), name  # from the origin's 0, one step per batch
        assert len(values(trace["x"])) == done + 1 and all(isinstance(x, str) for x in trace["x"]), name
    assert values(progress["attempts finished"]["y"]) == list(range(1, len(attempts) + 1))

    durations = figure(page, "plot-durations")
    assert {t["name"]: sum(values(t["y"])) for t in durations} == per_status  # every attempt in a bin
    for trace in durations:
        assert len(values(trace["x"])) == len(values(trace["width"])) == len(values(trace["y"]))
        assert trace["marker"]["color"] == STATUS_COLOURS[trace["name"]]

    # the timeline: every attempt's bar, from its start for its elapsed time (at least a sliver) on its
    # process's row, lies in one rectangle of its status; each rectangle starts at a bar's start, and the
    # rectangles of a row neither overlap nor touch (bars that do are drawn as one)
    bars = timeline_bars(page)
    assert set(bars) == set(per_status)
    ticks = layout(page, "plot-timeline")["yaxis"]
    row_of = dict(zip(ticks["ticktext"], ticks["tickvals"], strict=True))
    assert set(row_of) == {"127.0.0.1/process001", "127.0.0.1/process002"}
    starts = pd.to_datetime(attempts["Start Time (UTC)"])
    attempts["start_ms"] = (starts - pd.Timestamp("1970-01-01")) / pd.Timedelta(milliseconds=1)
    attempts["row"] = (attempts["Node"] + "/" + attempts["Process"]).map(row_of)
    hovers = [t for t in figure(page, "plot-timeline") if t.get("hoverinfo") == "text"]
    for status, rects in bars.items():
        logged = attempts[attempts["Status"] == status]
        for start_ms, row, elapsed in logged[["start_ms", "row", "Elapsed Seconds"]].itertuples(index=False):
            holding = [
                (left, right) for left, right, r in rects if r == row and left - 1e-3 <= start_ms <= right
            ]
            assert len(holding) == 1, (status, start_ms)
            assert holding[0][1] >= start_ms + elapsed * 1000 - 1e-3, (status, start_ms)  # the bar fits
        lefts = set(logged["start_ms"].round(3))
        assert all(round(left, 3) in lefts for left, _, _ in rects), status
        for row in {r for _, _, r in rects}:
            on_row = sorted((left, right) for left, right, r in rects if r == row)
            assert all(a[1] < b[0] for a, b in itertools.pairwise(on_row)), (status, row)
    assert all(t["mode"] == "none" and t["showlegend"] is False for t in hovers)
    for trace in hovers:
        named = {" ".join(text.split("<br>")[0].split()[1::2]) for text in trace["hovertext"]}
        logged = attempts[attempts["Status"] == trace["name"]]
        assert named == {
            f"{mb} {a}" for mb, a in zip(logged["Mini-batch Id"], logged["Attempt"], strict=True)
        }
        for x, y in zip(values(trace["x"]), values(trace["y"]), strict=True):  # every point on a bar
            assert any(s <= x <= e and y == r for s, e, r in bars[trace["name"]]), (x, y)
    for trace in figure(page, "plot-timeline"):
        colour = trace.get("fillcolor") or trace["hoverlabel"]["bgcolor"]
        assert colour == STATUS_COLOURS[trace["name"]]

    samples = pd.read_csv(logs / "perf" / "127.0.0.1" / "node_resource_usage.csv")
    resources = figure(page, "plot-resources")
    assert [(t["name"], t["xaxis"], t["yaxis"], t["showlegend"]) for t in resources] == [
        ("127.0.0.1", "x", "y", True),
        ("127.0.0.1", "x2", "y2", False),
    ]
    for trace, column in zip(resources, ("Cpu Percent", "Memory Used Percent"), strict=True):
        assert _gaps(values(trace["y"])) == _gaps(samples[column].tolist()), column  # a missing sample: a gap

    processes = pd.read_csv(logs / "perf" / "127.0.0.1" / "processes_resource_usage.csv")
    memory = figure(page, "plot-process-memory")
    assert len(memory) == processes.groupby(["Process Name", "Pid"]).ngroups >= 1
    assert sum(len(values(t["y"])) for t in memory) == len(processes)


def test_missing_logs_give_notes_not_a_crash(tmp_path, job_logs):
    empty = tmp_path / "empty-logs"
    empty.mkdir()
    page = Path(build_report(str(empty))).read_text(encoding="utf-8")
    assert "job_result.txt is missing" in page
    assert "processed_mini-batches.csv is missing" in page
    assert "user/error.txt is missing" in page
    assert "sys/job_report/failed_items.jsonl is missing" in page
    assert "Plotly.newPlot(" not in page

    broken = tmp_path / "broken-logs"
    shutil.copytree(job_logs["logs"], broken)
    (broken / "job_result.txt").write_text("Job failed: <killed>\nnot json\n")
    (broken / "sys" / "job_report" / "processed_mini-batches.csv").write_text("garbage\n1,2\n")
    (broken / "perf" / "127.0.0.1" / "node_resource_usage.csv").write_text("no,time,columns\n")
    page = Path(build_report(str(broken), str(tmp_path / "elsewhere" / "r.html"))).read_text(encoding="utf-8")
    assert "Job failed: &lt;killed&gt;" in page and "no summary JSON block" in page
    assert "could not be read" in page
    assert 'id="errors"' in page and "RUN_TIMEOUT" in page


def test_timeline_bars_that_overlap_or_touch_on_a_row_are_one_rectangle():
    # row 0: [0, 5] and [3, 4] overlap, [5, 6] touches them, [8, 9] stands apart; row 1: [3, 4] alone
    starts = np.array([8.0, 3.0, 0.0, 5.0, 3.0])
    ends = np.array([9.0, 4.0, 5.0, 6.0, 4.0])
    rows = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    lefts, rights, of_rows = _merged_bars(starts, ends, rows)
    assert sorted(zip(lefts.tolist(), rights.tolist(), of_rows.tolist(), strict=True)) == [
        (0.0, 6.0, 0.0),
        (3.0, 4.0, 1.0),
        (8.0, 9.0, 0.0),
    ]


def test_parsers():
    headline, summary = parse_job_result(
        'Job succeeded.\nOutput: x\n\n{\n  "status": "succeeded",\n  "a": 1\n}\n'
    )
    assert headline == "Job succeeded." and summary == {"status": "succeeded", "a": 1}
    assert parse_job_result("") == ("", None)
    rows = parse_error_lines(
        "2 x PROCESS_DIED: entry-script process process002 died (mini-batches 3, 4; "
        "full trace: logs/user/error/127.0.0.1/process002.txt)\nsomething else\n"
    )
    assert rows[0] == {
        "count": "2",
        "status": "PROCESS_DIED",
        "message": "entry-script process process002 died",
        "batches": "3, 4",
        "traces": "logs/user/error/127.0.0.1/process002.txt",
    }
    assert rows[1]["message"] == "something else"
    assert parse_error_lines("No errors.\n") == []


def _chromium_missing_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (Debian)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no `playwright install` needed)"
    return None


def test_report_renders_in_headless_chromium(job_logs, tmp_path):
    reason = _chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    remote: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console", lambda message: errors.append(message.text) if message.type == "error" else None
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "request",
                lambda request: None if request.url.startswith("file:") else remote.append(request.url),
            )
            page.goto(job_logs["report"].as_uri())
            for plot in PLOTS:
                page.wait_for_selector(f"#{plot}.js-plotly-plot .main-svg", state="attached", timeout=15_000)
            drawn = page.eval_on_selector_all(
                ".js-plotly-plot",
                """plots => plots.map(p => ({
                    id: p.id,
                    width: p.getBoundingClientRect().width,
                    height: p.getBoundingClientRect().height,
                    traces: p.querySelectorAll('.main-svg .trace').length,
                    marks: p.querySelectorAll('.main-svg .trace path, .main-svg .trace .point').length,
                    fills: p.querySelectorAll('.main-svg .trace path.js-fill').length,
                }))""",
            )
            rows = page.eval_on_selector_all(
                "#plot-timeline .ytick text", "ticks => ticks.map(t => t.textContent)"
            )
            screenshot = tmp_path / "report.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert remote == []
    assert sorted(p["id"] for p in drawn) == sorted(PLOTS)
    for plot in drawn:
        assert plot["width"] > 300 and plot["height"] > 150, plot
        assert plot["traces"] >= 1 and plot["marks"] >= 1, plot
    timeline = next(p for p in drawn if p["id"] == "plot-timeline")
    assert timeline["fills"] == 3  # the bars of RUN_DONE, RUN_EXCEPTION, RUN_TIMEOUT
    assert sorted(rows) == ["127.0.0.1/process001", "127.0.0.1/process002"]
    assert screenshot.stat().st_size > 20_000


def test_prepare_report_loads_plotly_while_the_job_runs(monkeypatch):
    """The driver's background warm-up resolves what the first report needs, and a failure in it stays
    in its thread (the report at the job's end imports again and logs its own error)."""
    from airflow_parallel_run.core.driver.finish import prepare_report
    from airflow_parallel_run.core.logs import report

    report._template.cache_clear()
    thread = prepare_report()
    thread.join(60)
    assert not thread.is_alive() and thread.daemon
    assert report._template.cache_info().currsize == 1

    def broken() -> None:
        raise ImportError("no plotly")

    uncaught: list[object] = []
    monkeypatch.setattr(report, "warm_up", broken)
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    prepare_report().join(60)
    assert uncaught == []

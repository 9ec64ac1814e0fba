"""One self-contained HTML report of a job's logs folder: summary, progress, durations, timeline, resources, errors.

Why: the logs folder explains every failure but is dozens of files; the report is the first thing
to open. It is a single file with plotly.js embedded inline, so it opens offline (no CDN) and can be
attached to a ticket. Every section reads its own log file and says so when that file is missing;
all text that comes from the logs is HTML-escaped.

The plotly.js inlined is plotly's "basic" bundle (scatter, bar and pie: the report draws only scatter and
bar traces), kept in plotlyjs/ at the plotly.js version of the pinned plotly package, not that package's
full bundle: in headless Chromium, parsing and running the full bundle's 4.8 MB took 1.3-2.6 s of every
report's open, the basic bundle's 1.2 MB 0.3-0.45 s (docs/performance.md, "Scale").

The figures are plain dicts of plotly.js's JSON (traces, layout, the "plotly_white" template kept as a file),
rendered by `plotly.io.to_html(validate=False)`, not `go.Figure`s: the report is built at the end of every
job, before the job returns, and plotly's graph_objects validate every property and deep-copy the template
into each figure: for a 16-mini-batch job that was 0.3-0.7 s per report warm and 0.8-1.8 s in a fresh
process (an Airflow task), import included, against 0.1-0.2 s and 0.2-0.7 s as dicts (medians of
interleaved runs, quiet and loaded host; docs/performance.md, "Report build time"). What the page shows is
the same (tests/core/logs/test_report.py checks every plot's traces and points against the logs).
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.io as pio
from plotly.colors import qualitative

from ..attempt import AttemptStatus
from .failed_items import FAILED_ITEMS_FILE

ATTEMPTS_CSV = os.path.join("sys", "job_report", "processed_mini-batches.csv")
MAX_TIMELINE_ATTEMPTS = 5000  # more bars than this make the page slow; the rest are counted, not drawn
MAX_LINE_POINTS = 2000
#: Lines with more points than this are drawn without markers (see `_line_mode`).
MAX_MARKERS = 200
HISTOGRAM_BINS = 40
TOP_ERRORS = 20
#: A colour per status (every one: tests/core/test_attempt_status.py); looked up by the CSV's text too.
STATUS_COLOURS: dict[str, str] = {
    AttemptStatus.RUN_DONE: "#2ca02c",
    AttemptStatus.REUSED: "#17becf",
    AttemptStatus.RUN_EXCEPTION: "#d62728",
    AttemptStatus.RUN_INVALID_RESULT: "#ff9896",
    AttemptStatus.RUN_TIMEOUT: "#ff7f0e",
    AttemptStatus.PROCESS_DIED: "#8c564b",
    AttemptStatus.INIT_TIMEOUT: "#e377c2",
    AttemptStatus.INIT_EXCEPTION: "#9467bd",
    AttemptStatus.LOAD_TIMEOUT: "#bcbd22",
    AttemptStatus.LOAD_EXCEPTION: "#1f77b4",
    AttemptStatus.CANCELLED: "#7f7f7f",
    AttemptStatus.SPECULATIVE_LOST: "#c7c7c7",
    AttemptStatus.SYSTEM_ERROR: "#000000",
}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
PLOT_MARGIN = {"l": 60, "r": 20, "t": 40, "b": 50}
_ISO_TIME = "%Y-%m-%dT%H:%M:%S.%f"
_ERROR_LINE = re.compile(r"^(?P<count>\d+) x (?P<status>[A-Z_]+): (?P<rest>.*)$")
_ERROR_TAIL = re.compile(r"^(?P<message>.*) \(mini-batches (?P<batches>.*?); full trace: (?P<traces>.*)\)$")

CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{padding:16px 24px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:20px;margin:0 0 8px}
h2{font-size:16px;margin:0 0 8px}
section{background:#fff;margin:16px 24px;padding:16px;border:1px solid #ddd;border-radius:6px}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.succeeded{background:#2ca02c}.failed{background:#d62728}.unknown{background:#7f7f7f}
.counts{display:flex;flex-wrap:wrap;gap:12px;margin-top:10px}
.count{background:#f0f2f5;border-radius:6px;padding:6px 12px;min-width:120px}
.count b{display:block;font-size:18px}
.missing{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px}
.note{color:#555;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5}
td.num{text-align:right}
pre{background:#f0f2f5;padding:8px;overflow:auto;font-size:12px;max-height:300px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _missing(what: str) -> str:
    return f'<p class="missing">{_e(what)}</p>'


def _bundled(name: str) -> str:
    """A file of plotlyjs/, beside this module (package data: the report opens offline)."""
    return os.path.join(os.path.dirname(__file__), "plotlyjs", name)


#: plotly's "plotly_white" template as plotly.js's JSON, kept beside plotly.js (see `_template`).
TEMPLATE_FILE = "plotly_white.json"


@functools.cache
def _template() -> dict[str, Any]:
    """plotly's "plotly_white" as the plain dict the page carries, read once per process from plotlyjs/.

    Not `pio.templates["plotly_white"].to_plotly_json()`: resolving a template builds plotly's
    template and layout classes (70 modules), 2.7 MB of the driver's memory for the rest of the process
    (an Airflow task's whole run: the report is warmed up while the job runs), for a dict of 11 KB. The
    file is that dict as the pinned plotly makes it (tests/core/logs/test_report.py compares them, key
    order included; plotlyjs/README.md says how to make it again)."""
    with open(_bundled(TEMPLATE_FILE), encoding="utf-8") as handle:
        template: dict[str, Any] = json.load(handle)
    return template


PLOTLYJS_FILE = "plotly-basic.min.js"


@functools.cache
def plotlyjs() -> str:
    """The plotly.js the page inlines: the basic bundle kept beside this module (package data, so offline)."""
    with open(_bundled(PLOTLYJS_FILE), encoding="utf-8") as handle:
        return handle.read()


def warm_up() -> None:
    """Loads now what the first report in a process loads (plotly's JSON encoder, the template, plotly.js),
    so that a fresh process pays it while its job runs (finish.prepare_report), not at the job's end."""
    _template()
    plotlyjs()


def _figure_html(div_id: str, traces: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    """One plot's div and `Plotly.newPlot` call; the figure is given as plotly.js's JSON, not validated."""
    figure = {"data": traces, "layout": {**layout, "margin": PLOT_MARGIN, "template": _template()}}
    return str(
        pio.to_html(
            figure, full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG, validate=False
        )
    )


def _column(values: pd.Series | np.ndarray) -> list[Any]:
    """A trace's array: times as ISO text, numbers as numbers (a NaN becomes null: a gap in the line)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(series):
        return list(series.dt.strftime(_ISO_TIME).tolist())
    return list(series.tolist())


def _axis_titles(x: str, y: str) -> dict[str, Any]:
    return {"xaxis": {"title": {"text": x}}, "yaxis": {"title": {"text": y}}}


def _marker(status: object) -> dict[str, Any]:
    colour = STATUS_COLOURS.get(str(status))
    return {"marker": {"color": colour}} if colour else {}


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _line_mode(points: int) -> str:
    """Markers show each sample or mini-batch of a short line; on a long one they merge into the line and
    cost an SVG element each: 2,000 markers were half of the progress plot's drawing time in Chromium."""
    return "lines+markers" if points <= MAX_MARKERS else "lines"


def _downsample(frame: pd.DataFrame, limit: int = MAX_LINE_POINTS) -> pd.DataFrame:
    if len(frame) <= limit:
        return frame
    step = -(-len(frame) // limit)
    return pd.concat([frame.iloc[::step], frame.iloc[[-1]]]).drop_duplicates()


# -- inputs --------------------------------------------------------------------------------------------
def parse_job_result(text: str) -> tuple[str, dict[str, Any] | None]:
    """(headline, summary): the file's first line, and the JSON document that is its last block."""
    headline = text.strip().splitlines()[0] if text.strip() else ""
    lines = text.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                summary = json.loads("\n".join(lines[start:]))
            except ValueError:
                continue
            return headline, summary if isinstance(summary, dict) else None
    return headline, None


#: The columns of processed_mini-batches.csv the report reads: the others (each row's "Mini-batch Detail"
#: names every file of its mini-batch, most of the file's bytes) are not read at all.
REPORT_COLUMNS = (
    "Mini-batch Id",
    "Attempt",
    "Node",
    "Process",
    "Start Time (UTC)",
    "Succeeded",
    "Elapsed Seconds",
    "Status",
)

#: Rows of processed_mini-batches.csv parsed at a time.
READ_CHUNK_ROWS = 10_000


def _with_start(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` with their time strings ("Start Time (UTC)") parsed into "Start" (unparseable ones: NaT)."""
    rows["Start"] = pd.to_datetime(rows.pop("Start Time (UTC)"), errors="coerce")
    return rows


def load_attempts(path: str) -> pd.DataFrame:
    """processed_mini-batches.csv with parsed times: Start, End (= start + elapsed), Label (node/process).
    Only `REPORT_COLUMNS`: the report's memory is the driver's peak at a job's end (a job of 100,000
    mini-batches of 10 files held about 200 MB with every column and 100 MB with all but the detail column
    (docs/performance.md, "The plan on disk")). Node, Process, Status and Label are categoricals: a few
    values repeated on every row, a byte a row. As text (pandas' string arrays), parsing them, filling their
    empty cells and joining node and process into labels made loading 100,000 attempts peak 46 MB above its
    start, 21 as categories; the sections read them as they read text (pandas groups only the values seen,
    in the categories' order, which is sorted here as text sorts)."""
    options: dict[str, Any] = {
        "usecols": lambda name: name in REPORT_COLUMNS,
        "dtype": dict.fromkeys(_TEXT_COLUMNS, "category"),
    }
    chunks = []
    # In chunks: the parser's buffers stay those of READ_CHUNK_ROWS rows (the whole file's doubled the
    # peak), and each chunk's time strings become datetimes before the next is read.
    for chunk in pd.read_csv(path, chunksize=READ_CHUNK_ROWS, **options):
        chunks.append(_with_start(chunk))
    if not chunks:
        chunks.append(_with_start(pd.read_csv(path, **options)))
    for column, missing in _TEXT_COLUMNS.items():  # one sorted set of categories, so that concat keeps them
        categories = sorted(set().union(*(chunk[column].cat.categories for chunk in chunks), [missing]))
        for chunk in chunks:
            chunk[column] = chunk[column].cat.set_categories(categories).fillna(missing)
    frame = pd.concat(chunks, ignore_index=True)
    del chunks
    frame["Elapsed Seconds"] = pd.to_numeric(frame["Elapsed Seconds"], errors="coerce").fillna(0.0)
    frame["End"] = frame["Start"] + pd.to_timedelta(frame["Elapsed Seconds"], unit="s")
    frame["Label"] = _labels(frame["Node"], frame["Process"])
    return frame


#: The text columns of `REPORT_COLUMNS` and what an empty cell reads as.
_TEXT_COLUMNS = {"Node": "", "Process": "", "Status": "UNKNOWN"}


def _labels(nodes: pd.Series, processes: pd.Series) -> pd.Series:
    """Each row's "node/process", HTML-escaped, as a categorical made from the pairs that occur (a few
    processes, many rows), not a string per row."""
    width = len(processes.cat.categories)
    pairs = nodes.cat.codes.to_numpy(dtype=np.int64) * width + processes.cat.codes.to_numpy(dtype=np.int64)
    seen, rows = np.unique(pairs, return_inverse=True)
    texts = [
        _e(f"{nodes.cat.categories[pair // width]}/{processes.cat.categories[pair % width]}") for pair in seen
    ]
    names = sorted(set(texts))  # two pairs may read the same ("a/b" + "c", "a" + "b/c"): one label, as text
    code_of = {name: code for code, name in enumerate(names)}
    codes = np.array([code_of[text] for text in texts], dtype=np.int64)[rows.reshape(-1)]
    return pd.Series(pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(names)), index=nodes.index)


def parse_error_lines(text: str) -> list[dict[str, str]]:
    """user/error.txt lines: `N x STATUS: message (mini-batches ...; full trace: ...)`."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "No errors.":
            continue
        match = _ERROR_LINE.match(line)
        if not match:
            rows.append({"count": "", "status": "", "message": line, "batches": "", "traces": ""})
            continue
        rest = match["rest"]
        tail = _ERROR_TAIL.match(rest)
        rows.append(
            {
                "count": match["count"],
                "status": match["status"],
                "message": tail["message"] if tail else rest,
                "batches": tail["batches"] if tail else "",
                "traces": tail["traces"] if tail else "",
            }
        )
    return rows


# -- sections ------------------------------------------------------------------------------------------
def _summary_section(logs_dir: str, attempts: pd.DataFrame | None = None) -> str:
    text = _read_text(os.path.join(logs_dir, "job_result.txt"))
    if text is None:
        return (
            "<header><h1>Parallel run report</h1>"
            + _missing(
                "job_result.txt is missing: the job has not finished (or was killed before it wrote its result)."
            )
            + "</header>"
        )
    headline, summary = parse_job_result(text)
    if summary is None:
        return (
            f"<header><h1>Parallel run report</h1><p>{_e(headline)}</p>"
            + _missing("job_result.txt holds no summary JSON block.")
            + "</header>"
        )
    status = str(summary.get("status", "unknown"))
    badge = status if status in ("succeeded", "failed") else "unknown"
    counts = [
        ("Items", summary.get("total_items")),
        ("Items succeeded", summary.get("succeeded_items")),
        ("Items failed", summary.get("failed_items")),
        ("Mini-batches", summary.get("total_mini_batches")),
        ("Mini-batches succeeded", summary.get("succeeded_mini_batches")),
        ("Mini-batches failed", summary.get("failed_mini_batches")),
        ("Mini-batches reused", summary.get("reused_mini_batches")),
        ("Duration (s)", summary.get("duration_s")),
    ]
    if attempts is not None:  # speculative_execution: attempts that lost the race (not failures)
        lost = int((attempts["Status"] == AttemptStatus.SPECULATIVE_LOST.value).sum())
        if lost:
            counts.append(("Speculative attempts lost", lost))
    tiles = "".join(f'<div class="count">{_e(name)}<b>{_e(value)}</b></div>' for name, value in counts)
    details = "".join(
        f"<tr><th>{_e(key)}</th><td>{_e(summary.get(key))}</td></tr>"
        for key in ("message", "output", "append_row_file", "logs_dir", "cache_key")
        if summary.get(key) is not None
    )
    return (
        f'<header id="summary"><h1>Parallel run report <span class="badge {badge}">{_e(status)}</span></h1>'
        f'<p>{_e(headline)}</p><div class="counts">{tiles}</div>'
        f'<table style="margin-top:10px">{details}</table></header>'
    )


def _progress_section(attempts: pd.DataFrame | None, unavailable: str) -> str:
    body = '<section id="progress"><h2>Progress over time</h2>'
    if attempts is None:
        return body + _missing(unavailable) + "</section>"
    timed = attempts["Start"].notna()  # a mask, not a copy of every column's timed rows
    if not timed.any():
        reused_rows = int((attempts["Status"] == AttemptStatus.REUSED.value).sum())
        return (
            body
            + _missing(f"No attempt ran: {reused_rows} mini-batches were reused from the cache.")
            + "</section>"
        )
    # A mini-batch is done when its first successful attempt ends, or else when its last attempt ends.
    done = attempts.loc[timed, ["Mini-batch Id", "Status", "End"]].sort_values(
        "End"
    )  # the 3 columns it needs
    ok = done[done["Status"] == AttemptStatus.RUN_DONE.value].groupby("Mini-batch Id")["End"].min()
    failed = done[~done["Mini-batch Id"].isin(ok.index)].groupby("Mini-batch Id")["End"].max()
    reused = int(
        attempts.loc[
            attempts["Start"].isna() & (attempts["Status"] == AttemptStatus.REUSED.value), "Mini-batch Id"
        ].nunique()
    )
    traces = []
    origin = attempts["Start"].min()  # NaT skipped
    for name, ends, colour, first in (("succeeded", ok, "#2ca02c", reused), ("failed", failed, "#d62728", 0)):
        series = pd.DataFrame({"End": ends.sort_values().to_numpy()})
        series["Completed"] = range(first + 1, first + len(series) + 1)
        series = _downsample(pd.concat([pd.DataFrame({"End": [origin], "Completed": [first]}), series]))
        traces.append(
            {
                "type": "scatter",
                "x": _column(series["End"]),
                "y": _column(series["Completed"]),
                "mode": _line_mode(len(series)),
                "name": f"mini-batches {name}",
                "line": {"shape": "hv", "color": colour},
            }
        )
    attempts_done = done[["End"]].copy()
    attempts_done["Completed"] = range(1, len(attempts_done) + 1)
    attempts_done = _downsample(attempts_done)
    traces.append(
        {
            "type": "scatter",
            "x": _column(attempts_done["End"]),
            "y": _column(attempts_done["Completed"]),
            "mode": "lines",
            "name": "attempts finished",
            "line": {"shape": "hv", "dash": "dot", "color": "#1f77b4"},
        }
    )
    layout = {"height": 360, **_axis_titles("time (UTC)", "count")}
    untimed = len(attempts) - int(timed.sum())
    note = (
        f'<p class="note">{untimed} attempts have no start time ({reused} reused mini-batches, counted as '
        "succeeded from the start).</p>"
        if untimed
        else ""
    )
    return body + _figure_html("plot-progress", traces, layout) + note + "</section>"


def _durations_section(attempts: pd.DataFrame | None, unavailable: str) -> str:
    body = '<section id="durations"><h2>Mini-batch durations</h2>'
    if attempts is None:
        return body + _missing(unavailable) + "</section>"
    ran = attempts.loc[attempts["Start"].notna(), ["Status", "Elapsed Seconds"]]  # the 2 columns it needs
    if ran.empty:
        return body + _missing("No attempt ran (every mini-batch was reused).") + "</section>"
    # Binned here, not by plotly.js: a histogram trace carries every attempt's value into the page
    # (about 1 MB per 100,000 attempts, binned again at every open); these bars carry HISTOGRAM_BINS counts.
    edges = np.histogram_bin_edges(ran["Elapsed Seconds"].to_numpy(dtype=float), bins=HISTOGRAM_BINS)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    traces = []
    for status, group in ran.groupby("Status"):
        counts, _ = np.histogram(group["Elapsed Seconds"].to_numpy(dtype=float), bins=edges)
        traces.append(
            {
                "type": "bar",
                "x": _column(centres.round(6)),
                "y": _column(counts),
                "width": _column(widths),
                "name": _e(status),
                **_marker(status),
                "hovertemplate": "%{y} attempts of %{x:.3f} s (bin)<extra>%{fullData.name}</extra>",
            }
        )
    layout = {
        "barmode": "stack",
        "bargap": 0,
        "height": 320,
        **_axis_titles("elapsed seconds per attempt", "attempts"),
    }
    stats = ran["Elapsed Seconds"].describe(percentiles=[0.5, 0.9, 0.99])
    note = (
        f'<p class="note">{int(stats["count"])} attempts; median {stats["50%"]:.3f} s, p90 {stats["90%"]:.3f} s, '
        f"p99 {stats['99%']:.3f} s, max {stats['max']:.3f} s.</p>"
    )
    return body + _figure_html("plot-durations", traces, layout) + note + "</section>"


_EPOCH = pd.Timestamp("1970-01-01")
#: A timeline bar's thickness as a share of its row's height (what a bar trace's default bargap gave).
TIMELINE_BAR_SHARE = 0.8
#: A hover point every this share of the timeline's span along a bar (plotly hovers within 20 px of a point).
HOVER_STEP = 0.02


def _merged_bars(
    starts: np.ndarray, ends: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lefts, rights, rows) of the union of the bars [start, end] on each row: bars that overlap or touch
    become one, so a filled path draws the same area with fewer corners."""
    lefts, rights, of_rows = [], [], []
    for row in np.unique(rows):
        on_row = rows == row
        order = np.argsort(starts[on_row], kind="stable")
        s, e = starts[on_row][order], ends[on_row][order]
        reach = np.maximum.accumulate(e)  # the furthest end so far
        first = np.flatnonzero(np.concatenate(([True], s[1:] > reach[:-1])))  # a bar past every earlier one
        lefts.append(s[first])
        rights.append(reach[np.concatenate((first[1:] - 1, [len(s) - 1]))])
        of_rows.append(np.full(len(first), row))
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(of_rows)


def _timeline_section(attempts: pd.DataFrame | None, unavailable: str) -> str:
    """One bar per attempt on its process's row. A status's bars are one filled scatter trace (each bar a
    rectangle: four corners, then a gap), which plotly.js draws as a single SVG path; a bar trace drew an SVG
    element per attempt, and 5,000 of them took 0.4 s of main-thread CPU (0.7-1.1 s of wall time on a
    loaded host) of the report's open in Chromium, the rectangles 0.2 s (docs/performance.md, "Scale").
    Bars of one status that overlap or touch on a row are drawn as one rectangle (`_merged_bars`: the same
    pixels, and with the minimum width a dense timeline's bars overlap: 5,000 no-op attempts on 2 processes
    were 2 rectangles, 0.05 s instead of 0.2 s). Hovering a bar gives its attempt: a second trace per
    status, drawn as nothing (mode "none", so no SVG element either), holds each attempt's text at points
    along its bar, one per HOVER_STEP of the time span, so a pointer anywhere on a bar is near one of them."""
    body = '<section id="timeline"><h2>Per-process timeline</h2>'
    if attempts is None:
        return body + _missing(unavailable) + "</section>"
    ran = attempts.dropna(subset=["Start"]).sort_values("Start")
    ran = ran[ran["Process"] != ""]
    if ran.empty:
        return body + _missing("No attempt ran in an entry-script process.") + "</section>"
    shown = ran.iloc[:MAX_TIMELINE_ATTEMPTS]
    span_ms = max((shown["End"].max() - shown["Start"].min()).total_seconds() * 1000.0, 1.0)
    min_ms = max(span_ms * 0.004, 1.0)  # very short attempts stay visible; hover gives the real time
    labels = sorted(shown["Label"].unique(), reverse=True)  # the first process on the top row
    row_of = {label: row for row, label in enumerate(labels)}
    height = max(220, 40 * len(labels) + 120)
    traces: list[dict[str, Any]] = []
    for status, group in shown.groupby("Status"):
        start_ms = ((group["Start"] - _EPOCH) / pd.Timedelta(milliseconds=1)).to_numpy(dtype=float)
        width_ms = (group["Elapsed Seconds"] * 1000.0).clip(lower=min_ms).to_numpy(dtype=float)
        starts = group["Start"].dt.strftime("%H:%M:%S.%f").str[:-3]  # vectorised: thousands of rows
        hover = [
            f"mini-batch {_e(mb)} attempt {_e(attempt)}<br>{_e(state)}<br>start {start}<br>{elapsed:.3f} s"
            for mb, attempt, state, start, elapsed in zip(
                group["Mini-batch Id"],
                group["Attempt"],
                group["Status"],
                starts,
                group["Elapsed Seconds"],
                strict=True,
            )
        ]
        row = group["Label"].map(row_of).to_numpy(dtype=float)
        lefts, rights, rows = _merged_bars(start_ms, start_ms + width_ms, row)
        x = np.full((len(lefts), 5), np.nan)  # a rectangle's corners, then a gap
        x[:, 0] = x[:, 3] = lefts.round(3)
        x[:, 1] = x[:, 2] = rights.round(3)
        y = np.full((len(lefts), 5), np.nan)
        y[:, 0] = y[:, 1] = rows - TIMELINE_BAR_SHARE / 2
        y[:, 2] = y[:, 3] = rows + TIMELINE_BAR_SHARE / 2
        colour = STATUS_COLOURS.get(str(status))
        traces.append(
            {
                "type": "scatter",
                "mode": "none",
                "fill": "toself",
                "x": _column(x.ravel()),
                "y": _column(y.ravel().round(3)),
                "name": _e(status),
                "legendgroup": _e(status),
                **({"fillcolor": colour} if colour else {}),
                "hoverinfo": "skip",
            }
        )
        # hover: points along each bar (no SVG of their own: mode "none"), one per HOVER_STEP of the span
        steps = np.ceil(width_ms / (span_ms * HOVER_STEP)).astype(int)
        which = np.repeat(np.arange(len(group)), steps)
        nth = np.arange(len(which)) - np.repeat(np.cumsum(steps) - steps, steps)
        traces.append(
            {
                "type": "scatter",
                "mode": "none",
                "x": _column((start_ms[which] + (nth + 0.5) * width_ms[which] / steps[which]).round(3)),
                "y": _column(row[which]),
                "name": _e(status),
                "legendgroup": _e(status),
                "showlegend": False,
                "hovertext": [hover[i] for i in which],
                "hoverinfo": "text",
                **({"hoverlabel": {"bgcolor": colour}} if colour else {}),
            }
        )
    layout = {
        "height": height,
        "hovermode": "closest",
        "xaxis": {"type": "date", "title": {"text": "time (UTC)"}},
        "yaxis": {
            "title": {"text": "node/process"},
            "tickvals": list(range(len(labels))),
            "ticktext": labels,
            "range": [-0.5, len(labels) - 0.5],
            "zeroline": False,
        },
    }
    note = ""
    if len(ran) > len(shown):
        note = f'<p class="note">Showing the first {len(shown)} of {len(ran)} attempts.</p>'
    return body + _figure_html("plot-timeline", traces, layout) + note + _process_table(ran) + "</section>"


def _process_table(ran: pd.DataFrame) -> str:
    """Per process totals (Azure's process_summary.csv): uneven busy time means skewed mini-batches."""
    grouped = ran.groupby(["Node", "Process"]).agg(
        attempts=("Status", "size"),
        ok=("Status", lambda s: int((s == AttemptStatus.RUN_DONE.value).sum())),
        items=("Succeeded", "sum"),
        busy=("Elapsed Seconds", "sum"),
    )
    rows = "".join(
        f"<tr><td>{_e(r.Node)}</td><td>{_e(r.Process)}</td><td class=num>{int(r.attempts)}</td>"
        f"<td class=num>{int(r.attempts - r.ok)}</td><td class=num>{_e(r['items'])}</td>"
        f"<td class=num>{r.busy:.3f}</td></tr>"
        for _, r in grouped.reset_index().iterrows()
    )
    return (
        "<table><tr><th>Node</th><th>Process</th><th>Attempts</th><th>Failed attempts</th>"
        f"<th>Items succeeded</th><th>Busy seconds</th></tr>{rows}</table>"
    )


#: Two rows sharing the time axis, each titled: what plotly's make_subplots(rows=2, cols=1, shared_xaxes=True,
#: vertical_spacing=0.08, subplot_titles=...) lays out, written down (make_subplots builds validated objects).
_RESOURCES_LAYOUT: dict[str, Any] = {
    "height": 480,
    "xaxis": {"anchor": "y", "domain": [0.0, 1.0], "matches": "x2", "showticklabels": False},
    "yaxis": {"anchor": "x", "domain": [0.54, 1.0], "range": [0, 105]},
    "xaxis2": {"anchor": "y2", "domain": [0.0, 1.0]},
    "yaxis2": {"anchor": "x2", "domain": [0.0, 0.46], "range": [0, 105]},
    "annotations": [
        {"font": {"size": 16}, "showarrow": False, "text": text, "x": 0.5, "xanchor": "center", "xref": "paper",
         "y": y, "yanchor": "bottom", "yref": "paper"}
        for text, y in (("CPU %", 1.0), ("Memory used %", 0.46))
    ],
}  # fmt: skip


def _resources_section(logs_dir: str) -> str:
    body = '<section id="resources"><h2>CPU and memory per node</h2>'
    perf = os.path.join(logs_dir, "perf")
    nodes = (
        sorted(n for n in os.listdir(perf) if os.path.isdir(os.path.join(perf, n)))
        if os.path.isdir(perf)
        else []
    )
    frames = []
    for node in nodes:
        path = os.path.join(perf, node, "node_resource_usage.csv")
        if os.path.isfile(path):
            try:
                frame = pd.read_csv(path)
                frame["Time"] = pd.to_datetime(frame["Utc Time"], errors="coerce")
                frames.append((node, frame.dropna(subset=["Time"]).sort_values("Time")))
            except (ValueError, KeyError, OSError) as exc:
                body += _missing(f"perf/{node}/node_resource_usage.csv could not be read: {exc}")
    if not frames:
        return (
            body
            + _missing(
                "No perf/<node>/node_resource_usage.csv: resource monitoring was off "
                "(resource_monitor_interval = 0) or the job ended before the first sample."
            )
            + "</section>"
        )
    traces = []
    palette = qualitative.Plotly
    for number, (node, frame) in enumerate(frames):
        frame = _downsample(frame)
        for row, column in ((1, "Cpu Percent"), (2, "Memory Used Percent")):
            traces.append(
                {
                    "type": "scatter",
                    "x": _column(frame["Time"]),
                    "y": _column(pd.to_numeric(frame[column], errors="coerce")),
                    "mode": _line_mode(len(frame)),
                    "name": _e(node),
                    "legendgroup": _e(node),
                    "showlegend": row == 1,
                    "line": {"color": palette[number % len(palette)]},
                    "xaxis": "x" if row == 1 else "x2",
                    "yaxis": "y" if row == 1 else "y2",
                }
            )
    html_out = body + _figure_html("plot-resources", traces, _RESOURCES_LAYOUT)
    return html_out + _process_memory(perf, nodes) + "</section>"


def _process_memory(perf: str, nodes: list[str]) -> str:
    """RSS per entry-script process: a steady climb is the usual sign of a leak before an OOM kill."""
    traces = []
    for node in nodes:
        path = os.path.join(perf, node, "processes_resource_usage.csv")
        if not os.path.isfile(path):
            continue
        try:
            frame = pd.read_csv(path, dtype={"Process Name": str})
        except (ValueError, OSError):
            continue
        frame["Time"] = pd.to_datetime(frame["Utc Time"], errors="coerce")
        for (name, pid), group in frame.dropna(subset=["Time"]).groupby(["Process Name", "Pid"]):
            group = _downsample(group.sort_values("Time"))
            traces.append(
                {
                    "type": "scatter",
                    "x": _column(group["Time"]),
                    "y": _column(group["Rss (MB)"]),
                    "mode": _line_mode(len(group)),
                    "name": _e(f"{node}/{name} ({pid})"),
                }
            )
    if not traces:
        return '<p class="note">No per-process samples (perf/&lt;node&gt;/processes_resource_usage.csv).</p>'
    layout = {
        "height": 320,
        "title": {"text": "Entry-script process memory (RSS, MB)"},
        "yaxis": {"title": {"text": "MB"}},
        "showlegend": True,
    }
    return _figure_html("plot-process-memory", traces, layout)


def _errors_section(logs_dir: str) -> str:
    body = '<section id="errors"><h2>Top errors</h2>'
    text = _read_text(os.path.join(logs_dir, "user", "error.txt"))
    if text is None:
        return body + _missing("user/error.txt is missing.") + "</section>"
    rows = parse_error_lines(text)
    if not rows:
        return body + "<p>No errors.</p></section>"
    cells = "".join(
        f"<tr><td class=num>{_e(r['count'])}</td><td>{_e(r['status'])}</td><td>{_e(r['message'])}</td>"
        f"<td>{_e(r['batches'])}</td><td>{_e(r['traces'])}</td></tr>"
        for r in rows[:TOP_ERRORS]
    )
    more = (
        f'<p class="note">{len(rows) - TOP_ERRORS} more in user/error.txt.</p>'
        if len(rows) > TOP_ERRORS
        else ""
    )
    return (
        body
        + "<table><tr><th>Count</th><th>Status</th><th>Error</th><th>Mini-batches</th><th>Full trace</th></tr>"
        + cells
        + "</table>"
        + more
        + "</section>"
    )


def _item_label(item: Mapping[str, Any]) -> str:
    """A failed item in a few words: its file and slice, or a piece's fields."""
    if "file" in item:
        where = (
            f" bytes {item['bytes'][0]}-{item['bytes'][1]}"
            if "bytes" in item
            else f" row groups {item['row_groups']}"
            if "row_groups" in item
            else ""
        )
        row = f" row {item['row']}" if item.get("row") is not None else ""  # a row run() marked failed
        return f"{item['file']}{where}{row}"
    return ", ".join(f"{key}={value}" for key, value in item.items())


def _certainty(line: Mapping[str, Any]) -> str:
    """Whether the item surely failed, or was one of a mini-batch whose run() dropped some items."""
    if line.get("certain"):
        return "yes"
    return f"maybe: {line.get('mini_batch_failed')} of its mini-batch's {line.get('mini_batch_items')} items failed"


def _failed_items_section(logs_dir: str) -> str:
    """The first lines of sys/job_report/failed_items.jsonl, linked (what --rerun-failed runs again)."""
    body = '<section id="failed-items"><h2>Failed items</h2>'
    text = _read_text(os.path.join(logs_dir, *FAILED_ITEMS_FILE.split("/")))
    if text is None:
        return body + _missing(f"{FAILED_ITEMS_FILE} is missing.") + "</section>"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not lines:
        return body + "<p>No item failed.</p></section>"
    cells = "".join(
        f"<tr><td>{_e(_item_label(line.get('item') or {}))}</td><td class=num>{_e(line.get('mini_batch'))}</td>"
        f"<td>{_e(line.get('status'))}</td><td>{_e(_certainty(line))}</td>"
        f"<td>{_e(line.get('error'))}</td></tr>"
        for line in lines[:TOP_ERRORS]
    )
    link = f'<a href="{_e(FAILED_ITEMS_FILE)}">{_e(FAILED_ITEMS_FILE)}</a>'
    return (
        body + f"<p>{len(lines)} line(s) in {link}; re-run only them with <code>airflow-parallel-run run "
        "--rerun-failed &lt;output folder&gt;</code> or <code>rerun_failed=True</code>.</p>"
        + "<table><tr><th>Item</th><th>Mini-batch</th><th>Status</th><th>Failed</th><th>Error</th></tr>"
        + cells
        + "</table>"
        + (
            f'<p class="note">{len(lines) - TOP_ERRORS} more in {link}.</p>'
            if len(lines) > TOP_ERRORS
            else ""
        )
        + "</section>"
    )


def _progress_log_section(logs_dir: str) -> str:
    body = '<section id="progress-log"><h2>Progress log (last lines)</h2>'
    text = _read_text(os.path.join(logs_dir, "job_progress_overview.txt"))
    if text is None:
        return body + _missing("job_progress_overview.txt is missing.") + "</section>"
    tail = "\n".join(text.splitlines()[-30:])
    return body + f"<pre>{_e(tail)}</pre></section>"


def _guarded(name: str, build: Callable[[], str]) -> str:
    """A section that fails to build says so; the rest of the report is still written."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a malformed log file must not lose the whole report
        return (
            f'<section id="{name}"><h2>{_e(name)}</h2>'
            + _missing(f"could not build: {type(exc).__name__}: {exc}")
            + "</section>"
        )


def build_report(logs_dir: str, target: str | None = None) -> str:
    """Writes the HTML report of a local logs folder (default `<logs_dir>/report.html`); returns its path."""
    logs_dir = os.path.abspath(logs_dir)
    target = target or os.path.join(logs_dir, "report.html")
    attempts: pd.DataFrame | None = None
    attempts_path = os.path.join(logs_dir, ATTEMPTS_CSV)
    unavailable = f"{ATTEMPTS_CSV} is missing: no attempt was recorded."
    if os.path.isfile(attempts_path):
        try:
            attempts = load_attempts(attempts_path)
        except (ValueError, KeyError, OSError) as exc:
            unavailable = f"{ATTEMPTS_CSV} could not be read: {type(exc).__name__}: {exc}"
    sections = [
        _guarded("summary", lambda: _summary_section(logs_dir, attempts)),
        _guarded("progress", lambda: _progress_section(attempts, unavailable)),
        _guarded("durations", lambda: _durations_section(attempts, unavailable)),
        _guarded("timeline", lambda: _timeline_section(attempts, unavailable)),
        _guarded("resources", lambda: _resources_section(logs_dir)),
        _guarded("errors", lambda: _errors_section(logs_dir)),
        _guarded("failed-items", lambda: _failed_items_section(logs_dir)),
        _guarded("progress-log", lambda: _progress_log_section(logs_dir)),
    ]
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Parallel run report - {_e(os.path.basename(os.path.dirname(logs_dir)) or logs_dir)}</title>"
        f"<style>{CSS}</style>"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f'<script type="text/javascript">{plotlyjs()}</script></head><body>'
        + "".join(sections)
        + f'<p class="note" style="margin:16px 24px">Logs: {_e(logs_dir)} &middot; generated {generated}</p>'
        "</body></html>\n"
    )
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    # a file name that is not UTF-8 (a failed item, an error naming it) is shown escaped, never an error
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(page)
    os.replace(tmp, target)
    return target

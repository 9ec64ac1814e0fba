"""The plots of a report page as the browser gets them: each `Plotly.newPlot("<id>", [traces], ...)` call."""

from __future__ import annotations

import base64
import json
import re

import numpy as np


def figure(page: str, div_id: str) -> list[dict]:
    """The traces of one plot, as plotly's `Plotly.newPlot("<id>", [traces], ...)` call holds them."""
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert match, f"no plot {div_id}"
    traces, _ = json.JSONDecoder().raw_decode(page, match.end())
    return list(traces)


def layout(page: str, div_id: str) -> dict:
    """The layout of one plot: the argument after the traces in its `Plotly.newPlot` call."""
    match = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert match, f"no plot {div_id}"
    decoder = json.JSONDecoder()
    _, end = decoder.raw_decode(page, match.end())
    rest = re.match(r"\s*,\s*", page[end:])
    assert rest, f"no layout after the traces of {div_id}"
    figure_layout, _ = decoder.raw_decode(page, end + rest.end())
    return dict(figure_layout)


def _gap(value: object) -> bool:
    return value is None or value != value  # null in a JSON list, NaN in a typed array


def timeline_bars(page: str) -> dict[str, list[tuple[float, float, float]]]:
    """The timeline's rectangles per status, as (left ms, right ms, row): each filled trace holds a
    rectangle per bar, or per run of bars that overlap or touch on a row (corners left-right-right-left at
    row -/+ half a bar, then a gap)."""
    bars: dict[str, list[tuple[float, float, float]]] = {}
    for trace in figure(page, "plot-timeline"):
        if trace.get("fill") != "toself":
            continue
        x, y = values(trace["x"]), values(trace["y"])
        assert len(x) == len(y) and len(x) % 5 == 0, trace["name"]
        rows = bars.setdefault(trace["name"], [])
        for i in range(0, len(x), 5):
            assert _gap(x[i + 4]) and _gap(y[i + 4])  # the gap between two rectangles
            assert x[i] == x[i + 3] < x[i + 1] == x[i + 2], x[i : i + 5]
            assert y[i] == y[i + 1] < y[i + 2] == y[i + 3], y[i : i + 5]
            rows.append((x[i], x[i + 1], (y[i] + y[i + 2]) / 2))
    return bars


def values(data: list | dict) -> list:
    """A trace's array: a JSON list, or plotly's typed array (`{"dtype", "bdata"}`: base64 of numpy bytes)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)

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


def values(data: list | dict) -> list:
    """A trace's array: a JSON list, or plotly's typed array (`{"dtype", "bdata"}`: base64 of numpy bytes)."""
    if isinstance(data, dict):
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)

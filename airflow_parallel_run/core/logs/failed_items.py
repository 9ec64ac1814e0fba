"""`logs/sys/job_report/failed_items.jsonl`: the job's failed input items as data, one JSON object a line.

Every job writes it (empty when nothing failed, so a reader can tell "nothing failed" from "not written"),
in plan order. A line names one input item as the planner knows it, so that a re-run
(`--rerun-failed`, `rerun_failed=True`, see core/reuse/rerun.py) can address exactly it:

- file input: `{"file": URL}`;
- tabular files: the slice the rows came from, `{"file": URL, "bytes": [start, end], "rows": N,
  "first_line": L}` (csv/jsonl) or `{"file": URL, "row_groups": [...], "rows": N}` (parquet);
- other sources: the piece's own description (a SQL input's key range: database without credentials,
  relation, key columns, lower/upper bounds, rows).

Beside it: `mini_batch` (its index), `input_index`, `status` (the final `AttemptStatus`; for a mini-batch the
job stopped before it finished, its last failed attempt's, else `CANCELLED`), `error` (the first line of the error), `attempts`, and
`mini_batch_items`/`mini_batch_failed` (items of the mini-batch and how many of them failed).

What the engine knows of a failure: an attempt that raised, timed out or died fails every item of its
mini-batch (`certain: true` on each). A run() that returned one entry per item with some of them exceptions
or `ItemFailed` markers (core/output/results.py) failed exactly those: each is listed with `certain: true`,
its own error, and `position` (its index in the mini-batch; a tabular item is its slice plus `row`, 0-based
within the slice), and a re-run runs only them. A run() that returned fewer results than it got items (the
Azure contract) failed `mini_batch_failed` of them, but said nothing of which: every item of such a
mini-batch is listed with `certain: false`, and a re-run runs that mini-batch whole (its new result
replaces the old one, so each item is still in the output exactly once).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from ..attempt import AttemptResult, AttemptStatus
from ..minibatch import MiniBatch

#: Where the failed items are, relative to the logs folder.
FAILED_ITEMS_FILE = "sys/job_report/failed_items.jsonl"


def items_of(mb: MiniBatch) -> list[dict[str, Any]]:
    """The input items of a mini-batch, as the planner addresses them (never credentials)."""
    if mb.files:
        return [{"file": f.url} for f in mb.files]
    if mb.slices:
        items: list[dict[str, Any]] = []
        for s in mb.slices:
            if s.format == "parquet":
                items.append({"file": s.url, "row_groups": list(s.row_groups), "rows": s.rows})
            else:
                item: dict[str, Any] = {"file": s.url, "bytes": [s.start, s.end], "rows": s.rows}
                if s.first_line is not None:
                    item["first_line"] = s.first_line
                items.append(item)
        return items
    return [dict(p.describe()) for p in mb.pieces]


def item_at(mb: MiniBatch, position: int) -> dict[str, Any]:
    """The input item at `position` of a mini-batch (the index of its entry in run()'s list, or of its row
    in run()'s DataFrame): a file, or a row of a slice (`row`: 0-based within the slice)."""
    items = items_of(mb)
    if mb.files:
        return items[position]
    rows = [int(s.rows) for s in mb.slices] if mb.slices else [int(i.get("rows", 0) or 0) for i in items]
    offset = 0
    for item, count in zip(items, rows, strict=True):
        if position < offset + count:
            return {**item, "row": position - offset}
        offset += count
    return {**(items[-1] if items else {}), "row": None}  # planned counts that miss it: position says which


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def failed_item_lines(
    mini_batches: Iterable[MiniBatch],
    failures: Mapping[int, AttemptResult],
    finished: AbstractSet[int],
    stop_reason: str | None,
    attempted: Mapping[int, AttemptResult] | None = None,
) -> Iterator[dict[str, Any]]:
    """The lines of failed_items.jsonl, in plan order: the items of every mini-batch that failed (whole or in
    part) and of every one the job stopped before it finished. `attempted`: the last failed attempt of
    mini-batches (a mini-batch that did not finish says how its last attempt failed, e.g. awaiting a retry)."""
    for mb in mini_batches:
        result = failures.get(mb.index)
        if result is None and mb.index in finished:
            continue
        last = (attempted or {}).get(mb.index) if result is None else None
        stopped = f"the job stopped ({first_line(stop_reason or 'it ended early')})"
        if last is not None:  # failed an attempt, and the job stopped before another one ended
            status, error, attempts, total, failed = (
                last.status,
                f"{first_line(last.error)} (not finished: {stopped})",
                last.attempt,
                mb.items,
                mb.items,
            )
        elif result is None:  # never finished: the job stopped (a threshold, a cancel) before it did
            status, error, attempts, total, failed = (
                AttemptStatus.CANCELLED,
                f"not finished: {stopped}",
                0,
                mb.items,
                mb.items,
            )
        else:
            total = result.total
            failed = result.total if not result.ok else result.failed
            status, attempts = result.status, result.attempt
            error = (
                first_line(result.error)
                if not result.ok
                else (
                    f"run() returned {result.succeeded} results for {result.total} items: {failed} failed, "
                    "which ones run() did not say"
                )
            )
        if result is not None and result.ok and result.item_errors:  # run() said which items failed
            for position, item_error in result.item_errors:
                yield {
                    "mini_batch": mb.index,
                    "input_index": mb.input_index,
                    "item": item_at(mb, position),
                    "position": position,
                    "status": str(status),
                    "error": item_error,
                    "attempts": attempts,
                    "mini_batch_items": total,
                    "mini_batch_failed": failed,
                    "certain": True,
                }
            if len(result.item_errors) == failed:
                continue
        certain = result is None or not result.ok
        for item in items_of(mb):
            yield {
                "mini_batch": mb.index,
                "input_index": mb.input_index,
                "item": item,
                "status": str(status),
                "error": error,
                "attempts": attempts,
                "mini_batch_items": total,
                "mini_batch_failed": failed,
                "certain": certain,
            }


def write_failed_items(log_root: str, lines: Iterable[Mapping[str, Any]]) -> int:
    """Writes the file (atomically: a reader sees the whole list or none); returns how many lines."""
    path = os.path.join(log_root, *FAILED_ITEMS_FILE.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for line in lines:  # a plan kept on disk is read back meanwhile: that may fail
                handle.write(json.dumps(line, ensure_ascii=True) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return count


def read_failed_items(
    logs_url: str, storage_options: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The lines of a job's failed_items.jsonl (a local logs folder or a URL). Raises FileNotFoundError
    when the job wrote none, ValueError when a line is not a JSON object."""
    import fsspec

    url = f"{str(logs_url).rstrip('/')}/{FAILED_ITEMS_FILE}"
    with fsspec.open(url, "r", encoding="utf-8", **dict(storage_options or {})) as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    if not all(isinstance(line, dict) and isinstance(line.get("mini_batch"), int) for line in lines):
        raise ValueError(f"{url} holds a line that is not a failed item")
    return lines

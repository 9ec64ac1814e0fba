"""The error table of a job: its failed attempts, read from `processed_mini-batches.csv`.

The CSV has one row per attempt (10,000 mini-batches → 10,000+ rows with their input lists); the page
asks for one page of failed attempts at a time, so the CSV is read once as a stream, only failed
attempts are kept (with a short label of their inputs), and the result is cached until the file
changes (its size and mtime/ETag).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any

from airflow_parallel_run.core.attempt import AttemptStatus
from airflow_parallel_run.ui.files import ATTEMPTS_FILE, JobFiles

OK_STATUSES = frozenset(status.value for status in AttemptStatus if status.ok)
CACHE_SIZE = 16
MAX_MESSAGE = 500
_HEADER = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? mini-batch (\d+) attempt (\d+) ")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a mini-batch of many files has a long detail cell


@dataclass
class FailedAttempt:
    mini_batch: int
    attempt: int
    status: str
    message: str
    items: int
    inputs: list[str]
    input_count: int
    node: str
    process: str
    trace_file: str | None
    final: bool = False  # the mini-batch's last attempt, and it never succeeded

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _inputs(detail: str) -> tuple[list[str], int]:
    """Up to three input names of a mini-batch (files, or tabular slices) and how many there are."""
    try:
        doc = json.loads(detail) if detail else {}
    except ValueError:
        return [], 0
    if not isinstance(doc, dict):
        return [], 0
    names: list[str] = []
    files = doc.get("files")
    if isinstance(files, list):
        names = [str(f) for f in files]
    slices = doc.get("slices")
    if isinstance(slices, list):
        for piece in slices:
            if isinstance(piece, dict):
                if piece.get("format") == "parquet":
                    names.append(f"{piece.get('url')} row groups {piece.get('row_groups')}")
                else:
                    names.append(f"{piece.get('url')} bytes {piece.get('start')}-{piece.get('end')}")
    return names[:3], len(names)


def read_failed_attempts(files: JobFiles, path: str) -> list[FailedAttempt]:
    """Every failed attempt in the attempts CSV at `path`, by mini-batch and attempt, with `final` set."""
    failed: list[FailedAttempt] = []
    succeeded: set[int] = set()
    last_attempt: dict[int, int] = {}
    with files.open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        for row in csv.DictReader(text):
            try:
                index = int(row.get("Mini-batch Id") or "")
                attempt = int(row.get("Attempt") or 0)
            except ValueError:
                continue
            status = row.get("Status") or ""
            last_attempt[index] = max(attempt, last_attempt.get(index, 0))
            if status in OK_STATUSES:
                succeeded.add(index)
                continue
            if status in (AttemptStatus.CANCELLED.value, AttemptStatus.SPECULATIVE_LOST.value):
                continue
            node, process = row.get("Node") or "", row.get("Process") or ""
            message_lines = (row.get("Error Message") or status).splitlines()
            inputs, count = _inputs(row.get("Mini-batch Detail") or "")
            try:
                items = int(row.get("Total") or 0)
            except ValueError:
                items = 0
            failed.append(
                FailedAttempt(
                    mini_batch=index,
                    attempt=attempt,
                    status=status,
                    message=(message_lines[0] if message_lines else status)[:MAX_MESSAGE],
                    items=items,
                    inputs=inputs,
                    input_count=count,
                    node=node,
                    process=process,
                    trace_file=f"user/error/{node}/{process}.txt" if node and process else None,
                )
            )
    for entry in failed:
        entry.final = entry.mini_batch not in succeeded and entry.attempt == last_attempt[entry.mini_batch]
    failed.sort(key=lambda f: (f.mini_batch, f.attempt))
    return failed


class AttemptsCache:
    """Parsed failed attempts by file signature; a changed (growing) CSV is read again."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._entries: OrderedDict[Hashable, list[FailedAttempt]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def failed_attempts(self, files: JobFiles) -> list[FailedAttempt]:
        path = files.log_path(ATTEMPTS_FILE)
        key = files.signature(path)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        parsed = read_failed_attempts(files, path)
        with self._lock:
            self._entries[key] = parsed
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return parsed


def trace_section(files: JobFiles, trace_file: str, mini_batch: int, attempt: int) -> str | None:
    """The block of a process's trace file written for one attempt (header line to the next header)."""
    path = files.log_path(trace_file)
    lines: list[str] = []
    inside = False
    with files.open(path) as raw:
        for line in io.TextIOWrapper(raw, encoding="utf-8", errors="replace"):
            match = _HEADER.match(line)
            if match:
                if inside:
                    break
                inside = (int(match.group(1)), int(match.group(2))) == (mini_batch, attempt)
            if inside:
                lines.append(line)
    return "".join(lines).rstrip() + "\n" if lines else None

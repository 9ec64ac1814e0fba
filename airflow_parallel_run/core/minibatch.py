"""Mini-batch descriptors: small, picklable descriptions of a slice of input (never the data itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FileRef:
    """One input file. `identity` is the store's content identity (ETag, md5, ...) or '' for local files."""

    url: str
    size: int | None = None
    identity: str = ""


@dataclass(frozen=True)
class TabularSlice:
    """Part of one tabular file.

    csv/jsonl: bytes [start, end) hold whole records; csv bytes [0, header_end) hold the header row,
    applied to every slice. parquet: `row_groups` lists the row groups read (start/end unused).
    `rows` is the record count found at planning time. `first_line` (csv/jsonl) is the 1-based line of the
    file on which byte `start` lies, so read errors can name lines of the file; None for parquet and for
    slices planned before it was recorded. It is not part of the reuse-cache key (start/end/header_end are).
    """

    url: str
    format: str
    start: int = 0
    end: int = 0
    header_end: int = 0
    row_groups: tuple[int, ...] = ()
    rows: int = 0
    first_line: int | None = None


@dataclass(frozen=True)
class MiniBatch:
    """One unit of work: a run() call. `input_index` points at the job's inputs (storage options, read options)."""

    index: int
    kind: str  # "file" or "tabular"
    input_index: int
    items: int
    files: tuple[FileRef, ...] = ()
    slices: tuple[TabularSlice, ...] = ()
    partition_key_value: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What `mini_batch_context.dataset` shows and what logs print for this mini-batch (with its
        partition key values, so processed_mini-batches.csv tells which partition each row scored)."""
        keyed = {"partition_key_value": dict(self.partition_key_value)} if self.partition_key_value else {}
        if self.kind == "file":
            return {"input_index": self.input_index, "files": [f.url for f in self.files], **keyed}
        return {
            **keyed,
            "input_index": self.input_index,
            "slices": [
                {
                    "url": s.url,
                    "format": s.format,
                    "start": s.start,
                    "end": s.end,
                    "row_groups": list(s.row_groups),
                }
                for s in self.slices
            ],
        }

    def label(self) -> str:
        """Short human description: first file/slice and how many more."""
        refs = [f.url for f in self.files] or [
            f"{s.url}[{s.start}:{s.end}]" if s.format != "parquet" else f"{s.url}{list(s.row_groups)}"
            for s in self.slices
        ]
        more = f" (+{len(refs) - 1} more)" if len(refs) > 1 else ""
        return (refs[0] if refs else "<empty>") + more

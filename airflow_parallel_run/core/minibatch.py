"""Mini-batch descriptors: small, picklable descriptions of a slice of input (never the data itself).

A mini-batch names its units: files (`FileRef`), byte ranges or row groups of tabular files
(`TabularSlice`), or, for sources that are neither, pieces (`Piece`: a key range of a table, a page of
an API). Fingerprints, cache keys, manifests and reuse explanations are keyed by those units
(`MiniBatch.units`), and logs describe a mini-batch through them, so nothing downstream needs to know
which source planned it.

The descriptors are slotted dataclasses (no per-instance `__dict__`): a planned job holds one `FileRef`
per input file, and a million of them with a dict each cost about 100 MB more.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass type, None for any other type (looked up once per type)."""
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None


def _reduce(descriptor: Any) -> tuple[type, tuple[Any, ...]]:
    """`__reduce__` of the descriptors: the class and its fields in order. A slotted dataclass pickles
    through `dataclasses`' Python `__getstate__` (it lists the fields each time): 70 us per mini-batch of
    10 files, where a streaming job's driver pickles every mini-batch it plans (core/plan/store.py) and
    Dask pickles each one it sends; this is the C pickler's work only."""
    cls: type = type(descriptor)
    return cls, tuple(getattr(descriptor, name) for name in _field_names(cls) or ())


@dataclass(frozen=True, slots=True)
class FileRef:
    """One input file. `identity` is the store's content identity (ETag, md5, ...) or '' for local files."""

    url: str
    size: int | None = None
    identity: str = ""

    __reduce__ = _reduce


@dataclass(frozen=True, slots=True)
class TabularSlice:
    """Part of one tabular file.

    csv/jsonl: bytes [start, end) hold whole records; csv bytes [0, header_end) hold the header row,
    applied to every slice. parquet: `row_groups` lists the row groups read (start/end unused).
    `rows` is the record count found at planning time. `first_line` (csv/jsonl) is the 1-based line of the
    file on which byte `start` lies, so read errors can name lines of the file; None for parquet and for
    slices planned before it was recorded. It is not part of the reuse-cache key (start/end/header_end are).
    `null_columns` (parquet) names the integer and bool columns that may hold a missing value in these row
    groups, as the footer's statistics say (one without a null count is among them); None when not known (csv/jsonl,
    slices planned before it was recorded). The job decides pandas dtypes from it
    (core/inputs/tabular_types.py: `parquet_null_columns`). `identity` is the object-store content identity
    (ETag, ...) listed for the file at planning, checked again after its slices are read
    (core/inputs/object_check.py); '' for local files, checked as their attempts commit.
    """

    url: str
    format: str
    start: int = 0
    end: int = 0
    header_end: int = 0
    row_groups: tuple[int, ...] = ()
    rows: int = 0
    first_line: int | None = None
    null_columns: tuple[str, ...] | None = None
    identity: str = ""

    __reduce__ = _reduce


@runtime_checkable
class Piece(Protocol):
    """A unit of a source that is neither files nor tabular files (a key range of a table, a page of an API).

    A frozen dataclass: its fields enter the mini-batch's cache key like a slice's (fields it lists in
    a `NOT_IN_KEY` class attribute do not, see core/reuse/key.py). Registered with `register_piece` so
    that manifests can read it back."""

    @property
    def unit(self) -> str:
        """A stable id: fingerprints, manifests and reuse explanations are keyed by it."""
        ...

    def describe(self) -> dict[str, Any]:
        """What `mini_batch_context.dataset` and the logs show of it (never credentials)."""
        ...

    def label(self) -> str:
        """A short human description, for log lines."""
        ...


_PIECES: dict[str, Callable[..., Any]] = {}


def register_piece(cls: type) -> type:
    """Makes a piece class readable from manifests (by its class name); usable as a decorator."""
    _PIECES[cls.__name__] = cls
    return cls


_SHARED = frozenset({str, int, float, bool, type(None)})  # immutable: shared, as `_plain` shares them


def _plain(value: Any) -> Any:
    """`dataclasses.asdict` for the descriptors' values: dataclasses become dicts of all their fields,
    tuples, lists and dicts are rebuilt with their items converted, anything else (str, int, float, bool,
    None: the descriptors hold nothing mutable) is shared instead of deep-copied. Told apart by exact
    type, looked up once per type (`dataclasses.is_dataclass` per value was most of a job record's time)."""
    cls = type(value)
    if cls in _SHARED:
        return value
    names = _field_names(cls)  # type: ignore[arg-type]  # classes are hashable
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, tuple | list):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _piece_from_dict(data: Mapping[str, Any]) -> Any:
    kind = data.get("type")
    if kind not in _PIECES:
        raise ValueError(
            f"unknown mini-batch piece type {kind!r} (is the input source that plans it installed?)"
        )
    return _PIECES[str(kind)](**{k: v for k, v in data.items() if k != "type"})


@dataclass(frozen=True, slots=True)
class MiniBatch:
    """One unit of work: a run() call. `input_index` points at the job's inputs (storage options, read options)."""

    index: int
    kind: str  # what run() receives: "file" (local paths) or "tabular" (a DataFrame)
    input_index: int
    items: int
    files: tuple[FileRef, ...] = ()
    slices: tuple[TabularSlice, ...] = ()
    partition_key_value: dict[str, str] = field(default_factory=dict)
    pieces: tuple[Any, ...] = ()  # Piece objects of sources other than files (see `Piece`)

    __reduce__ = _reduce

    def units(self) -> list[str]:
        """The ids its fingerprints are keyed by: file URLs, else slice URLs, else piece units."""
        if self.files:
            return [f.url for f in self.files]
        if self.slices:
            return [s.url for s in self.slices]
        return [p.unit for p in self.pieces]

    def describe(self) -> dict[str, Any]:
        """What `mini_batch_context.dataset` shows and what logs print for this mini-batch (with its
        partition key values, so processed_mini-batches.csv tells which partition each row scored)."""
        keyed = {"partition_key_value": dict(self.partition_key_value)} if self.partition_key_value else {}
        if self.pieces:
            return {
                "input_index": self.input_index,
                "pieces": [p.describe() for p in self.pieces],
                **keyed,
            }
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
        """Short human description: first file/slice/piece and how many more."""
        refs = (
            [f.url for f in self.files]
            or [
                f"{s.url}[{s.start}:{s.end}]" if s.format != "parquet" else f"{s.url}{list(s.row_groups)}"
                for s in self.slices
            ]
            or [p.label() for p in self.pieces]
        )
        more = f" (+{len(refs) - 1} more)" if len(refs) > 1 else ""
        return (refs[0] if refs else "<empty>") + more

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (manifests); pieces carry their type name. `dataclasses.asdict`'s result, built
        without its deep copies: every field of every descriptor is taken by introspection (`_plain`), and a
        job record holds every mini-batch (asdict was 0.1-0.2 s of a fully reused 1,000-mini-batch re-run)."""
        document = _plain(self)
        document["pieces"] = [
            {"type": type(piece).__name__, **plain}
            for piece, plain in zip(self.pieces, document["pieces"], strict=True)
        ]
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MiniBatch:
        """Inverse of `to_dict`; a document written before pieces existed reads as `pieces=()`."""
        return cls(
            index=data["index"],
            kind=data["kind"],
            input_index=data["input_index"],
            items=data["items"],
            files=tuple(FileRef(**f) for f in data["files"]),
            slices=tuple(_slice_from_dict(s) for s in data["slices"]),
            partition_key_value=dict(data["partition_key_value"]),
            pieces=tuple(_piece_from_dict(p) for p in data.get("pieces") or ()),
        )


def _slice_from_dict(data: Mapping[str, Any]) -> TabularSlice:
    """A slice from its manifest form (JSON lists back to tuples; a manifest written before `null_columns`
    existed reads as None: not known)."""
    nulls = data.get("null_columns")
    return TabularSlice(
        **{
            **data,
            "row_groups": tuple(data["row_groups"]),
            "null_columns": tuple(nulls) if nulls is not None else None,
        }
    )

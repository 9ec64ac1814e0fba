"""Turning run() results into part files, and assembling committed parts into the one output file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import fsspec

if TYPE_CHECKING:
    import pandas as pd

# pandas and pyarrow are imported only where a DataFrame or Parquet is involved: every entry-script
# process imports this module, and for a job of files and text results they would cost ~0.6 s of CPU
# per process before its first mini-batch.


def _is_frame(value: Any) -> TypeGuard[pd.DataFrame]:
    """A pandas DataFrame? (If pandas is not imported yet, the value cannot be one.)"""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


RESULT_TYPE_MESSAGE = (
    "run() must return a list, a tuple or a pandas DataFrame: its length is the number of items that "
    "succeeded, and with output_action=append_row its elements (rows) are written to the output file. "
    "It returned {kind}."
)


class InvalidResultError(Exception):
    """run() returned something the contract does not allow; the attempt fails with this message."""


def count_result(result: Any, total: int) -> int:
    """Validates a run() result and returns the number of succeeded items."""
    if not isinstance(result, (list, tuple)) and not _is_frame(result):
        raise InvalidResultError(RESULT_TYPE_MESSAGE.format(kind=type(result).__name__))
    succeeded = len(result)
    if succeeded > total:
        raise InvalidResultError(
            f"run() returned {succeeded} results for a mini-batch of {total} items; at most one result per "
            "input item is allowed, so the extra results would be miscounted. Return one element (row) per "
            "item that succeeded."
        )
    return succeeded


def _as_frame(result: list[Any] | tuple[Any, ...] | pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    if isinstance(result, pd.DataFrame):
        return result
    if result and all(isinstance(item, dict) for item in result):
        return pd.DataFrame.from_records(list(result))
    return pd.DataFrame({"result": list(result)})


def encode_part(result: list[Any] | tuple[Any, ...] | pd.DataFrame, fmt: str) -> tuple[bytes, list[str]]:
    """Serialises one result in the output format; returns (bytes, header columns for csv)."""
    if fmt == "text":
        if _is_frame(result):
            text = result.to_csv(sep=" ", header=False, index=False, lineterminator="\n")
        else:
            text = "".join(f"{item}\n" for item in result)
        return text.encode("utf-8"), []
    if fmt == "jsonl":
        if _is_frame(result):
            text = result.to_json(orient="records", lines=True, date_format="iso") or ""
            text = text if not text or text.endswith("\n") else text + "\n"
        else:
            text = "".join(json.dumps(item, default=str) + "\n" for item in result)
        return text.encode("utf-8"), []
    frame = _as_frame(result)
    if fmt == "csv":
        return frame.to_csv(header=False, index=False, lineterminator="\n").encode("utf-8"), [
            str(c) for c in frame.columns
        ]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
        return buffer.getvalue(), [str(c) for c in frame.columns]
    raise ValueError(f"unknown append_row_format {fmt!r}")


def write_atomic(url: str, data: bytes, storage_options: dict[str, Any]) -> None:
    """Writes a whole file so that readers see all of it or nothing (temp name + rename where possible)."""
    if "://" in url and not url.startswith("file://"):  # object stores: one PUT is atomic
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        fs.pipe_file(path, data)
    else:  # plain os calls: this runs once per mini-batch (part files, cache entries)
        path = os.path.abspath(url.removeprefix("file://"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:  # a full disk, an interrupt: no temp file stays behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise


def assemble(
    parts: Sequence[tuple[int, str, list[str]]], target_url: str, fmt: str, storage_options: dict[str, Any]
) -> None:
    """Concatenates committed parts (index, url, columns) in mini-batch order into `target_url`.

    The final file appears at once (temp name, then rename), so a reader never sees a half-written output.
    """
    fs, target = fsspec.core.url_to_fs(target_url, **storage_options)
    ordered = sorted(parts, key=lambda p: p[0])
    tmp = target + ".assembling"
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer: pq.ParquetWriter | None = None
            schema: pa.Schema | None = None
            with fs.open(tmp, "wb") as out:
                for _, url, _cols in ordered:
                    with fsspec.open(url, "rb", **storage_options) as handle:
                        table = pq.read_table(handle)
                    if writer is None:
                        schema = table.schema.remove_metadata()
                        writer = pq.ParquetWriter(out, schema)
                    writer.write_table(
                        table.cast(schema) if table.schema.remove_metadata() != schema else table
                    )
                if writer is None:
                    pq.write_table(pa.table({}), out)
                else:
                    writer.close()
        else:
            with fs.open(tmp, "wb") as out:
                header_written = False
                for index, url, cols in ordered:
                    if fmt == "csv" and cols and not header_written:
                        out.write((",".join(_csv_quote(c) for c in cols) + "\n").encode("utf-8"))
                        header_written = True
                    with fsspec.open(url, "rb", **storage_options) as handle:
                        while chunk := handle.read(1 << 20):
                            out.write(chunk)
                    del index
        fs.mv(tmp, target)
    except BaseException:  # a full disk, a bad part: the partial file is never left to look like output
        with contextlib.suppress(OSError):
            fs.rm(tmp)
        raise


def _csv_quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value

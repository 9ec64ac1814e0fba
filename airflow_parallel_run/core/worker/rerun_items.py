"""In the entry-script process: a re-run of only the items a mini-batch's run() marked failed.

The previous job's run() returned one entry per item with some marked failed (core/output/results.py);
it kept the successful entries (`save_successes`, a pickle beside the part, stored with it in the reuse
cache). A re-run (`--rerun-failed`, core/reuse/rerun.py) sends the mini-batch with a `PartialRun`: run()
gets only the failed items (`read_selected`), and its results take their places among the previous ones
(`join_results`), so the part written is the one a run of the whole mini-batch writes, each item once, in
input order.

The pickle is read only here, in the process that already runs the job's script, and only when its bytes
have the SHA-256 that the previous job's record (`logs/sys/job.json`, `kept_items`) gives: a cache entry
rewritten by someone who can write the cache but not the output folder is never unpickled (checked here,
on the bytes about to be loaded, so nothing can swap the file after the driver's own check).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

from ..inputs.batch_format import read_batch
from ..minibatch import MiniBatch
from ..output.results import InvalidResultError, is_arrow, is_frame
from ..storage import write_atomic
from .messages import PartialRun


def selected_batch(mini_batch: MiniBatch, partial: PartialRun | None) -> MiniBatch:
    """What run() gets of a mini-batch, as `mini_batch_context` describes it: for files, only the files at
    `partial.positions` (same index); tabular rows are picked after reading, so their slices stay."""
    if partial is None or not mini_batch.files:
        return mini_batch
    files = tuple(mini_batch.files[i] for i in partial.positions)
    return dataclasses.replace(mini_batch, files=files, items=len(files))


def read_selected(
    source: Any, mini_batch: MiniBatch, partial: PartialRun, scratch: str, batch_format: str = "pandas"
) -> tuple[Any, int]:
    """The items at `partial.positions` as run() gets them (local paths, the DataFrame's rows with their
    index, or the pyarrow Table's rows), and the whole mini-batch's item count. Files: only those are read
    (downloaded)."""
    positions = list(partial.positions)
    if mini_batch.files:
        data, _count = source.read(selected_batch(mini_batch, partial), scratch)
        return data, mini_batch.items
    data, total = read_batch(source, mini_batch, scratch, batch_format)
    if any(p >= total for p in positions):
        raise InvalidResultError(
            f"mini-batch {mini_batch.index} has {total} items now, the previous job marked item "
            f"{max(positions)} failed: its input changed"
        )
    if is_frame(data):
        return data.iloc[positions], total
    if is_arrow(data):
        return data.take(positions), total
    return [data[i] for i in positions], total


def load_successes(partial: PartialRun, storage_options: Mapping[str, Any]) -> list[Any]:
    """The previous job's successful results of a mini-batch ([] when none were kept: summary_only, or no
    item succeeded), once their bytes are the ones the previous job recorded."""
    url = partial.items_url
    if not url:
        return []
    import fsspec

    with fsspec.open(url, "rb", **dict(storage_options)) as handle:
        blob = handle.read()
    if hashlib.sha256(blob).hexdigest() != partial.items_sha256:
        raise InvalidResultError(
            f"the previous job's successful results in {url} are not the ones its record names (SHA-256 "
            "differs): they were changed since, and are not loaded"
        )
    value = pickle.loads(blob)  # noqa: S301 - the bytes the previous job recorded (module doc)
    if not isinstance(value, list):
        raise InvalidResultError(f"{url} does not hold the previous job's results")
    return value


def join_results(
    new: Any, partial: PartialRun, previous: Sequence[Any], total: int, summary_only: bool
) -> list[Any]:
    """run()'s results for the re-run items in their places among the previous job's successful results:
    one entry per item of the mini-batch, in input order (a still-failing item keeps its marker)."""
    positions = list(partial.positions)
    if is_frame(new) or not isinstance(new, (list, tuple)) or len(new) != len(positions):
        kind = (
            f"a {type(new).__name__} of length {len(new)}"
            if isinstance(new, (list, tuple)) or is_frame(new)
            else f"a {type(new).__name__}"
        )
        raise InvalidResultError(
            f"a re-run of {len(positions)} failed items of this mini-batch needs a list (or tuple) with one "
            f"entry per item, in input order; run() returned {kind}. The failed items' results take their "
            "places among the previous job's, so each must say which item it is for"
        )
    others = [i for i in range(total) if i not in set(positions)]
    if summary_only:
        previous = [None] * len(others)
    if len(previous) != len(others):
        raise InvalidResultError(
            f"the previous job kept {len(previous)} results of this mini-batch, {len(others)} of its "
            f"{total} items succeeded: the cache entry does not belong to this re-run"
        )
    joined: list[Any] = [None] * total
    for position, value in zip(others, previous, strict=True):
        joined[position] = value
    for position, value in zip(positions, new, strict=True):
        joined[position] = value
    return joined


def sha256_of(url: str, storage_options: Mapping[str, Any]) -> str:
    """The SHA-256 of a kept-results file (what the job's record names it by)."""
    import fsspec

    digest = hashlib.sha256()
    with fsspec.open(url, "rb", **dict(storage_options)) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_successes(value: Sequence[Any], url: str, storage_options: Mapping[str, Any]) -> str | None:
    """Keeps the successful results of a run() that marked items failed, for a re-run of those items; None
    (the re-run then runs the whole mini-batch) when they cannot be pickled."""
    try:
        blob = pickle.dumps(list(value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an unpicklable result: the whole mini-batch runs again instead
        return None
    write_atomic(url, blob, storage_options)
    return url

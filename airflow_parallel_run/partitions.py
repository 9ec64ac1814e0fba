"""Airflow's partition language for `ParallelRunOperator`: partition-keyed runs and partitioned asset events.

Airflow 3.2+ gives a DAG run a ``partition_key`` (and a ``partition_date``) when a partitioned timetable
(`CronPartitionTimetable`, `PartitionedAssetTimetable`), a backfill or a trigger with a partition key
created it. This module is what the operator does with it:

- **Templates.** ``{{ partition_key }}``, ``{{ dag_run.partition_key }}`` and ``{{ partition_date }}``
  (``{{ partition_date | ds }}`` for ``YYYY-MM-DD``) come from Airflow's own context. A key that would
  escape or widen a path it is put in (``..``, an absolute key, glob characters) is refused before
  anything runs: `check_key_in_paths`.
- **Summary.** The summary (the task's XCom) gets ``partition_key`` when the run has one:
  `with_run_partition`. The engine stays Airflow-free; the key is the run's, not the engine's.
- **Asset events.** A successful job's outlet event carries the job's counts in its extra
  (`event_extra`). By default the event is the run's partition (Airflow attaches the run's key to every
  outlet event). With ``outlet_partitions="data"`` a job over several partitions of its input
  (``partition_keys`` in the config) emits one event per scored partition through
  ``outlet_events[asset].add_partitions(...)``; Airflow gives all of them the same extra, so the extra
  holds every partition's own counts under ``partitions`` and `partition_extra` picks one out.
- **Consumers.** A DAG scheduled with `PartitionedAssetTimetable` on that asset runs once per partition
  key; `scored_partitions` reads the extras of its triggering events, by partition key.

A failed job emits no event: the task fails, and Airflow registers outlet events of successful tasks only.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_parallel_run.core import ConfigError

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Summary key added by the operator when the DAG run has a partition key (proposed for
#: /work/shared/DESIGN.md, result summary).
SUMMARY_PARTITION_KEY = "partition_key"
#: Event extra key holding each scored partition's own counts (``outlet_partitions="data"``).
EXTRA_PARTITIONS = "partitions"
#: How the values of several `partition_keys` form one Airflow partition key: ``"us|2024-01-01"``, the
#: composite form `ProductMapper` splits.
KEY_SEPARATOR = "|"
#: ``outlet_partitions`` values: the run's own partition key (Airflow's default for every outlet), or one
#: event per scored partition of the input's `partition_keys`.
OUTLET_PARTITIONS = ("run", "data")
#: Airflow's limit for a partition key (the metadata DB's ID length).
MAX_KEY_LENGTH = 250
_GLOB = frozenset("*?[]")
_COUNTS = ("total_items", "succeeded_items", "failed_items", "total_mini_batches", "reused_mini_batches")


# -- the run's partition ----------------------------------------------------------------------------
def run_partition_key(context: Mapping[str, Any]) -> str | None:
    """The DAG run's partition key (None for runs without one)."""
    key = context.get("partition_key")
    if key is None:
        key = getattr(context.get("dag_run"), "partition_key", None)
    return str(key) if key not in (None, "") else None


def with_run_partition(summary: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The summary plus ``partition_key`` when the run has one (untouched otherwise)."""
    key = run_partition_key(context)
    return {**summary, SUMMARY_PARTITION_KEY: key} if key is not None else dict(summary)


def path_problem(key: str) -> str | None:
    """Why `key` cannot be put in a path, or None: it would leave the folder it names (``..``, an
    absolute or empty segment, a backslash), select other folders (glob characters) or hide characters
    (control characters). ``2024-01-01``, ``us|2024-01-01T00:00:00`` and ``2024/01/02`` are fine."""
    if any(unicodedata.category(char).startswith("C") for char in key):
        return "it holds a control character"
    if "\\" in key:
        return "it holds a backslash"
    if _GLOB & set(key):
        return "it holds glob characters (*?[])"
    if "://" in key:
        return "it is a URL"
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "it has an empty, '.' or '..' path segment"
    return None


def check_key_in_paths(key: str | None, paths: Mapping[str, Iterable[str]]) -> None:
    """Refuses a run partition key that a rendered path holds when it is not safe in a path.

    `paths` maps a field name (``output_path``, ``inputs``) to its rendered paths. Raises `ConfigError`
    naming the field: a key such as ``../other`` in ``output_path=/out/{{ partition_key }}`` would write
    into another folder, ``*`` in ``inputs`` would read every partition.
    """
    if not key:
        return
    problem = path_problem(key)
    if problem is None:
        return
    for name, values in paths.items():
        for value in values:
            if key in str(value):
                raise ConfigError(
                    "partition_key",
                    key,
                    f"a key that is safe in a path when {name} uses it ({problem}; {name} renders to "
                    f"{str(value)!r})",
                )


# -- outlet settings ----------------------------------------------------------------------------------
def check_outlet_partitions(value: str, partition_keys: Sequence[str] | None, fixed_asset: bool) -> None:
    """Parse-time check of ``outlet_partitions`` (see the module docstring)."""
    if value not in OUTLET_PARTITIONS:
        raise ConfigError("outlet_partitions", value, " or ".join(repr(v) for v in OUTLET_PARTITIONS))
    if value != "data":
        return
    if not partition_keys:
        raise ConfigError(
            "outlet_partitions",
            value,
            "'run' unless parallel_run_config sets partition_keys (the partitions of the input are "
            "what 'data' emits)",
        )
    if not fixed_asset:
        raise ConfigError(
            "outlet_partitions",
            value,
            "'run' unless the outlet is a fixed asset: pass output_asset=Asset(...) (a templated "
            "output_path is an asset alias, and Airflow attaches partitions to concrete assets only)",
        )


def data_partition_key(values: Mapping[str, str], keys: Sequence[str]) -> str:
    """One Airflow partition key from a mini-batch's partition values, in `partition_keys` order."""
    return KEY_SEPARATOR.join(str(values.get(k, "")) for k in keys)


# -- per-partition counts -------------------------------------------------------------------------
@dataclass
class PartitionCounts:
    """What one partition of the input scored (from the job's processed_mini-batches.csv)."""

    total_items: int = 0
    succeeded_items: int = 0
    failed_items: int = 0
    total_mini_batches: int = 0
    succeeded_mini_batches: int = 0
    reused_mini_batches: int = 0
    mini_batches: set[int] = field(default_factory=set)

    def as_extra(self) -> dict[str, int]:
        return {
            "total_items": self.total_items,
            "succeeded_items": self.succeeded_items,
            "failed_items": self.failed_items,
            "total_mini_batches": self.total_mini_batches,
            "succeeded_mini_batches": self.succeeded_mini_batches,
            "reused_mini_batches": self.reused_mini_batches,
        }


def _committed(status: str) -> bool:
    """The engine's own rule for a committed attempt (RUN_DONE or REUSED)."""
    from airflow_parallel_run.core.attempt import AttemptStatus

    try:
        return AttemptStatus(status).ok
    except ValueError:  # a status this release does not know: not a commit
        return False


def partition_counts(attempts_csv: str, keys: Sequence[str]) -> dict[str, PartitionCounts]:
    """Per data partition: items and mini-batches, from the text of processed_mini-batches.csv.

    A mini-batch counts once: its first committed attempt (as the driver commits the first success);
    a mini-batch without one counts its last attempt's items as failed.
    """
    final: dict[int, tuple[str, dict[str, str]]] = {}  # index -> (partition key, deciding row)
    for row in csv.DictReader(io.StringIO(attempts_csv)):
        index = int(row["Mini-batch Id"])
        try:
            detail = json.loads(row.get("Mini-batch Detail") or "{}")
        except json.JSONDecodeError:
            detail = {}
        key = data_partition_key(detail.get("partition_key_value") or {}, keys)
        previous = final.get(index)
        if previous is not None and _committed(previous[1]["Status"]):
            continue  # the first commit stands (a duplicate delivery is logged, not counted)
        final[index] = (key, row)
    counts: dict[str, PartitionCounts] = {}
    for index, (key, row) in sorted(final.items()):
        part = counts.setdefault(key, PartitionCounts())
        total = int(row["Total"] or 0)
        part.mini_batches.add(index)
        part.total_mini_batches += 1
        part.total_items += total
        if _committed(row["Status"]):
            succeeded = int(row["Succeeded"] or 0)
            part.succeeded_mini_batches += 1
            part.reused_mini_batches += int(row["Status"] == "REUSED")
            part.succeeded_items += succeeded
            part.failed_items += total - succeeded
        else:
            part.failed_items += total
    return counts


def counts_disagree(counts: Mapping[str, PartitionCounts], summary: Mapping[str, Any]) -> list[str]:
    """The summary fields whose per-partition sums differ from the summary (empty when they agree)."""
    fields = (
        "total_items",
        "succeeded_items",
        "total_mini_batches",
        "succeeded_mini_batches",
        "reused_mini_batches",
    )
    return [
        f"{name}: {sum(getattr(c, name) for c in counts.values())} != {summary.get(name)}"
        for name in fields
        if sum(getattr(c, name) for c in counts.values()) != summary.get(name)
    ]


def scored_partition_keys(counts: Mapping[str, PartitionCounts]) -> list[str]:
    """Partitions with at least one committed mini-batch, sorted (a partition whose every mini-batch
    failed has no output to announce; the job's thresholds decided that the job as a whole succeeded)."""
    return sorted(key for key, c in counts.items() if c.succeeded_mini_batches)


def check_event_key(key: str) -> str | None:
    """Why Airflow would refuse `key` as an event's partition key, or None."""
    if not key.strip():
        return "it is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it is {len(key)} characters long (Airflow allows {MAX_KEY_LENGTH})"
    return None


# -- event extras -------------------------------------------------------------------------------------
def event_extra(summary: Mapping[str, Any], output_uri: str) -> dict[str, Any]:
    """The extra of a successful job's asset event: what a consumer needs without opening the output."""
    extra: dict[str, Any] = {name: summary.get(name) for name in _COUNTS}
    extra.update(
        {
            "succeeded_mini_batches": summary.get("succeeded_mini_batches"),
            "append_row_file": summary.get("append_row_file"),
            "output": summary.get("output"),
            "output_uri": output_uri,
            "cache_key": summary.get("cache_key"),
        }
    )
    if summary.get(SUMMARY_PARTITION_KEY) is not None:
        extra[SUMMARY_PARTITION_KEY] = summary[SUMMARY_PARTITION_KEY]
    return extra


def partition_extra(extra: Mapping[str, Any], partition_key: str | None) -> dict[str, Any]:
    """The extra of a `ParallelRunOperator` event as it concerns one partition.

    For an event of a job over several data partitions (``outlet_partitions="data"``): the job's values
    with that partition's own counts over them, and ``partition_key`` set; for any other event: the
    extra as it is. Raises KeyError when the job did not score `partition_key`.
    """
    result = {k: v for k, v in extra.items() if k != EXTRA_PARTITIONS}
    partitions = extra.get(EXTRA_PARTITIONS)
    if isinstance(partitions, Mapping) and partition_key is not None:
        if partition_key not in partitions:
            raise KeyError(f"the job of this event did not score partition {partition_key!r}")
        result.update(partitions[partition_key])
        result[SUMMARY_PARTITION_KEY] = partition_key
    return result


def scored_partitions(context: Mapping[str, Any], asset: Any) -> dict[str, dict[str, Any]]:
    """For a task of a partition-scheduled consumer: the extras of the run's triggering events of
    `asset`, by partition key (one entry for a per-partition run, one per upstream key for a roll-up),
    each as `partition_extra` gives it. Events without a partition key are left out; for a key that
    several events carry, the latest wins."""
    events = context["triggering_asset_events"][asset]
    result: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.timestamp):
        key = getattr(event, "partition_key", None)
        if key is None:
            continue
        result[key] = partition_extra(dict(event.extra or {}), key)
    return result


def emit_output_events(operator: Any, context: Context, summary: Mapping[str, Any]) -> None:
    """Attaches the job's extra to the operator's outlet event(s).

    A fixed outlet asset gets the extra; with ``outlet_partitions="data"`` also one partition per scored
    partition of the input. An output alias (templated output folder) gets an event for the run's
    concrete folder. Airflow attaches the run's own partition key where no partitions are added.
    """
    from airflow.sdk import Asset

    from airflow_parallel_run.assets import output_asset_uri

    output_uri = output_asset_uri(str(summary.get("output") or operator.resolve_output_path()))
    extra = event_extra(summary, output_uri)
    events = context["outlet_events"]
    if operator.output_asset is not None:
        accessor = events[operator.output_asset]
        accessor.extra.update(extra)
        if getattr(operator, "outlet_partitions", "run") == "data":
            scored = _data_partitions(operator, summary)
            per_partition: dict[str, Any] = {key: counts.as_extra() for key, counts in scored.items()}
            accessor.extra[EXTRA_PARTITIONS] = per_partition
            accessor.add_partitions(sorted(scored))
            operator.log.info(
                "Asset %s: one event per scored partition (%d): %s",
                operator.output_asset.uri,
                len(scored),
                ", ".join(sorted(scored)[:20]) + (" ..." if len(scored) > 20 else ""),
            )
    elif operator.output_asset_alias is not None:
        events[operator.output_asset_alias].add(Asset(uri=output_uri), extra=extra)


def _data_partitions(operator: Any, summary: Mapping[str, Any]) -> dict[str, PartitionCounts]:
    """The scored partitions of a successful job with their counts; fails the task when a scored
    partition cannot be announced (Airflow refuses its key) or the log disagrees with the summary."""
    import fsspec
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_parallel_run.ui.files import ATTEMPTS_FILE

    keys = list(operator.resolve_config().partition_keys or ())
    url = f"{str(summary['logs_dir']).rstrip('/')}/{ATTEMPTS_FILE}"
    with fsspec.open(url, "r", encoding="utf-8", newline="", **operator.resolve_storage_options()) as handle:
        counts = partition_counts(handle.read(), keys)
    disagree = counts_disagree(counts, summary)
    if disagree:
        raise AirflowFailException(
            f"Cannot announce the scored partitions: {url} disagrees with the job's summary "
            f"({'; '.join(disagree)})"
        )
    scored = {key: counts[key] for key in scored_partition_keys(counts)}
    refused = {key: problem for key in scored if (problem := check_event_key(key)) is not None}
    if refused:
        raise AirflowFailException(
            "Cannot announce the scored partitions: Airflow refuses partition keys "
            + "; ".join(f"{key!r} ({problem})" for key, problem in sorted(refused.items()))
            + f" (formed from partition_keys {keys} joined by {KEY_SEPARATOR!r})"
        )
    return scored

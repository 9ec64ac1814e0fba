"""The ParallelRunStep driver's own options inside program arguments (v2 `task.program_arguments`, v1 `arguments`).

On Azure the PRS driver reads its options (`--error_threshold`, `--allowed_failed_percent`,
`--task_overhead_timeout`, ...) from the program arguments and the entry script gets the same command line in
`sys.argv` (which is why Azure's samples parse with `parse_known_args`). Here the options are read the same way:
each one is either mapped to a `ParallelRunConfig` field, accepted and ignored with a warning that says why, or
refused with a `ConfigError` naming it; the script's arguments are left as they were. An option name that is
one or two letters away from a driver option (Azure's docs once shipped `--resource_monitor_interva`) passes on
to the script, as on Azure, with a warning naming the option it resembles.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_parallel_run.core import ConfigError


def _int(name: str, text: str, minimum: int) -> int:
    try:
        number = float(text)
    except ValueError:
        raise ConfigError(name, text, f"an integer >= {minimum}") from None
    if not math.isfinite(number):
        raise ConfigError(name, text, f"an integer >= {minimum}")
    value = math.ceil(number)  # the PRS driver rounds a fractional threshold up
    if value < minimum:
        raise ConfigError(name, text, f"an integer >= {minimum}")
    return value


def _number(name: str, text: str, low: float, high: float | None, low_open: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ConfigError(name, text, f"a number {bound}" + (f" and <= {high:g}" if high is not None else ""))
    return value


def _timeout(name: str, text: str) -> float | None:
    """A watchdog limit: seconds > 0, or -1, the driver's "calculate it from the other settings" (None
    here: the config's default)."""
    if text.strip() in ("-1", "-1.0"):
        return None
    return _number(name, text, 0, None, True)


def _bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise ConfigError(name, text, "True or False")


def _size(name: str, text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text.strip()


@dataclass(frozen=True)
class DriverOption:
    """One PRS driver option: its Azure name, how its value is read, and what becomes of it here."""

    name: str  # without the leading dashes, as Azure spells it
    parse: Callable[[str, str], Any] | None  # (option, text) -> value; None: a flag or an ignored option
    config_field: str | None = None  # mapped: the ParallelRunConfig field it sets
    ignored: str | None = None  # accepted: why it has no effect here (the warning)
    refused: str | None = None  # refused: what to do instead (the ConfigError's "allowed" text)

    @property
    def status(self) -> str:
        return "mapped" if self.config_field else "ignored" if self.ignored else "refused"


DRIVER_OPTIONS: tuple[DriverOption, ...] = (
    DriverOption("error_threshold", lambda n, t: _int(n, t, -1), config_field="error_threshold"),
    DriverOption("allowed_failed_count", lambda n, t: _int(n, t, -1), config_field="allowed_failed_count"),
    DriverOption(
        "allowed_failed_percent", lambda n, t: _number(n, t, 0, 100), config_field="allowed_failed_percent"
    ),
    DriverOption("mini_batch_size", _size, config_field="mini_batch_size"),
    DriverOption(
        "run_invocation_timeout",
        lambda n, t: _number(n, t, 0, None, True),
        config_field="run_invocation_timeout",
    ),
    DriverOption(
        "score_run_timeout", lambda n, t: _number(n, t, 0, None, True), config_field="run_invocation_timeout"
    ),
    DriverOption("run_max_try", lambda n, t: _int(n, t, 1), config_field="run_max_try"),
    DriverOption("process_count_per_node", lambda n, t: _int(n, t, 1), config_field="process_count_per_node"),
    DriverOption("node_count", lambda n, t: _int(n, t, 1), config_field="node_count"),
    DriverOption("logging_level", lambda n, t: t.strip().upper(), config_field="logging_level"),
    DriverOption("output_action", lambda n, t: t.strip().lower(), config_field="output_action"),
    DriverOption("append_row_file_name", lambda n, t: t, config_field="append_row_file_name"),
    DriverOption(
        "resource_monitor_interval",
        lambda n, t: _number(n, t, 0, None),
        config_field="resource_monitor_interval",
    ),
    DriverOption(
        "task_overhead_timeout",
        lambda n, t: _number(n, t, 0, 259200, True),
        ignored="loading a mini-batch is part of its attempt, which run_invocation_timeout bounds as a whole",
    ),
    DriverOption(
        "progress_update_timeout", lambda n, t: _timeout(n, t), config_field="progress_update_timeout"
    ),
    DriverOption(
        "first_task_creation_timeout", lambda n, t: _timeout(n, t), config_field="first_task_creation_timeout"
    ),
    DriverOption(
        "copy_logs_to_parent",
        _bool,
        ignored="there is no parent run: the logs are in the output folder's logs/",
    ),
    DriverOption(
        "push_metrics_to_parent",
        _bool,
        ignored="there is no parent run: progress is in logs/sys/progress.json and the task log",
    ),
    DriverOption(
        "metrics_name_prefix",
        lambda n, t: t,
        ignored="there are no run-history metrics: progress is in logs/sys/progress.json and the task log",
    ),
    DriverOption(
        "nice", lambda n, t: _int(n, t, 0), ignored="entry-script processes run at the worker's niceness"
    ),
    DriverOption(
        "profiling_module",
        lambda n, t: t,
        ignored="no per-process profile is written; logs/sys/job_report/ has per-attempt timings",
    ),
    DriverOption(
        "append_row_dataframe_header",
        _bool,
        refused="append_row_format 'csv', 'jsonl' or 'parquet', which keep the column names; the 'text' output "
        "(Azure's) has no header row",
    ),
    DriverOption(
        "append_row_safe_output",
        _bool,
        ignored="the output file is always assembled from whole, validated parts",
    ),
    DriverOption(
        "amlbi_async_mode",
        _bool,
        refused="`async def run(mini_batch)` with max_concurrency_per_process, which keeps that many "
        "mini-batches in flight in one process (the streaming entry-script contract of enqueue() and "
        "get_finished_batch_result() is not supported)",
    ),
    DriverOption(
        "rank_mini_batch_count",
        lambda n, t: _int(n, t, 0),
        refused="an input to split: mini-batches without input are not supported",
    ),
    DriverOption(
        "amlbi_dataframe_mixed_types",
        _bool,
        ignored="DataFrame columns keep the types the reader gives them",
    ),
    DriverOption(
        "resume_from",
        lambda n, t: t,
        refused="allow_reuse (on by default): unchanged mini-batches of earlier runs are reused",
    ),
)
_BY_NAME = {o.name: o for o in DRIVER_OPTIONS}


@dataclass(frozen=True)
class PrsArguments:
    """Program arguments read as the PRS driver reads them."""

    settings: dict[str, Any] = field(default_factory=dict)  # ParallelRunConfig field -> value
    given: dict[str, str] = field(default_factory=dict)  # ParallelRunConfig field -> the option that set it
    warnings: tuple[str, ...] = ()
    script_arguments: tuple[str, ...] = ()  # what the entry script gets in sys.argv: all of them, as on Azure


def _option_name(token: str) -> tuple[str, str | None] | None:
    """`--name` or `--name=value` -> (name, value or None); None for anything else."""
    if not token.startswith("--") or len(token) < 3:
        return None
    name, eq, value = token[2:].partition("=")
    return name, (value if eq else None)


def split_prs_arguments(arguments: Sequence[Any], *, field_name: str = "program_arguments") -> PrsArguments:
    """Reads the PRS driver options out of `arguments` (strings; numbers are turned into strings as Azure's
    SDK does). Each option is used as in Azure's driver: `--name value` or `--name=value`, exact names only."""
    tokens = [a if isinstance(a, str) else str(a) for a in arguments]
    settings: dict[str, Any] = {}
    given: dict[str, str] = {}
    warnings: list[str] = []
    position = 0
    while position < len(tokens):
        parsed = _option_name(tokens[position])
        position += 1
        if parsed is None:
            continue
        name, value = parsed
        option = _BY_NAME.get(name)
        if option is None:
            close = difflib.get_close_matches(name, _BY_NAME, n=1, cutoff=0.9)
            if close:
                warnings.append(
                    f"{field_name}: --{name} is not a ParallelRunStep option (did you mean --{close[0]}?); it is "
                    "passed to the entry script only"
                )
            continue
        if value is None:
            if position >= len(tokens) or _option_name(tokens[position]) is not None:
                raise ConfigError(f"{field_name} --{name}", None, "a value after the option")
            value = tokens[position]
            position += 1
        shown = f"--{name}"
        parsed_value = option.parse(f"{field_name} {shown}", value) if option.parse else value
        if option.refused:
            raise ConfigError(f"{field_name} {shown}", value, option.refused)
        if option.ignored:
            warnings.append(f"{field_name}: {shown} {value} has no effect here: {option.ignored}")
            continue
        assert option.config_field is not None
        earlier = given.get(option.config_field)
        if earlier is not None and settings[option.config_field] != parsed_value:
            raise ConfigError(
                f"{field_name} {shown}",
                value,
                f"one value ({earlier} already gave {settings[option.config_field]!r})",
            )
        settings[option.config_field] = parsed_value
        given[option.config_field] = shown
    return PrsArguments(settings, given, tuple(warnings), tuple(tokens))

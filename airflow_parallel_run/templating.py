"""The operator's templated values: which config fields a run may override (`TUNABLES`) and how their
rendered strings become numbers again, what is only known at run time (`is_dynamic`), the parse-time
check of what is already known, and rendering the fields an input source declares templated."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from airflow_parallel_run.core import ConfigError, ParallelRunConfig
from airflow_parallel_run.core.inputs.normalise import as_strings, to_datasets
from airflow_parallel_run.core.inputs.source import InputSource
from airflow_parallel_run.core.plan.manifest import is_manifest_reference

#: Config fields that the operator can override per run (the Airflow form of Azure's PipelineParameter).
TUNABLES: tuple[str, ...] = (
    "mini_batch_size",
    "node_count",
    "process_count_per_node",
    "max_concurrency_per_process",
    "logging_level",
    "run_invocation_timeout",
    "run_max_try",
    "error_threshold",
    "batch_format",
    # the driver's watchdog and speculation (core/driver/watchdog.py, core/driver/speculation.py)
    "progress_update_timeout",
    "first_task_creation_timeout",
    "speculative_execution",
    "speculation_multiplier",
)
_INT_TUNABLES = frozenset(
    {"node_count", "process_count_per_node", "max_concurrency_per_process", "run_max_try", "error_threshold"}
)
#: Tunables that are a number of seconds (or a factor): a rendered "2.5" is a float again; non-finite
#: values are refused (`check_tunables`).
_FLOAT_TUNABLES = frozenset(
    {
        "run_invocation_timeout",
        "progress_update_timeout",
        "first_task_creation_timeout",
        "speculation_multiplier",
    }
)
_BOOL_TUNABLES = {"true": True, "false": False}  # speculative_execution rendered from a Param
_INT_RE = re.compile(r"^[+-]?\d+$")
_NONE_STRINGS = frozenset({"", "none", "null"})


def is_dynamic(value: Any) -> bool:
    """True for values only known at run time: Jinja strings and XComArgs (anywhere in a list), and
    input sources with such a value in one of their `template_fields`."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple)):
        return any(is_dynamic(v) for v in value)
    if isinstance(value, InputSource):
        return any(is_dynamic(getattr(value, name)) for name in value.template_fields)
    return callable(getattr(value, "resolve", None)) and not isinstance(value, os.PathLike)


def coerce_tunable(name: str, value: Any) -> Any:
    """Undo string rendering: ``"10"`` → 10 for integer fields, ``"None"``/``""`` → None.

    Jinja renders ``{{ params.x }}`` to a string unless the DAG renders native objects; both forms
    end up as the type `ParallelRunConfig` expects. Anything else is left for the config to reject
    with a message naming the field. ``"nan"``/``"inf"`` stay strings: a non-finite float is not a
    timeout, and it cannot even be stored as a rendered field (JSON has no such numbers).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _NONE_STRINGS:
            return None
        if name in _INT_TUNABLES or name == "mini_batch_size":
            return int(text) if _INT_RE.match(text) else text
        if name == "speculative_execution" and text.lower() in _BOOL_TUNABLES:
            return _BOOL_TUNABLES[text.lower()]
        if name in _FLOAT_TUNABLES:
            try:
                number = float(text)
            except ValueError:
                return text
            if not math.isfinite(number):
                return text
            return int(number) if number.is_integer() else number
        return text
    if isinstance(value, float) and name in _INT_TUNABLES and value.is_integer():
        return int(value)
    return value


def check_tunables(overrides: Mapping[str, Any]) -> None:
    """What `ParallelRunConfig` lets through but a run cannot use: a non-finite timeout."""
    for name in sorted(_FLOAT_TUNABLES - {"speculation_multiplier"}):
        value = overrides.get(name)
        number: float | None = None
        if isinstance(value, float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is not None and not math.isfinite(number):
            raise ConfigError(name, value, "a finite number of seconds > 0")


def overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The tunables among `values` (name → rendered value) as the config takes them, checked."""
    coerced = {name: coerce_tunable(name, values[name]) for name in TUNABLES if name in values}
    check_tunables(coerced)
    return coerced


def check_static(
    config: ParallelRunConfig,
    tunables: Mapping[str, Any],
    inputs: Any,
    output_path: Any,
    strings: Mapping[str, Any],
) -> None:
    """Fails at parse time on values that are already known (not templated) and invalid: the tunables
    applied to `config`, `inputs`, `output_path`, and the lists of strings (`side_inputs`,
    `arguments`)."""
    config.with_overrides(**overrides({n: v for n, v in tunables.items() if not is_dynamic(v)}))
    if not is_dynamic(inputs) and not is_manifest_reference(inputs):
        to_datasets(inputs)
    if not is_dynamic(output_path) and (
        not isinstance(output_path, (str, os.PathLike)) or not str(output_path).strip()
    ):
        raise ConfigError("output_path", output_path, "a folder path or fsspec URL")
    for name, value in strings.items():
        if not is_dynamic(value):
            as_strings(name, value)


def render_source(source: InputSource, render: Callable[[Any], Any]) -> InputSource:
    """`source` with the fields it declares in `template_fields` rendered by `render` (the operator's
    `render_template`); a tuple field (paths) is rendered item by item and stays a tuple of strings."""
    rendered = {}
    for name in source.template_fields:
        value = getattr(source, name)
        if isinstance(value, tuple):
            rendered[name] = tuple(str(item) for item in render(list(value)))
        else:
            rendered[name] = render(value)
    return dataclasses.replace(source, **rendered)  # type: ignore[type-var]

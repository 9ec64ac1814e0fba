"""`ParallelRunConfig`: every ParallelRunStep setting, validated at construction."""

from __future__ import annotations

import ast
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError
from .output.formats import format_names, get_format

OUTPUT_ACTIONS = ("append_row", "summary_only")
#: What run() receives for a tabular mini-batch (Ray Data's `batch_format`): a pandas DataFrame (Azure's
#: contract) or a pyarrow Table (no conversion: Parquet row groups as read, CSV as parsed).
BATCH_FORMATS = ("pandas", "pyarrow")
# The output file's name when append_row_file_name is not given: Azure's name for text, and a name whose
# extension says what the file holds for the other formats (a Parquet file called .txt misleads readers).
DEFAULT_FILE_STEM = "parallel_run_step"
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING")
DEFAULT_FILE_MINI_BATCH = 10
DEFAULT_TABULAR_MINI_BATCH = "1MB"
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG][bB])?\s*$")
_UNITS = {"": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_BAD_FILE_NAME_CHARS = set('~"#%&*:<>?/\\{|}')


def parse_mini_batch_size(value: int | str, *, tabular: bool, field_name: str = "mini_batch_size") -> int:
    """Files per mini-batch (file input) or bytes (tabular input; KB/MB/GB are x1024)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(field_name, value, "an int or a string like '10', '512KB', '10MB', '1GB'")
    if isinstance(value, int):
        number, unit = value, ""
    else:
        match = _SIZE_RE.match(value)
        if not match:
            raise ConfigError(
                field_name, value, "digits with an optional KB/MB/GB unit, e.g. 10, '1024KB', '10MB'"
            )
        number, unit = int(match.group(1)), (match.group(2) or "").lower()
    if unit and not tabular:
        raise ConfigError(
            field_name, value, "a number of files for file input (units KB/MB/GB are for tabular input)"
        )
    size = number * _UNITS[unit]
    if size < 1:
        raise ConfigError(field_name, value, "at least 1")
    return size


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            name, value, f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        )
    if value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(
            name, value, f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        )
    return value


def _check_positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(name, value, "a number of seconds > 0")
    if not math.isfinite(value):  # nan slips through `<= 0`; inf never times out
        raise ConfigError(name, value, "a finite number of seconds > 0")
    return float(value)


#: Loading one mini-batch and handing it to run() may take this long (the worker's `load_timeout`);
#: Azure calls it task_overhead_timeout (600 s in its current documentation).
TASK_OVERHEAD_S = 600.0
#: Azure's first_task_creation_timeout default.
FIRST_TASK_CREATION_DEFAULT_S = 600.0

#: Longest `append_row_file_name` in UTF-8 bytes: file systems allow 255 per name, and the engine
#: derives temporary names from it (`<name>.assembling`, `<name>.tmp-<32 hex>`), so 55 are kept free.
MAX_FILE_NAME_BYTES = 200

#: Entry-script processes per CPU of the host that runs them, at most: beyond that a host only
#: thrashes (each process holds the script, its model and a Python interpreter).
PROCESSES_PER_CPU = 4


def embedded_process_limit() -> int:
    """The most entry-script processes the embedded cluster (this host) runs: 4 per CPU."""
    return PROCESSES_PER_CPU * (os.cpu_count() or 1)


def check_embedded_process_count(config: ParallelRunConfig) -> None:
    """Refuses a `process_count_per_node` this host cannot run, before any work, when the job runs on
    the embedded cluster. On a Dask cluster the workers' threads bound it (`select_hosts` warns)."""
    limit = embedded_process_limit()
    if config.processes_per_node > limit:
        raise ConfigError(
            "process_count_per_node",
            config.process_count_per_node,
            f"at most {limit} on the embedded cluster ({PROCESSES_PER_CPU} per CPU; this host has "
            f"{os.cpu_count() or 1}); for more, run on a Dask cluster (--scheduler or dask_conn_id)",
        )


def _source_directory_problem(root: str) -> str | None:
    """What the code bundle could not read in `root` (it packs every file): a FIFO, socket or device
    (reading one blocks or never ends), a dangling symlink, or a name that is not valid UTF-8."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".git"))
        for name in sorted(names):
            path = os.path.join(folder, name)
            shown = os.path.relpath(path, os.path.dirname(root.rstrip(os.sep)) or ".")
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                return f"{os.fsencode(shown)!r} has a name that is not valid UTF-8"
            if name.endswith(".pyc"):
                continue
            try:
                mode = os.stat(path).st_mode
            except OSError:
                return f"{shown} is a dangling symlink"
            if not stat.S_ISREG(mode):
                kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
                return f"{shown} is {kind}"
    return None


def _check_file_name(name: object) -> None:
    """append_row_file_name: a plain file name, none of the engine's own entries of the output folder,
    short enough for the temporary names derived from it."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or ".." in name
        or any(c in _BAD_FILE_NAME_CHARS for c in name)
    ):
        raise ConfigError(
            "append_row_file_name",
            name,
            "a plain file name: no path separators, no '..', none of ~\"#%&*:<>?/\\{|}",
        )
    from .output.folder import check_output_file_name  # the engine's own entries (logs, .staging, ...)

    check_output_file_name(name)
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_FILE_NAME_BYTES:
        raise ConfigError(
            "append_row_file_name",
            name,
            f"a file name of at most {MAX_FILE_NAME_BYTES} bytes in UTF-8 (file systems allow 255 and "
            f"the engine adds up to {255 - MAX_FILE_NAME_BYTES} for temporary names); this one has {size}",
        )


#: Most mini-batches in flight in one entry-script process: each holds its data in the process and a Dask
#: worker thread (the embedded cluster starts process_count_per_node x this many threads).
MAX_CONCURRENCY = 256


def script_run_may_be_async(path: str) -> bool:
    """False when the script's top-level `run` is a plain `def` (checked without importing it). A `run`
    bound otherwise (assigned, imported) is not known here: the entry-script process checks it again
    with `inspect.iscoroutinefunction` before any mini-batch runs."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    found: bool | None = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "run":
            found = isinstance(node, ast.AsyncFunctionDef)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "run" for t in node.targets
        ):
            found = True  # not known statically
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (a.asname or a.name) == "run" for a in node.names
        ):
            found = True
    return bool(found)


def script_defines_run(path: str) -> bool:
    """True when the script has a top-level `def run` (or `run = ...`); checked without importing it."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "run":
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "run" for t in node.targets
        ):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (a.asname or a.name) == "run" for a in node.names
        ):
            return True
    return False


@dataclass(frozen=True)
class ParallelRunConfig:
    """The ParallelRunStep settings (/work/shared/DESIGN.md, configuration). Invalid values raise
    `ConfigError` naming the field."""

    entry_script: str
    source_directory: str | None = None
    mini_batch_size: int | str | None = None
    partition_keys: Sequence[str] | None = None
    error_threshold: int = -1
    allowed_failed_count: int | None = None
    allowed_failed_percent: float | None = None
    output_action: str = "append_row"
    append_row_file_name: str | None = None  # None: parallel_run_step.<txt|csv|jsonl|parquet> by format
    append_row_format: str = "text"
    batch_format: str = "pandas"  # tabular input: run() gets a pandas DataFrame or a pyarrow Table
    node_count: int = 1
    process_count_per_node: int | None = None
    max_concurrency_per_process: int = 1  # mini-batches in flight in one process: async run() only
    run_invocation_timeout: float = 60
    run_max_try: int = 3
    logging_level: str = "INFO"
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    resource_monitor_interval: float = 600
    # -- the driver's watchdog and speculation (core/driver/watchdog.py, core/driver/speculation.py) --
    progress_update_timeout: float | None = None
    first_task_creation_timeout: float | None = None
    speculative_execution: bool = False
    speculation_multiplier: float = 3.0

    def __post_init__(self) -> None:
        """Checks every field, in the order of the fields (the first bad one is named), and stores the
        normalised values (stripped, lower/upper case, tuples, dicts)."""
        self._check_script()
        self._check_sizes_and_keys()
        self._check_thresholds()
        self._check_output()
        self._check_processes_and_timeouts()
        self._check_environment()
        self._check_watchdog_and_speculation()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: the normalised value replaces the given one

    def _check_script(self) -> None:
        """entry_script and source_directory: an existing Python file defining run(), inside the folder
        that is shipped to the workers, which holds regular files only."""
        if not isinstance(self.entry_script, str) or not self.entry_script.strip():
            raise ConfigError("entry_script", self.entry_script, "a path to a Python file that defines run()")
        self._set("entry_script", self.entry_script.strip())
        if self.source_directory is not None and not os.path.isdir(self.source_directory):
            raise ConfigError("source_directory", self.source_directory, "an existing directory")
        script = self.entry_script_path
        if self.source_directory is not None:
            inside = os.path.relpath(os.path.abspath(script), os.path.abspath(self.source_directory))
            if inside == os.pardir or inside.startswith(os.pardir + os.sep):
                raise ConfigError(
                    "entry_script",
                    self.entry_script,
                    f"a file inside source_directory ({self.source_directory!r}): only that folder is "
                    "shipped to the workers",
                )
            problem = _source_directory_problem(self.source_directory)
            if problem:
                raise ConfigError(
                    "source_directory",
                    self.source_directory,
                    f"a folder of regular files only (every file is shipped to the workers); {problem}",
                )
        if not os.path.isfile(script):
            raise ConfigError("entry_script", self.entry_script, f"an existing file (looked for {script})")
        try:
            defines_run = script_defines_run(script)
        except SyntaxError as exc:
            raise ConfigError(
                "entry_script", self.entry_script, f"valid Python (line {exc.lineno}: {exc.msg})"
            ) from exc
        if not defines_run:
            raise ConfigError("entry_script", self.entry_script, "a script that defines run(mini_batch)")

    def _check_sizes_and_keys(self) -> None:
        """mini_batch_size (its unit is checked again once the input's kind is known) and partition_keys."""
        if self.mini_batch_size is not None:
            parse_mini_batch_size(self.mini_batch_size, tabular=True)
        if self.partition_keys is not None:
            keys = (
                [self.partition_keys] if isinstance(self.partition_keys, str) else list(self.partition_keys)
            )
            if not keys or not all(isinstance(k, str) and k for k in keys):
                raise ConfigError("partition_keys", self.partition_keys, "a non-empty list of key names")
            self._set("partition_keys", tuple(keys))

    def _check_thresholds(self) -> None:
        _check_int("error_threshold", self.error_threshold, -1)
        if self.allowed_failed_count is not None:
            _check_int("allowed_failed_count", self.allowed_failed_count, -1)
        if self.allowed_failed_percent is not None:
            value = self.allowed_failed_percent
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ConfigError("allowed_failed_percent", value, "a number from 0 to 100")

    def _check_output(self) -> None:
        """output_action, append_row_file_name (a plain name the engine can derive temporary names from,
        not one of its own entries) and append_row_format (a registered format)."""
        if not isinstance(self.output_action, str) or self.output_action.lower() not in OUTPUT_ACTIONS:
            raise ConfigError("output_action", self.output_action, " or ".join(OUTPUT_ACTIONS))
        self._set("output_action", self.output_action.lower())
        name = self.append_row_file_name
        if name is not None:
            _check_file_name(name)
        try:
            fmt = get_format(self.append_row_format.lower())  # the registry: built-ins and entry points
        except (AttributeError, ConfigError):
            raise ConfigError(
                "append_row_format", self.append_row_format, ", ".join(format_names())
            ) from None
        self._set("append_row_format", fmt.name)
        if not isinstance(self.batch_format, str) or self.batch_format.strip().lower() not in BATCH_FORMATS:
            raise ConfigError(
                "batch_format",
                self.batch_format,
                " or ".join(BATCH_FORMATS) + " (what run() receives for a tabular mini-batch)",
            )
        self._set("batch_format", self.batch_format.strip().lower())

    def _check_processes_and_timeouts(self) -> None:
        _check_int("node_count", self.node_count, 1)
        if self.process_count_per_node is not None:
            _check_int("process_count_per_node", self.process_count_per_node, 1)
        _check_int("max_concurrency_per_process", self.max_concurrency_per_process, 1, MAX_CONCURRENCY)
        if self.max_concurrency_per_process > 1 and not script_run_may_be_async(self.entry_script_path):
            raise ConfigError(
                "max_concurrency_per_process",
                self.max_concurrency_per_process,
                "1 for a synchronous run(mini_batch); several mini-batches share one process only with "
                "`async def run(mini_batch)` (or raise process_count_per_node for more processes)",
            )
        self._set(
            "run_invocation_timeout",
            _check_positive_number("run_invocation_timeout", self.run_invocation_timeout),
        )
        _check_int("run_max_try", self.run_max_try, 1)

    def _check_environment(self) -> None:
        """logging_level, environment_variables (names to strings) and resource_monitor_interval."""
        if not isinstance(self.logging_level, str) or self.logging_level.upper() not in LOGGING_LEVELS:
            raise ConfigError("logging_level", self.logging_level, ", ".join(LOGGING_LEVELS))
        self._set("logging_level", self.logging_level.upper())
        env = self.environment_variables or {}
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and k for k in env):
            raise ConfigError("environment_variables", env, "a mapping of variable names to string values")
        self._set("environment_variables", {k: str(v) for k, v in env.items()})
        rmi = self.resource_monitor_interval
        if isinstance(rmi, bool) or not isinstance(rmi, (int, float)) or not rmi >= 0:
            raise ConfigError(
                "resource_monitor_interval", rmi, "a number of seconds >= 0 (0 turns monitoring off)"
            )
        if not math.isfinite(rmi):
            raise ConfigError(
                "resource_monitor_interval", rmi, "a finite number of seconds >= 0 (0 turns monitoring off)"
            )

    def _check_watchdog_and_speculation(self) -> None:
        """progress_update_timeout and first_task_creation_timeout (None: derived, see their properties),
        speculative_execution and speculation_multiplier."""
        for name in ("progress_update_timeout", "first_task_creation_timeout"):
            value = getattr(self, name)
            if value is not None:
                self._set(name, _check_positive_number(name, value))
        if not isinstance(self.speculative_execution, bool):
            raise ConfigError("speculative_execution", self.speculative_execution, "True or False")
        if self.speculative_execution and self.max_concurrency_per_process > 1:
            # the copy that loses is stopped by ending its process, which would end the other
            # mini-batches in flight there (async run())
            raise ConfigError(
                "speculative_execution",
                self.speculative_execution,
                "False when max_concurrency_per_process > 1 (a losing copy is stopped by ending its process, "
                "which holds other mini-batches of an async run())",
            )
        k = self.speculation_multiplier
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or not k > 1:
            raise ConfigError(
                "speculation_multiplier", k, "a finite number > 1 (times the median mini-batch duration)"
            )
        self._set("speculation_multiplier", float(k))

    @property
    def progress_update_limit(self) -> float:
        """Seconds without any attempt ending (succeeded, failed or retried) before the job fails:
        `progress_update_timeout`, or by default Azure's 3 x (run_invocation_timeout +
        task_overhead_timeout), where task overhead is loading a mini-batch (`TASK_OVERHEAD_S`, Azure's
        current default): 1980 s with the defaults. An attempt takes at most init() + loading + run(),
        so the default never stops a job whose attempts all keep within their own timeouts."""
        if self.progress_update_timeout is not None:
            return self.progress_update_timeout
        return 3 * (self.run_invocation_timeout + TASK_OVERHEAD_S)

    @property
    def first_task_creation_limit(self) -> float:
        """Seconds from the start of the job's attempts until some entry-script process must be ready
        (its init() returned): `first_task_creation_timeout`, or by default Azure's 600 s, or
        run_invocation_timeout when that is longer (init() may legitimately run that long)."""
        if self.first_task_creation_timeout is not None:
            return self.first_task_creation_timeout
        return max(FIRST_TASK_CREATION_DEFAULT_S, self.run_invocation_timeout)

    @property
    def entry_script_path(self) -> str:
        if self.source_directory:
            return os.path.join(self.source_directory, self.entry_script)
        return self.entry_script

    @property
    def output_file_name(self) -> str:
        """`append_row_file_name`, or the default name for `append_row_format`."""
        if self.append_row_file_name is not None:
            return self.append_row_file_name
        return f"{DEFAULT_FILE_STEM}.{get_format(self.append_row_format).extension}"

    @property
    def processes_per_node(self) -> int:
        return self.process_count_per_node or (os.cpu_count() or 1)

    def check_batch_format(self, kind: str) -> None:
        """`batch_format` is what run() receives for a tabular mini-batch: a job of files (run() gets a
        list of local paths) with batch_format="pyarrow" is refused before any work runs."""
        if kind != "tabular" and self.batch_format != "pandas":
            raise ConfigError(
                "batch_format",
                self.batch_format,
                f'"pandas" (the default) for {kind} input: run() gets a list of local file paths, which '
                "has no batch format; use a TabularDataset to get pyarrow Tables",
            )

    def mini_batch_size_for(self, tabular: bool) -> int:
        """The effective mini-batch size: files (file input) or bytes (tabular input)."""
        default = DEFAULT_TABULAR_MINI_BATCH if tabular else DEFAULT_FILE_MINI_BATCH
        return parse_mini_batch_size(
            self.mini_batch_size if self.mini_batch_size is not None else default, tabular=tabular
        )

    def with_overrides(self, **overrides: Any) -> ParallelRunConfig:
        """A copy with the given fields replaced (None values are ignored); validated again."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(unknown[0], overrides[unknown[0]], "one of " + ", ".join(sorted(names)))
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

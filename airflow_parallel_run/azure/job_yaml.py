"""Azure ML v2 parallel jobs (`type: parallel`) from their YAML: the settings, inputs and arguments of one job.

Accepted files: a parallel job or parallel component (`type: parallel` at the top), or a pipeline job
(`type: pipeline`) whose `jobs:` hold the parallel job (one, or the one named). A pipeline node may point at a
component file (`component: ./parallel_train.yml`); its own settings win over the component's.

Every key is accounted for. Keys that set what the job does are mapped to `ParallelRunConfig` fields, inputs and
arguments (docs/azure.md has the table); keys that name Azure resources (`compute`, `task.environment`,
`resources.instance_type`, `identity`, ...) have no effect here and are listed in `AzureJob.not_used` so the
caller shows them; anything else is a `ConfigError` naming the key. Inputs that point into Azure (`azureml:`
assets and datastores, the outputs of other pipeline jobs) are given locally with an input map
(`--input NAME=PATH_OR_URL`); `${{inputs.x}}` / `${{outputs.x}}` in `program_arguments` are replaced by the
values, and `$[[...]]` groups are kept only when the optional inputs in them have values, as Azure does.
The PRS driver options inside `program_arguments` (`--allowed_failed_percent`, ...) are read as Azure's driver
reads them (`prs_arguments`).
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, TabularDataset

from .mltable import MLTable, is_mltable, load_mltable
from .prs_arguments import PrsArguments, split_prs_arguments

DATA_TYPES = ("uri_folder", "uri_file", "mltable", "mlflow_model", "custom_model", "triton_model")
LITERAL_TYPES = ("string", "integer", "number", "boolean")
_INPUT_KEYS = (
    "type",
    "path",
    "mode",
    "default",
    "optional",
    "description",
    "min",
    "max",
    "enum",
    "datastore",
)
_OUTPUT_KEYS = ("type", "path", "mode", "description", "name", "version", "datastore")
_BINDING = re.compile(r"\$\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_OPTIONAL_GROUP = re.compile(r"\$\[\[(.*?)\]\]", re.S)
_MAX_TIMEOUT_S = 259200  # retry_settings.timeout: (0, 3 days]

#: Keys of a parallel job or component that have no effect here, and why (shown, never dropped silently).
NOT_USED = {
    "$schema": None,
    "name": None,
    "version": None,
    "display_name": None,
    "description": None,
    "tags": None,
    "properties": None,
    "experiment_name": None,
    "is_anonymous": None,
    "compute": "the job runs on the embedded Dask cluster, or on the Dask scheduler given (--scheduler / "
    "dask_conn_id)",
    "identity": "credentials come from the environment, or storage_options / storage_conn_id",
    "docker_args": "entry scripts run in the Dask workers' environment, not in a container of their own",
    "shm_size": "entry scripts run in the Dask workers' environment, not in a container of their own",
    "services": "no interactive services are started",
    "queue_settings": "there is no job queue: the job starts at once",
    "creation_context": None,
    "status": None,
    "id": None,
}
NOT_USED_RESOURCES = {
    "instance_type": "the workers' machines are those of the Dask cluster",
    "shm_size": "entry scripts run in the Dask workers' environment, not in a container of their own",
    "docker_args": "entry scripts run in the Dask workers' environment, not in a container of their own",
    "properties": None,
    "locations": None,
}
NOT_USED_TASK = {
    "environment": "the entry script runs in the Dask workers' Python environment (install its packages there)",
}
MAPPED = (
    "type",
    "inputs",
    "outputs",
    "input_data",
    "mini_batch_size",
    "partition_keys",
    "resources",
    "max_concurrency_per_instance",
    "mini_batch_error_threshold",
    "error_threshold",
    "retry_settings",
    "logging_level",
    "environment_variables",
    "task",
    "is_deterministic",
    "component",
)
TASK_KEYS = (
    "type",
    "code",
    "entry_script",
    "program_arguments",
    "args",
    "append_row_to",
    "environment",
    "model",
)
PIPELINE_KEYS = (
    "$schema",
    "type",
    "name",
    "display_name",
    "description",
    "experiment_name",
    "tags",
    "properties",
    "settings",
    "inputs",
    "outputs",
    "jobs",
    "compute",
    "identity",
)


@dataclass(frozen=True)
class _Value:
    """An input's value: `data` inputs (files, folders, tables, models) are read, the others are literals."""

    kind: str | None
    value: Any
    data: bool


@dataclass(frozen=True)
class AzureJob:
    """A v2 parallel job as the engine runs it: the fields of a job request, and what was not taken over."""

    name: str
    source: str
    config: ParallelRunConfig
    inputs: tuple[FileDataset | TabularDataset, ...]
    side_inputs: tuple[str, ...] = ()
    arguments: tuple[str, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)  # output name -> folder, for ${{outputs.x}}
    allow_reuse: bool = True
    mltables: tuple[MLTable, ...] = ()  # MLTable inputs as parsed (their column steps, notes)
    not_used: tuple[str, ...] = ()  # "key: why" for keys with no effect here
    warnings: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        """Lines to show before the job runs."""
        return [f"not used: {n}" for n in self.not_used] + [f"warning: {w}" for w in self.warnings]


def parse_name_map(items: Sequence[str], flag: str = "--input") -> dict[str, str]:
    """`NAME=PATH_OR_URL` items (the value may hold '='); each name once."""
    mapping: dict[str, str] = {}
    for item in items:
        name, eq, value = str(item).partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not value.strip():
            raise ConfigError(flag, item, "NAME=PATH_OR_URL, NAME being an input or output of the job's YAML")
        if name in mapping:
            raise ConfigError(flag, item, f"each name once ({name} is given twice)")
        mapping[name] = value.strip()
    return mapping


def _read_yaml(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError("azure_job", path, "an existing Azure ML job or component YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("azure_job", path, f"a readable YAML file ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("azure_job", path, f"valid YAML ({exc})") from exc


def _is_remote(value: str) -> bool:
    return "://" in value and not value.startswith("file://")


def _local(value: str, base: str) -> str:
    """A path of the YAML made absolute against the YAML's folder; URLs unchanged."""
    value = value.removeprefix("file://")
    if _is_remote(value):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


class _JobReader:
    def __init__(
        self,
        path: str,
        input_map: Mapping[str, str],
        output_map: Mapping[str, str],
        output_path: str,
        job_name: str | None,
        storage_options: Mapping[str, Any],
    ) -> None:
        self.path = os.path.abspath(path)
        self.input_map = dict(input_map)
        self.output_map = dict(output_map)
        self.output_path = output_path
        self.job_name = job_name
        self.storage_options = dict(storage_options)
        self.not_used: list[str] = []
        self.warnings: list[str] = []
        self.parent_inputs: dict[str, Any] = {}
        self.parent_base = os.path.dirname(self.path)

    # -- finding the parallel job ------------------------------------------------------------------------------
    def node(self) -> tuple[str, dict[str, Any], str]:
        """(name, the parallel job's keys (component merged), the folder its relative paths start from)."""
        document = _read_yaml(self.path)
        if not isinstance(document, Mapping):
            raise ConfigError(
                "azure_job", self.path, "a YAML mapping (a parallel job, component or pipeline job)"
            )
        kind = document.get("type")
        base = os.path.dirname(self.path)
        if kind == "parallel":
            if self.job_name is not None and self.job_name != document.get("name"):
                raise ConfigError("azure_job_name", self.job_name, "the name of a job in a pipeline job YAML")
            return (
                str(document.get("name") or os.path.splitext(os.path.basename(self.path))[0]),
                dict(document),
                base,
            )
        if kind != "pipeline":
            raise ConfigError(
                "type", kind, "parallel (a parallel job or component) or pipeline (a pipeline job)"
            )
        for key, value in document.items():
            if key not in PIPELINE_KEYS:
                raise ConfigError(key, value, "a key of a pipeline job: " + ", ".join(PIPELINE_KEYS))
        if document.get("settings"):
            self.not_used.append(f"settings: {sorted(document['settings'])} (pipeline settings are not used)")
        if document.get("outputs"):
            self.not_used.append("outputs (of the pipeline): the parallel job's own outputs are used")
        self.parent_inputs = dict(document.get("inputs") or {})
        jobs = document.get("jobs")
        if not isinstance(jobs, Mapping) or not jobs:
            raise ConfigError("jobs", jobs, "the pipeline's jobs, one of them of type parallel")
        parallel = [
            n for n, j in jobs.items() if isinstance(j, Mapping) and self._job_type(j, base) == "parallel"
        ]
        if self.job_name is not None:
            if self.job_name not in parallel:
                raise ConfigError(
                    "azure_job_name", self.job_name, f"one of the pipeline's parallel jobs {parallel}"
                )
            chosen = self.job_name
        elif len(parallel) == 1:
            chosen = parallel[0]
        else:
            raise ConfigError(
                "jobs",
                parallel,
                "exactly one parallel job, or name it (--azure-job-name / job_name)",
            )
        for name, job in jobs.items():
            if name != chosen:
                kind_of = self._job_type(job, base) if isinstance(job, Mapping) else "?"
                self.not_used.append(
                    f"jobs.{name} (type: {kind_of}): not run here; give what {chosen} reads from it with "
                    "--input NAME=PATH_OR_URL"
                )
        node = dict(jobs[chosen])
        return chosen, self._with_component(node, base, f"jobs.{chosen}"), base

    def _job_type(self, job: Mapping[str, Any], base: str) -> Any:
        if "type" in job:
            return job["type"]
        component = job.get("component")
        if isinstance(component, str) and not component.startswith("azureml:"):
            loaded = _read_yaml(_local(component, base))
            if isinstance(loaded, Mapping):
                return loaded.get("type")
        return None

    def _with_component(self, node: dict[str, Any], base: str, where: str) -> dict[str, Any]:
        component = node.pop("component", None)
        if component is None:
            return node
        if not isinstance(component, str) or component.startswith("azureml:"):
            raise ConfigError(
                f"{where}.component",
                component,
                "a component YAML file next to the pipeline (a registered azureml: component cannot be fetched)",
            )
        path = _local(component, base)
        loaded = _read_yaml(path)
        if not isinstance(loaded, Mapping) or loaded.get("type") != "parallel":
            raise ConfigError(f"{where}.component", component, "a parallel component YAML (type: parallel)")
        merged = dict(loaded)
        merged["_component_base"] = os.path.dirname(path)
        declared = dict(loaded.get("inputs") or {})
        for key, value in node.items():
            if key == "inputs":  # the node binds values to the component's declared inputs
                bound = dict(declared)
                for name, binding in (value or {}).items():
                    if name not in declared:
                        raise ConfigError(
                            f"{where}.inputs.{name}",
                            binding,
                            f"one of the component's inputs {sorted(declared)}",
                        )
                    bound[name] = binding
                merged["inputs"] = bound
                merged["_node_inputs"] = set((value or {}).keys())
            elif key == "outputs":
                outputs = dict(loaded.get("outputs") or {})
                outputs.update(value or {})
                merged["outputs"] = outputs
            elif key in ("resources", "retry_settings") and isinstance(value, Mapping):
                merged[key] = {**dict(loaded.get(key) or {}), **dict(value)}
            elif value is not None:
                merged[key] = value
        return merged

    # -- inputs ------------------------------------------------------------------------------------------------
    def resolve_inputs(self, declared: Mapping[str, Any], base: str) -> dict[str, _Value]:
        """Every input's value; a required one without a value is an error naming the flag that gives it."""
        unknown = sorted(set(self.input_map) - set(declared))
        if unknown:
            raise ConfigError("--input", unknown[0], f"an input of the job: {sorted(declared)}")
        return {name: self._input(name, spec, base) for name, spec in declared.items()}

    def _input(self, name: str, spec: Any, base: str) -> _Value:
        where = f"inputs.{name}"
        kind: str | None = None
        optional = False
        value: Any = spec
        data = False
        if isinstance(spec, Mapping):
            for key in spec:
                if key not in _INPUT_KEYS:
                    raise ConfigError(f"{where}.{key}", spec[key], "an input key: " + ", ".join(_INPUT_KEYS))
            kind = spec.get("type")
            if kind is not None and kind not in DATA_TYPES + LITERAL_TYPES:
                raise ConfigError(f"{where}.type", kind, ", ".join(DATA_TYPES + LITERAL_TYPES))
            optional = bool(spec.get("optional", False))
            data = kind in DATA_TYPES or (kind is None and "path" in spec)
            value = spec.get("path", spec.get("default"))
            if data and isinstance(value, str) and not value.startswith("azureml:") and "${{" not in value:
                value = _local(value, base)
        if name in self.input_map:
            given = self.input_map[name]
            return _Value(kind, _local(given, os.getcwd()) if data else given, data)
        if isinstance(value, str) and _BINDING.fullmatch(value.strip()):
            return self._bound(name, kind, data, value.strip(), optional)
        if isinstance(value, str) and value.startswith("azureml:"):
            raise ConfigError(
                where,
                value,
                f"a local path or fsspec URL: an Azure ML asset or datastore cannot be read from here; give it with "
                f"--input {name}=PATH_OR_URL",
            )
        if value is None and not optional:
            raise ConfigError(where, None, f"a value: give it with --input {name}=VALUE")
        return _Value(kind, value, data)

    def _bound(self, name: str, kind: str | None, data: bool, binding: str, optional: bool) -> _Value:
        target = _BINDING.fullmatch(binding).group(1)  # type: ignore[union-attr]
        parts = target.split(".")
        if parts[:2] == ["parent", "inputs"] and len(parts) == 3 and parts[2] in self.parent_inputs:
            parent = self._input(parts[2], self.parent_inputs[parts[2]], self.parent_base)
            return _Value(kind or parent.kind, parent.value, data or parent.data)
        if optional:
            return _Value(kind, None, data)
        raise ConfigError(
            f"inputs.{name}",
            binding,
            f"a value: {binding} is not produced here (other pipeline jobs are not run); give it with "
            f"--input {name}=PATH_OR_URL",
        )

    def resolve_outputs(self, declared: Mapping[str, Any], base: str) -> dict[str, tuple[str | None, str]]:
        """name -> (type, folder or file location) for every output."""
        unknown = sorted(set(self.output_map) - set(declared))
        if unknown:
            raise ConfigError("--job-output", unknown[0], f"an output of the job: {sorted(declared)}")
        resolved: dict[str, tuple[str | None, str]] = {}
        for name, spec in declared.items():
            kind = None
            path = None
            if isinstance(spec, Mapping):
                for key in spec:
                    if key not in _OUTPUT_KEYS:
                        raise ConfigError(
                            f"outputs.{name}.{key}", spec[key], "an output key: " + ", ".join(_OUTPUT_KEYS)
                        )
                kind = spec.get("type")
                path = spec.get("path")
            if name in self.output_map:
                resolved[name] = (kind, _local(self.output_map[name], os.getcwd()))
            elif isinstance(path, str) and not path.startswith("azureml:") and "${{" not in path:
                resolved[name] = (kind, _local(path, base))
            else:
                join = posixpath.join if _is_remote(self.output_path) else os.path.join
                resolved[name] = (kind, join(self.output_path, name))
        return resolved


def _int(where: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(where, value, f"an integer >= {minimum}")
    return value


def _substitute(
    text: str, inputs: Mapping[str, _Value], outputs: Mapping[str, tuple[str | None, str]]
) -> list[str]:
    """`program_arguments` with `$[[...]]` groups and `${{...}}` bindings resolved, split like a shell line."""

    def value_of(target: str) -> str | None:
        scope, _, name = target.partition(".")
        if scope == "inputs" and name in inputs:
            value = inputs[name].value
            return None if value is None else str(value)
        if scope == "outputs" and name in outputs:
            return outputs[name][1]
        raise ConfigError(
            "task.program_arguments", "${{" + target + "}}", "bindings of the job's inputs and outputs"
        )

    def group(match: re.Match[str]) -> str:
        inner = match.group(1)
        return inner if all(value_of(t) is not None for t in _BINDING.findall(inner)) else ""

    text = _OPTIONAL_GROUP.sub(group, text)
    tokens = shlex.split(text, posix=True)
    out = []
    for token in tokens:
        missing = [t for t in _BINDING.findall(token) if value_of(t) is None]
        if missing:
            raise ConfigError(
                "task.program_arguments",
                token,
                f"values for {', '.join(missing)}: an optional input used outside $[[...]] must be given",
            )
        out.append(_BINDING.sub(lambda m: str(value_of(m.group(1))), token))
    return out


def load_azure_job(
    path: str,
    *,
    output_path: str,
    input_map: Mapping[str, str] | None = None,
    output_map: Mapping[str, str] | None = None,
    job_name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> AzureJob:
    """The parallel job of the YAML at `path`, with its inputs given by `input_map` where the YAML points into
    Azure, and its outputs other than `append_row_to` under `output_path` unless `output_map` names them.

    The steps check the YAML in the order a reader meets it (keys, task, resources, inputs and outputs,
    input_data, entry script, arguments, settings, append_row_to), so the first error named is the
    first wrong thing in the file."""
    reader = _JobReader(path, input_map or {}, output_map or {}, output_path, job_name, storage_options or {})
    name, job, base = reader.node()
    component_base = job.pop("_component_base", base)
    job.pop("_node_inputs", None)
    _check_job_keys(job, reader)
    task = _task_of(job, reader)
    _check_resources(job, reader)
    inputs = reader.resolve_inputs(dict(job.get("inputs") or {}), component_base)
    outputs = reader.resolve_outputs(dict(job.get("outputs") or {}), component_base)
    data_name, dataset, mltables = _input_to_split(job, inputs, reader)
    side_inputs = tuple(
        str(v.value)
        for input_name, v in inputs.items()
        if input_name != data_name and v.value is not None and v.data
    )
    code, entry = _code_and_entry_script(task)
    prs = split_prs_arguments(_program_arguments(task, inputs, outputs))
    reader.warnings.extend(prs.warnings)
    settings = _settings(job, reader)
    _apply_driver_options(settings, prs)
    outputs = _apply_append_row_to(job, task, outputs, settings, reader)
    config = ParallelRunConfig(
        entry_script=entry.strip(),
        source_directory=_local(code, component_base),
        **settings,
    )
    allow_reuse = job.get("is_deterministic", True)
    if not isinstance(allow_reuse, bool):
        raise ConfigError("is_deterministic", allow_reuse, "true or false")
    return AzureJob(
        name=name,
        source=reader.path,
        config=config,
        inputs=(dataset,),
        side_inputs=side_inputs,
        arguments=tuple(prs.script_arguments),
        outputs={k: v[1] for k, v in outputs.items()},
        allow_reuse=allow_reuse,
        mltables=tuple(mltables),
        not_used=tuple(reader.not_used),
        warnings=tuple(reader.warnings),
    )


def _check_job_keys(job: Mapping[str, Any], reader: _JobReader) -> None:
    """Every top-level key is one the engine maps or one it knows to have no effect here (noted): an
    unknown key is most likely a typo that would silently change nothing."""
    for key, value in job.items():
        if key in MAPPED:
            continue
        if key in NOT_USED:
            if NOT_USED[key]:
                reader.not_used.append(f"{key}: {NOT_USED[key]}")
            continue
        raise ConfigError(key, value, "a key of a parallel job: " + ", ".join(sorted((*MAPPED, *NOT_USED))))


def _task_of(job: Mapping[str, Any], reader: _JobReader) -> Mapping[str, Any]:
    """The `task` mapping of a run_function job; a model given as task.model is refused (the engine
    has no model registry: a model is an input), task.environment is noted as not used."""
    task = job.get("task")
    if not isinstance(task, Mapping):
        raise ConfigError("task", task, "a mapping with code, entry_script and program_arguments")
    for key in task:
        if key not in TASK_KEYS:
            raise ConfigError(f"task.{key}", task[key], "a task key: " + ", ".join(TASK_KEYS))
    if task.get("type", "run_function") not in ("run_function", "function"):
        raise ConfigError("task.type", task.get("type"), "run_function")
    if task.get("model") is not None:
        raise ConfigError("task.model", task["model"], "no task.model: give the model as an input instead")
    if task.get("environment") is not None:
        reader.not_used.append(f"task.environment: {NOT_USED_TASK['environment']}")
    return task


def _check_resources(job: Mapping[str, Any], reader: _JobReader) -> None:
    """`resources`: instance_count is a setting (read by `_settings`); the other keys of Azure's
    resource configuration are noted as not used, unknown ones refused."""
    resources = job.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise ConfigError("resources", resources, "a mapping with instance_count")
    for key, value in resources.items():
        if key == "instance_count":
            continue
        if key not in NOT_USED_RESOURCES:
            raise ConfigError(f"resources.{key}", value, "instance_count, " + ", ".join(NOT_USED_RESOURCES))
        if NOT_USED_RESOURCES[key]:
            reader.not_used.append(f"resources.{key}: {NOT_USED_RESOURCES[key]}")


def _input_to_split(
    job: Mapping[str, Any], inputs: Mapping[str, _Value], reader: _JobReader
) -> tuple[str, Any, list[MLTable]]:
    """The input `input_data` binds, as the dataset the engine splits into mini-batches: its name, the
    dataset, and the MLTable it was read from (if any). A folder holding an MLTable file must be typed
    mltable: as a uri_folder, run() would get the MLTable file as one of its items."""
    binding = job.get("input_data")
    match = _BINDING.fullmatch(str(binding).strip()) if binding is not None else None
    if match is None or not match.group(1).startswith("inputs.") or match.group(1)[7:] not in inputs:
        raise ConfigError(
            "input_data", binding, f"${{{{inputs.NAME}}}} naming one of the job's inputs {sorted(inputs)}"
        )
    data_name = match.group(1)[7:]
    data_kind, data_value = inputs[data_name].kind, inputs[data_name].value
    if data_value is None:
        raise ConfigError(
            f"inputs.{data_name}", None, f"a value: give it with --input {data_name}=PATH_OR_URL"
        )
    mltables: list[MLTable] = []
    options = reader.storage_options
    if data_kind == "mltable" or (data_kind is None and is_mltable(str(data_value), options)):
        table = load_mltable(str(data_value), options)
        reader.not_used.extend(table.notes)
        mltables.append(table)
        dataset: Any = table.engine_dataset()
    elif data_kind in (None, "uri_folder", "uri_file"):
        if data_kind == "uri_folder" and is_mltable(str(data_value), options):
            raise ConfigError(
                f"inputs.{data_name}.type",
                data_kind,
                "mltable: the folder holds an MLTable file, which a uri_folder would hand to run() as one of its "
                "files (type: mltable reads the folder as its YAML says)",
            )
        dataset = FileDataset.from_files(str(data_value), storage_options=options or None)
    else:
        raise ConfigError(
            f"inputs.{data_name}.type", data_kind, "mltable, uri_folder or uri_file (input_data)"
        )
    return data_name, dataset, mltables


def _code_and_entry_script(task: Mapping[str, Any]) -> tuple[str, str]:
    """task.code (the folder) and task.entry_script (the file in it): both required, both non-empty."""
    code = task.get("code")
    entry = task.get("entry_script")
    if not isinstance(code, str) or not code.strip():
        raise ConfigError("task.code", code, "the folder holding the entry script")
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError("task.entry_script", entry, "the entry script's file name inside task.code")
    return code, entry


def _program_arguments(
    task: Mapping[str, Any], inputs: Mapping[str, _Value], outputs: Mapping[str, tuple[str | None, str]]
) -> list[str]:
    """task.program_arguments (or the older task.args) as argv, bindings resolved: a command line
    string, or a list of its tokens."""
    program = task.get("program_arguments", task.get("args"))
    if program is None:
        return []
    if isinstance(program, str):
        return _substitute(program, inputs, outputs)
    if isinstance(program, list) and all(isinstance(a, (str, int, float)) for a in program):
        return [t for a in program for t in _substitute(str(a), inputs, outputs)]
    raise ConfigError("task.program_arguments", program, "a command line string")


def _apply_driver_options(settings: dict[str, Any], prs: PrsArguments) -> None:
    """Adds the driver options of program_arguments (`--error_threshold 5`, ...) to `settings`; one that
    contradicts the YAML key for the same field is refused rather than one of them silently winning."""
    for config_field, value in prs.settings.items():
        if config_field in settings and settings[config_field] != value:
            raise ConfigError(
                f"task.program_arguments {prs.given[config_field]}",
                value,
                f"the value the YAML gives ({_YAML_KEY[config_field]}: {settings[config_field]!r}) or none",
            )
        settings[config_field] = value


def _apply_append_row_to(
    job: Mapping[str, Any],
    task: Mapping[str, Any],
    outputs: dict[str, tuple[str | None, str]],
    settings: dict[str, Any],
    reader: _JobReader,
) -> dict[str, tuple[str | None, str]]:
    """Sets the output action from task.append_row_to and returns the job's other outputs.

    Without append_row_to the job is summary_only, as in Azure. With it, the named output is the job's
    own output file (its uri_file name, if fixed, becomes append_row_file_name), so it cannot also be
    mapped with --job-output and is not one of the outputs the entry script writes to."""
    append = task.get("append_row_to")
    if append is None:
        settings.setdefault("output_action", "summary_only")
        return outputs
    target = _BINDING.fullmatch(str(append).strip())
    if target is None or not target.group(1).startswith("outputs.") or target.group(1)[8:] not in outputs:
        raise ConfigError(
            "task.append_row_to",
            append,
            f"${{{{outputs.NAME}}}} naming one of the job's outputs {sorted(outputs)}",
        )
    out_name = target.group(1)[8:]
    if out_name in reader.output_map:
        raise ConfigError(
            "--job-output",
            out_name,
            "an output other than append_row_to's: its file goes to the job's output folder",
        )
    settings.setdefault("output_action", "append_row")
    out_kind = outputs[out_name][0]
    spec = (job.get("outputs") or {}).get(out_name)
    out_path = spec.get("path") if isinstance(spec, Mapping) else None
    if out_kind == "uri_file" and isinstance(out_path, str):
        file_name = posixpath.basename(out_path.rstrip("/"))
        if file_name and "${{" not in file_name:
            settings.setdefault("append_row_file_name", file_name)
    return {k: v for k, v in outputs.items() if k != out_name}


#: The YAML key behind each config field (for messages).
_YAML_KEY = {
    "mini_batch_size": "mini_batch_size",
    "partition_keys": "partition_keys",
    "error_threshold": "error_threshold",
    "allowed_failed_count": "mini_batch_error_threshold",
    "node_count": "resources.instance_count",
    "process_count_per_node": "max_concurrency_per_instance",
    "run_max_try": "retry_settings.max_retries",
    "run_invocation_timeout": "retry_settings.timeout",
    "logging_level": "logging_level",
    "environment_variables": "environment_variables",
    "allowed_failed_percent": "--allowed_failed_percent",
    "resource_monitor_interval": "--resource_monitor_interval",
    "output_action": "task.append_row_to",
    "append_row_file_name": "task.append_row_to",
}


def _settings(job: Mapping[str, Any], reader: _JobReader) -> dict[str, Any]:
    """The ParallelRunConfig fields the job's keys set (absent keys keep the engine's defaults, which are
    Azure's: 10 files or 1 MB, thresholds off, 2 retries, 60 s)."""
    settings: dict[str, Any] = {}
    size = job.get("mini_batch_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, str)):
            raise ConfigError(
                "mini_batch_size", size, "a number of files, or a size like '10kb' for mltable input"
            )
        settings["mini_batch_size"] = size
    keys = job.get("partition_keys")
    if keys is not None:
        if isinstance(keys, str):  # the SDK's JSON form '["Store", "Brand"]', or a single key
            import json

            try:
                keys = json.loads(keys) if keys.strip().startswith("[") else [keys]
            except ValueError:
                raise ConfigError("partition_keys", keys, "a list of key names") from None
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError("partition_keys", keys, "a list of key names")
        settings["partition_keys"] = keys
    if job.get("error_threshold") is not None:
        settings["error_threshold"] = _int("error_threshold", job["error_threshold"], -1)
    if job.get("mini_batch_error_threshold") is not None:
        value = _int("mini_batch_error_threshold", job["mini_batch_error_threshold"], -1)
        settings["allowed_failed_count"] = value
    count = (job.get("resources") or {}).get("instance_count")
    if count is not None:
        settings["node_count"] = _int("resources.instance_count", count, 1)
    if job.get("max_concurrency_per_instance") is not None:
        settings["process_count_per_node"] = _int(
            "max_concurrency_per_instance", job["max_concurrency_per_instance"], 1
        )
    retry = job.get("retry_settings") or {}
    if not isinstance(retry, Mapping):
        raise ConfigError("retry_settings", retry, "a mapping with max_retries and timeout")
    for key, value in retry.items():
        if key == "max_retries":
            settings["run_max_try"] = _int("retry_settings.max_retries", value, 0) + 1
        elif key == "timeout":
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value <= _MAX_TIMEOUT_S
            ):
                raise ConfigError(
                    "retry_settings.timeout", value, f"a number of seconds > 0 and <= {_MAX_TIMEOUT_S}"
                )
            settings["run_invocation_timeout"] = value
        else:
            raise ConfigError(f"retry_settings.{key}", value, "max_retries or timeout")
    level = job.get("logging_level")
    if level is not None:
        if not isinstance(level, str) or level.upper() not in ("DEBUG", "INFO", "WARNING"):
            raise ConfigError("logging_level", level, "DEBUG, INFO or WARNING")
        settings["logging_level"] = level.upper()
    env = job.get("environment_variables")
    if env is not None:
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and k for k in env):
            raise ConfigError("environment_variables", env, "a mapping of variable names to values")
        settings["environment_variables"] = {k: "" if v is None else str(v) for k, v in env.items()}
    return settings


__all__ = ["AzureJob", "load_azure_job", "parse_name_map"]

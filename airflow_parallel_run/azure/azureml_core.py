"""The two `azureml.core` calls v1 entry scripts make, answered locally: `Model.get_model_path` and
`Run.get_context`.

Outside Azure there is no workspace to download a registered model from, and no run to log metrics to. A
script's `Model.get_model_path("mnist-prs")` therefore resolves in the models folder named by `AZUREML_MODEL_DIR`
(give the folder as a side input and the variable in `environment_variables`), laid out as Azure lays out
downloaded models: `<name>/<version>/<the model file or folder>`, or simply `<name>` (a file or folder). A
missing model is an error that lists what the folder holds. `Run.get_context()` is an offline run, as
azureml-core's own outside a job: what the script logs through it goes to the entry-script log.

`airflow_parallel_run.azure.azureml_fallback` makes these importable as `azureml.core` only where no real
`azureml-core` is installed.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

MODEL_DIR_ENV = "AZUREML_MODEL_DIR"


class ModelNotFoundException(Exception):
    """No model of that name (and version) in the models folder; the message lists what is there."""


class WebserviceException(Exception):
    """azureml-core's error for a bad `get_model_path` call (a version that is not an int)."""


def _listing(root: str, limit: int = 40) -> str:
    entries: list[str] = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            children = sorted(os.listdir(path))
            versions = [c for c in children if c.isdigit() and os.path.isdir(os.path.join(path, c))]
            entries.append(
                f"{name} (versions {', '.join(sorted(versions, key=int))})" if versions else f"{name}/"
            )
        else:
            entries.append(name)
    shown = entries[:limit] + ([f"... {len(entries) - limit} more"] if len(entries) > limit else [])
    return ", ".join(shown) if shown else "nothing"


class Model:
    """`azureml.core.Model`, for `get_model_path` only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "azureml.core.Model(workspace, ...) needs an Azure ML workspace; outside Azure only "
            "Model.get_model_path(name, version=None) is available (it reads the folder in AZUREML_MODEL_DIR)"
        )

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        """The local path of model `model_name`: `$AZUREML_MODEL_DIR/<name>[/<version>]`, down to its one
        file or folder as Azure does (the highest version when none is given)."""
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise WebserviceException("version should be an int")
        if not isinstance(model_name, str) or not model_name:
            raise WebserviceException("model_name is None")
        root = os.environ.get(MODEL_DIR_ENV)
        if not root:
            raise ModelNotFoundException(
                f"Model.get_model_path({model_name!r}): {MODEL_DIR_ENV} is not set. Outside Azure ML the models "
                "come from a folder: give it as a side input and set environment_variables="
                f"{{'{MODEL_DIR_ENV}': <that folder>}} (it holds <name>/<version>/<model file or folder>, or "
                "<name> itself)"
            )
        wanted = model_name if version is None else f"{model_name} version {version}"
        if not os.path.isdir(root):
            raise ModelNotFoundException(
                f"Model {wanted} not found: {MODEL_DIR_ENV}={root!r} is not a folder"
            )
        candidate = os.path.join(root, model_name)
        if not os.path.exists(candidate):
            raise ModelNotFoundException(
                f"Model {wanted} not found in {MODEL_DIR_ENV}={root!r}; it holds: {_listing(root)}"
            )
        if os.path.isfile(candidate):
            if version is not None:
                raise ModelNotFoundException(
                    f"Model {wanted} not found in {MODEL_DIR_ENV}={root!r}: {model_name} is a file without "
                    "versions"
                )
            return candidate
        versions = sorted(
            (
                int(c)
                for c in os.listdir(candidate)
                if c.isdigit() and os.path.isdir(os.path.join(candidate, c))
            ),
        )
        if not versions:
            if version is not None:
                raise ModelNotFoundException(
                    f"Model {wanted} not found in {MODEL_DIR_ENV}={root!r}: {model_name}/ has no version folders "
                    "(1, 2, ...)"
                )
            return candidate
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise ModelNotFoundException(
                f"Model {wanted} not found in {MODEL_DIR_ENV}={root!r}; {model_name} has versions "
                f"{', '.join(map(str, versions))}"
            )
        folder = os.path.join(candidate, str(chosen))
        entries = sorted(e for e in os.listdir(folder) if not e.startswith("."))
        if len(entries) != 1:
            raise WebserviceException(
                f"Dir {folder} can contain only 1 file or folder. Found {entries}"
            )  # azureml-core's rule and message: a version folder holds the model's one file or folder
        return os.path.join(folder, entries[0])


def _logger() -> logging.Logger:
    try:
        from airflow_parallel_run.core import EntryScript

        return EntryScript().logger
    except Exception:  # noqa: BLE001 - a unit test of the script without a job still gets a logger
        return logging.getLogger("azureml.core.run")


class Run:
    """`azureml.core.Run`: `Run.get_context()` is an offline run that writes what is logged to the entry-script
    log (`logs/user/entry_script_log/...`), as `run.log(...)` lines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "azureml.core.Run(experiment, run_id) needs an Azure ML workspace; outside Azure use Run.get_context()"
        )

    @classmethod
    def get_context(
        cls, allow_offline: bool = True, used_for_context_manager: bool = False, **kwargs: Any
    ) -> OfflineRun:
        if not allow_offline:
            raise RuntimeError(
                "Run.get_context(allow_offline=False): there is no Azure ML run here; the offline run logs to the "
                "entry-script log"
            )
        return OfflineRun._current()


class OfflineRun:
    """The run outside Azure: metrics, tags and properties are logged and kept in memory."""

    _instance: OfflineRun | None = None

    def __init__(self, parent: OfflineRun | None = None) -> None:
        self.id = f"OfflineRun_{uuid.uuid4()}"
        self._parent = parent
        self.metrics: dict[str, list[Any]] = {}
        self.tags: dict[str, str] = {}
        self.properties: dict[str, str] = {}
        self.experiment = None
        self.input_datasets: dict[str, Any] = {}

    @classmethod
    def _current(cls) -> OfflineRun:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    @property
    def parent(self) -> OfflineRun:
        """The pipeline run: offline too (many-models scripts log to `run.parent`)."""
        if self._parent is None:
            self._parent = OfflineRun()
        return self._parent

    def _log(self, kind: str, name: str, value: Any) -> None:
        self.metrics.setdefault(name, []).append(value)
        who = "run.parent" if self is getattr(OfflineRun._instance, "_parent", None) else "run"
        _logger().info("%s.%s(%r, %r)", who, kind, name, value)

    def log(self, name: str, value: Any, description: str = "", step: int | None = None) -> None:
        self._log("log", name, value)

    def log_list(self, name: str, value: Any, description: str = "") -> None:
        self._log("log_list", name, list(value))

    def log_row(self, name: str, description: str | None = None, **kwargs: Any) -> None:
        self._log("log_row", name, kwargs)

    def log_table(self, name: str, value: Mapping[str, Any], description: str = "") -> None:
        self._log("log_table", name, dict(value))

    def log_image(self, name: str, path: str | None = None, plot: Any = None, description: str = "") -> None:
        self._log("log_image", name, path)

    def tag(self, key: str, value: Any = None) -> None:
        self.tags[key] = "" if value is None else str(value)
        _logger().info("run.tag(%r, %r)", key, value)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.tag(key, value)

    def add_properties(self, properties: Mapping[str, Any]) -> None:
        self.properties.update({k: str(v) for k, v in properties.items()})
        _logger().info("run.add_properties(%r)", dict(properties))

    def get_metrics(self, name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        metrics = {k: v[0] if len(v) == 1 else list(v) for k, v in self.metrics.items()}
        return metrics if name is None else {name: metrics[name]} if name in metrics else {}

    def get_tags(self) -> dict[str, str]:
        return dict(self.tags)

    def get_properties(self) -> dict[str, str]:
        return dict(self.properties)

    def get_status(self) -> str:
        return "Running"

    def upload_file(self, name: str, path_or_stream: Any, **kwargs: Any) -> None:
        _logger().info(
            "run.upload_file(%r, %r): kept where it is (no run history here)", name, path_or_stream
        )

    def complete(self, **kwargs: Any) -> None:
        _logger().info("run.complete()")

    def __repr__(self) -> str:
        return f"OfflineRun(id={self.id!r})"


_NOT_HERE = (
    "needs an Azure ML workspace, which an airflow-parallel-run job does not have: only Model.get_model_path and "
    "Run.get_context are answered locally"
)


def unavailable(module: str, name: str) -> ImportError:
    """The error for any other `azureml.core` name (Workspace, Dataset, Experiment, ...)."""
    return ImportError(f"{module}.{name} {_NOT_HERE}", name=module)

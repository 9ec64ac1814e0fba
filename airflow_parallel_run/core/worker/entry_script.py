"""`EntryScript`: the per-process helper Azure entry scripts use (logger, output_dir, log_dir, ...).

Inside an entry-script process the runner sets `AIRFLOW_PARALLEL_RUN_*` variables; outside one
(a unit test of the user's script), the helper still works and logs to the current directory.
"""

from __future__ import annotations

import logging
import os
import threading
from contextvars import ContextVar
from typing import Any

from ..storage import is_local, local_path

#: The attempt's own output folder inside an `async def run()` (set per asyncio task by the entry-script
#: process), so that mini-batches running at once in one process each see their own `output_dir`.
ATTEMPT_OUTPUT_DIR: ContextVar[str | None] = ContextVar("apr_attempt_output_dir", default=None)

LOG_FORMAT = "%(asctime)s|%(name)s|%(levelname)s|%(process)d|%(thread)d|%(funcName)s()|%(message)s"


class _Singleton(type):
    _instances: dict[type, Any] = {}
    _lock = threading.Lock()

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        with cls._lock:
            if cls not in cls._instances:
                cls._instances[cls] = super().__call__(*args, **kwargs)
            return cls._instances[cls]


class EntryScript(metaclass=_Singleton):
    """Per-process singleton: `logger`, `output_dir`, `working_dir`, `log_dir`, `agent_name`."""

    def __init__(self, logging_level: str | None = None) -> None:
        env = os.environ
        self.agent_name: str = env.get("AIRFLOW_PARALLEL_RUN_AGENT", "process000")
        self.node_id: str = env.get("AIRFLOW_PARALLEL_RUN_NODE", "127.0.0.1")
        self.working_dir: str = env.get("AIRFLOW_PARALLEL_RUN_WORKING_DIR", os.getcwd())
        self.log_dir: str = env.get("AIRFLOW_PARALLEL_RUN_ENTRY_LOG_DIR", os.getcwd())
        self._output_dir: str = env.get("AZUREML_BI_OUTPUT_PATH", os.path.join(os.getcwd(), "output"))
        level = (logging_level or env.get("AIRFLOW_PARALLEL_RUN_LOGGING_LEVEL", "INFO")).upper()
        self.logger = logging.getLogger(f"{self.node_id}_{self.agent_name}")
        self.logger.setLevel(level)
        self.logger.propagate = True
        in_job = "AIRFLOW_PARALLEL_RUN_ENTRY_LOG_DIR" in env
        # Outside a job (a script's own unit test, a notebook) lines go to the caller's logging only: a
        # log file dropped in whatever folder the caller happens to be in would be litter, not a log.
        if in_job and not any(getattr(h, "_apr_entry_log", False) for h in self.logger.handlers):
            os.makedirs(self.log_dir, exist_ok=True)
            handler = logging.FileHandler(
                os.path.join(self.log_dir, f"{self.agent_name}.log.txt"), encoding="utf-8"
            )
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            handler._apr_entry_log = True  # type: ignore[attr-defined]
            self.logger.addHandler(handler)

    @property
    def output_dir(self) -> str:
        """The job's output folder (created on first use); for files written by summary_only scripts.
        Inside an `async def run()` it is the running mini-batch's own folder (`ATTEMPT_OUTPUT_DIR`)."""
        url = ATTEMPT_OUTPUT_DIR.get() or self._output_dir
        if is_local(url):
            os.makedirs(local_path(url), exist_ok=True)
        return url

    def config_log(self) -> None:
        """Kept for Azure compatibility; logging is configured by the runner."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (EntryScript, ())

"""The entry-script process: imports the user's script, runs init() once, then run() per mini-batch.

Started by the worker runner as `python -m airflow_parallel_run.core.worker.child FD`; it talks to
the runner over the socket FD (pickled messages) and writes prints to its own stdout/stderr files.
Killing this process (timeout, crash) never takes the Dask worker down with it.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import inspect
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ..attempt import AttemptStage, AttemptStatus
from ..errors import DataChangedError
from ..minibatch import MiniBatch
from ..storage import is_local, local_path, write_atomic
from .entry_script import EntryScript
from .messages import Bye, Done, Failed, Loaded, Ready, Run, Setup, Shutdown, ToChild

if TYPE_CHECKING:
    from ..output.files import OutputDirWatch


class MiniBatchContext:
    """Second argument of run(mini_batch, mini_batch_context), as in Azure ParallelRunStep."""

    def __init__(self, mini_batch: MiniBatch) -> None:
        self.partition_key_value: dict[str, str] = dict(mini_batch.partition_key_value)
        self.minibatch_index: int = mini_batch.index
        self.dataset: dict[str, Any] = mini_batch.describe()

    def __repr__(self) -> str:
        return (
            f"MiniBatchContext(index={self.minibatch_index}, partition_key_value={self.partition_key_value})"
        )


def _install_azureml_shim() -> None:
    """Lets unmodified Azure scripts `from azureml_user.parallel_run import EntryScript`."""
    try:
        if importlib.util.find_spec("azureml_user") is not None:
            return
    except (ImportError, ValueError):
        pass
    package = types.ModuleType("azureml_user")
    package.__path__ = []
    module = types.ModuleType("azureml_user.parallel_run")
    module.EntryScript = EntryScript  # type: ignore[attr-defined]
    package.parallel_run = module  # type: ignore[attr-defined]
    sys.modules["azureml_user"] = package
    sys.modules["azureml_user.parallel_run"] = module


def _install_azureml_core_fallback() -> None:
    """Lets v1 scripts `from azureml.core import Model, Run` where no azureml-core is installed
    (`Model.get_model_path` reads AZUREML_MODEL_DIR; an installed azureml-core always wins)."""
    from ...azure.azureml_fallback import install_azureml_core_fallback  # Airflow-free, stdlib only

    install_azureml_core_fallback()


def _watch_parent(parent_pid: int) -> None:
    """Exits when the runner that started us is gone (a killed Dask worker), so no entry-script
    process is ever orphaned, and takes what init()/run() started along (see `process_tree`)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            _end_with_leftovers()


def _end_with_leftovers() -> None:
    try:
        from .process_tree import SCOPE_ENV, end_leftovers

        scope = os.environ.get(SCOPE_ENV)
        if scope:
            end_leftovers(None, scope)  # detached ones; the group goes with us below
        if os.getpgrp() == os.getpid():  # our own group (we lead it): its members and us
            os.killpg(os.getpid(), signal.SIGKILL)
    finally:
        os._exit(0)


def _load_script(path: str) -> types.ModuleType:
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import entry script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise AttributeError(f"entry script {path} does not define a callable run(mini_batch)")
    return module


def _wants_context(run: Any) -> bool:
    try:
        params = [
            p
            for p in inspect.signature(run).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


def _failed(status: AttemptStatus, stage: AttemptStage, exc: BaseException) -> Failed:
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    retriable = not isinstance(exc, DataChangedError)  # another try would read the same changed data
    return Failed(status, stage, f"{type(exc).__name__}: {exc}", trace, retriable)


def _point_output_dir(url: str, *, singleton: bool = True) -> None:
    """`AZUREML_BI_OUTPUT_PATH` (and `EntryScript().output_dir`) name `url` from now on; a local
    folder exists, as the job's output folder always did."""
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)
    os.environ["AZUREML_BI_OUTPUT_PATH"] = url
    if singleton:
        EntryScript()._output_dir = url


def _connect(fd: int) -> Connection:
    """The socket the runner passed as `fd`, as a message connection; and a watch on the runner."""
    sock = socket.socket(fileno=fd)
    conn = Connection(os.dup(sock.fileno()))
    sock.close()
    faulthandler.enable(file=sys.stderr, all_threads=True)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    return conn


def _start(conn: Connection, setup: Setup) -> types.ModuleType:
    """Prepares the process as the script expects it, imports the script and runs init(); answers
    `Ready`, or `Failed` and ends the process."""
    logging.basicConfig(
        level=setup.logging_level,
        stream=sys.stdout,
        format="%(asctime)s|%(levelname)s|%(name)s|%(message)s",
    )
    _install_azureml_shim()
    _install_azureml_core_fallback()
    os.chdir(setup.working_dir)
    for folder in (setup.script_dir, os.path.dirname(setup.entry_script)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    sys.argv = [setup.entry_script, *setup.arguments]
    started = time.monotonic()
    # this process's own output_dir (core/output/files.py), before the script may read it on import
    _point_output_dir(setup.output_dir, singleton=False)
    try:
        EntryScript()
        module = _load_script(setup.entry_script)
        init = getattr(module, "init", None)
        if callable(init):
            init()
    except BaseException as exc:  # noqa: BLE001 - every init failure is reported, then the process ends
        conn.send(_failed(AttemptStatus.INIT_EXCEPTION, AttemptStage.INIT, exc))
        sys.stdout.flush()
        os._exit(3)
    conn.send(Ready(time.monotonic() - started))
    return module


def _serve(conn: Connection, module: types.ModuleType, setup: Setup) -> None:
    """Answers `Run` messages until `Shutdown` (or the runner is gone)."""
    from ..output.files import OutputDirWatch

    watch = OutputDirWatch(setup.output_dir, setup.storage_options)
    with_context = _wants_context(module.run)
    while True:
        try:
            message: ToChild = conn.recv()
        except EOFError:
            break
        if isinstance(message, Shutdown):
            shutdown = getattr(module, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:  # noqa: BLE001
                    traceback.print_exc()
            conn.send(Bye())
            break
        assert isinstance(message, Run), message
        load_started = time.monotonic()
        scratch = os.path.join(setup.working_dir, f"mb{message.mini_batch.index:08d}-a{message.attempt}")
        try:
            try:
                source = setup.datasets[message.mini_batch.input_index]
                data, total = source.read(message.mini_batch, scratch)
            except BaseException as exc:  # noqa: BLE001
                conn.send(_failed(AttemptStatus.LOAD_EXCEPTION, AttemptStage.LOAD, exc))
                continue
            mini_batch = message.mini_batch
            conn.send(Loaded(mini_batch.index, message.attempt, total, time.monotonic() - load_started))
            conn.send(_run_one(module.run, with_context, message, data, total, setup, watch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            sys.stdout.flush()
            sys.stderr.flush()


def _run_one(
    run: Any, with_context: bool, message: Run, data: Any, total: int, setup: Setup, watch: OutputDirWatch
) -> Done | Failed:
    """run() on one mini-batch's data, its result checked and (append_row) written as its part."""
    from ..output.results import InvalidResultError, count_result

    cpu_started = time.process_time()
    run_started = time.monotonic()
    try:
        watch.start()
        _point_output_dir(message.files_url)  # this attempt's own folder (core/output/files.py)
        try:
            result = run(data, MiniBatchContext(message.mini_batch)) if with_context else run(data)
            run_seconds = time.monotonic() - run_started
        finally:
            _point_output_dir(setup.output_dir)
            files, uncacheable = watch.finish(message.files_url)
        succeeded = count_result(result, total)
        part_url: str | None = None
        columns: Sequence[str] = ()
        schema: bytes | None = None
        if setup.output_action == "append_row" and succeeded:
            part_url = message.part_url
            columns, schema = _write_part(result, setup.append_row_format, part_url, setup.storage_options)
    except InvalidResultError as exc:
        return Failed(AttemptStatus.RUN_INVALID_RESULT, AttemptStage.RUN, str(exc), str(exc) + "\n")
    except BaseException as exc:  # noqa: BLE001 - run() failures fail the attempt only
        return _failed(AttemptStatus.RUN_EXCEPTION, AttemptStage.RUN, exc)
    return Done(
        message.mini_batch.index,
        message.attempt,
        total,
        succeeded,
        run_seconds,
        time.process_time() - cpu_started,
        part_url,
        tuple(columns),
        schema,
        tuple(files),
        uncacheable,
    )


def _write_part(
    result: Any, fmt: str, url: str, storage_options: Mapping[str, Any]
) -> tuple[Sequence[str], bytes | None]:
    """Encodes a run() result in the output format and writes it whole; returns its columns and schema."""
    from ..output.formats import encode_part

    blob, columns, schema = encode_part(result, fmt)
    write_atomic(url, blob, storage_options)
    return columns, schema


def main(fd: int) -> None:
    conn = _connect(fd)
    setup: Setup = conn.recv()
    module = _start(conn, setup)
    _serve(conn, module, setup)
    sys.stdout.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]))

"""The entry-script process: imports the user's script, runs init() once, then run() per mini-batch.

Started by the worker runner as `python -m airflow_parallel_run.core.worker.child FD`; it talks to
the runner over the socket FD (pickled messages) and writes prints to its own stdout/stderr files.
Killing this process (timeout, crash) never takes the Dask worker down with it.

A synchronous `run()` handles one mini-batch at a time, in this process's main thread. An
`async def run()` (and `async def init()`/`shutdown()`) runs on one asyncio event loop: each `Run`
becomes a task, so up to `max_concurrency_per_process` mini-batches are in flight at once; reading a
mini-batch and writing its part happen in threads so that they do not stall the loop, and
`run_invocation_timeout` cancels the attempt's coroutine here (`RUN_TIMEOUT`) without ending the
process. A coroutine that blocks the loop cannot be cancelled: the runner's own, later deadline kills
the process then (core/worker/attempt.py).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import faulthandler
import gc
import importlib.util
import inspect
import io
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
from typing import TYPE_CHECKING, Any, NoReturn

from ..attempt import AttemptStage, AttemptStatus
from ..errors import DataChangedError
from ..inputs.batch_format import read_batch
from ..inputs.identity import current_identity
from ..inputs.side_check import SideInputCheck
from ..minibatch import MiniBatch
from ..storage import is_local, local_path, write_atomic
from . import side_code
from .entry_script import ATTEMPT_OUTPUT_DIR, EntryScript
from .messages import Bye, Done, Failed, Loaded, Ready, Run, Setup, Shutdown, Started, ToChild
from .undeclared_reads import UndeclaredReads
from .unkeyed_code import UnkeyedCode

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


def is_async(function: Any) -> bool:
    """An `async def` function (or a callable object whose `__call__` is one)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 - a callable object's own __call__
    )


def _keyed(answer: Done | Failed, message: Run) -> Done | Failed:
    """An attempt's `Failed` names its attempt, as `Loaded` and `Done` do (messages.answer_key)."""
    if isinstance(answer, Failed):
        return dataclasses.replace(answer, index=message.mini_batch.index, attempt=message.attempt)
    return answer


def _call(function: Any, loop: asyncio.AbstractEventLoop) -> Any:
    """Calls a hook (init, shutdown); an `async def` one runs to its end on the process's loop."""
    result = function()
    if inspect.isawaitable(result):
        return loop.run_until_complete(result)  # type: ignore[arg-type]
    return result


def _hash_file(path: str) -> str:
    from ..inputs.fingerprint import hash_file  # only when a side input's identity moved

    return hash_file(path)


@dataclasses.dataclass
class _AfterRun:
    """What the process checks after each run() returned: that the job's side inputs are still the bytes it
    keyed (core/inputs/side_check.py), and whether it ran code the key does not hold
    (core/worker/unkeyed_code.py)."""

    sides: SideInputCheck
    code: UnkeyedCode
    reads: UndeclaredReads

    @classmethod
    def of(cls, setup: Setup, reads: UndeclaredReads) -> _AfterRun:
        keyed = (setup.script_dir, os.path.dirname(setup.entry_script), *setup.side_paths)
        return cls(SideInputCheck(setup.side_checks, _hash_file), UnkeyedCode(keyed), reads)

    def uncacheable(self) -> str:
        """Why this process's results may not be cached: code or files the key does not hold ('' if none)."""
        return self.code.look() or self.reads.note()

    def side_inputs_changed(self) -> Failed | None:
        """The attempt's failure when a side input is not the bytes the job keyed: run() returned, but what
        it computed with is not what its key names; never retried."""
        try:
            self.sides.check()
        except DataChangedError as exc:
            return _failed(AttemptStatus.LOAD_EXCEPTION, AttemptStage.RUN, exc)
        return None


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


def _start(
    conn: Connection, setup: Setup, loop: asyncio.AbstractEventLoop, reads: UndeclaredReads
) -> types.ModuleType:
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
    side_code.install(setup.side_paths)  # a side input's modules run the source the key holds
    reads.install()  # before the script's import and init() read anything
    started = time.monotonic()
    # this process's own output_dir (core/output/files.py), before the script may read it on import
    _point_output_dir(setup.output_dir, singleton=False)
    try:
        EntryScript()
        module = _load_script(setup.entry_script)
        if setup.max_concurrency > 1 and not is_async(module.run):
            raise TypeError(
                f"max_concurrency_per_process={setup.max_concurrency} needs `async def run(mini_batch)`; "
                f"the run of {os.path.basename(setup.entry_script)} is synchronous (set "
                "max_concurrency_per_process to 1, or make run() a coroutine function)"
            )
        init = getattr(module, "init", None)
        if callable(init):
            _call(init, loop)
    except BaseException as exc:  # noqa: BLE001 - every init failure is reported, then the process ends
        conn.send(_failed(AttemptStatus.INIT_EXCEPTION, AttemptStage.INIT, exc))
        sys.stdout.flush()
        os._exit(3)
    conn.send(Ready(time.monotonic() - started, is_async(module.run)))
    return module


def _shutdown(module: types.ModuleType, loop: asyncio.AbstractEventLoop) -> None:
    shutdown = getattr(module, "shutdown", None)
    if callable(shutdown):
        try:
            _call(shutdown, loop)
        except Exception:  # noqa: BLE001
            traceback.print_exc()


def _serve(
    conn: Connection,
    module: types.ModuleType,
    setup: Setup,
    loop: asyncio.AbstractEventLoop,
    after_run: _AfterRun,
) -> None:
    """Answers `Run` messages until `Shutdown` (or the runner is gone)."""
    from ..output.files import OutputDirWatch, drop_if_empty

    if is_async(module.run):
        loop.run_until_complete(_serve_async(conn, module, setup, after_run))
        return

    watch = OutputDirWatch(setup.output_dir, setup.storage_options)
    with_context = _wants_context(module.run)
    while True:
        try:
            message: ToChild = conn.recv()
        except EOFError:
            break
        if isinstance(message, Shutdown):
            _shutdown(module, loop)
            conn.send(Bye())
            break
        assert isinstance(message, Run), message
        load_started = time.monotonic()
        scratch = os.path.join(setup.working_dir, f"mb{message.mini_batch.index:08d}-a{message.attempt}")
        try:
            try:
                data, total = _read(setup, message, scratch)
            except BaseException as exc:  # noqa: BLE001
                conn.send(_keyed(_failed(AttemptStatus.LOAD_EXCEPTION, AttemptStage.LOAD, exc), message))
                continue
            mini_batch = message.mini_batch
            conn.send(Loaded(mini_batch.index, message.attempt, total, time.monotonic() - load_started))
            kept: list[Any] = []
            answer = _run_one(module.run, with_context, message, data, total, setup, watch, kept, after_run)
            conn.send(_keyed(answer, message))
            # Freed after the answer, while it travels and the next mini-batch comes: run()'s result and
            # the mini-batch's data (millions of Python objects for a large table) took milliseconds to
            # free before the answer, and the data stayed alive until the next mini-batch was read.
            del data, kept
            if isinstance(answer, Done) and not answer.files:  # after the answer: off the attempt's path
                drop_if_empty(message.files_url)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            sys.stdout.flush()
            sys.stderr.flush()


def _context(message: Run) -> MiniBatchContext:
    """run()'s second argument: in a re-run of failed items, it describes the items run() gets."""
    if message.partial is None:
        return MiniBatchContext(message.mini_batch)
    from .rerun_items import selected_batch

    return MiniBatchContext(selected_batch(message.mini_batch, message.partial))


def _read(setup: Setup, message: Run, scratch: str) -> tuple[Any, int]:
    """The mini-batch's data as run() gets it (only the items to run again, in a re-run of failed items),
    and the mini-batch's item count."""
    source = setup.datasets[message.mini_batch.input_index]
    if message.partial is not None:
        from .rerun_items import read_selected

        return read_selected(source, message.mini_batch, message.partial, scratch, setup.batch_format)
    return read_batch(source, message.mini_batch, scratch, setup.batch_format)


@dataclasses.dataclass(frozen=True)
class _Written:
    """A checked run() result and what was written of it: the part, its columns and schema, and the
    successful results kept for a re-run of the items run() marked failed."""

    succeeded: int
    item_errors: tuple[tuple[int, str, str], ...] = ()
    part_url: str | None = None
    columns: Sequence[str] = ()
    schema: bytes | None = None
    items_url: str | None = None


def _write_result(result: Any, message: Run, total: int, setup: Setup) -> _Written:
    """Checks a run() result (joined first with the previous job's results, in a re-run of failed items),
    writes its part (append_row) and, when it marked items failed, keeps its successful results."""
    from ..output.results import check_result

    summary_only = setup.output_action != "append_row"
    if message.partial is not None:
        from .rerun_items import join_results, load_successes

        previous = [] if summary_only else load_successes(message.partial, setup.storage_options)
        result = join_results(result, message.partial, previous, total, summary_only)
    checked = check_result(result, total)
    errors = tuple((e.position, e.error, e.trace) for e in checked.item_errors)
    if summary_only or not checked.succeeded:
        return _Written(checked.succeeded, errors)
    part_url = message.part_url
    columns, schema = _write_part(checked.value, setup.append_row_format, part_url, setup.storage_options)
    items_url = None
    if errors and message.items_url:
        from .rerun_items import save_successes

        items_url = save_successes(checked.value, message.items_url, setup.storage_options)
    return _Written(checked.succeeded, errors, part_url, columns, schema, items_url)


def _run_one(
    run: Any,
    with_context: bool,
    message: Run,
    data: Any,
    total: int,
    setup: Setup,
    watch: OutputDirWatch,
    kept: list[Any],
    after_run: _AfterRun,
) -> Done | Failed:
    """run() on one mini-batch's data, its result checked and (append_row) written as its part; run()'s
    result is put in `kept`, for the caller to free after it has sent the answer."""
    from ..output.results import InvalidResultError

    cpu_started = time.process_time()
    run_started = time.monotonic()
    try:
        watch.start()
        _point_output_dir(message.files_url)  # this attempt's own folder (core/output/files.py)
        try:
            result = run(data, _context(message)) if with_context else run(data)
            run_seconds = time.monotonic() - run_started
            kept.append(result)
        finally:
            _point_output_dir(setup.output_dir)
            files, uncacheable = watch.finish(message.files_url)
        changed = after_run.side_inputs_changed()
        if changed is not None:
            return changed
        uncacheable = uncacheable or after_run.uncacheable()
        written = _write_result(result, message, total, setup)
    except InvalidResultError as exc:
        return Failed(AttemptStatus.RUN_INVALID_RESULT, AttemptStage.RUN, str(exc), str(exc) + "\n")
    except BaseException as exc:  # noqa: BLE001 - run() failures fail the attempt only
        return _failed(AttemptStatus.RUN_EXCEPTION, AttemptStage.RUN, exc)
    return Done(
        message.mini_batch.index,
        message.attempt,
        total,
        written.succeeded,
        run_seconds,
        time.process_time() - cpu_started,
        written.part_url,
        tuple(written.columns),
        written.schema,
        tuple(files),
        uncacheable,
        written.item_errors,
        written.items_url,
        current_identity(message.mini_batch),
    )


async def _serve_async(
    conn: Connection, module: types.ModuleType, setup: Setup, after_run: _AfterRun
) -> None:
    """Each `Run` becomes a task on this loop (the runner keeps at most `max_concurrency` in flight);
    a reader thread hands the messages over, so the loop never blocks on the socket."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[ToChild | None] = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                message: ToChild | None = conn.recv()
            except (EOFError, OSError):
                message = None
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message is None or isinstance(message, Shutdown):
                return

    threading.Thread(target=read, name="apr-reader", daemon=True).start()
    with_context = _wants_context(module.run)
    running: set[asyncio.Task[None]] = set()
    while True:
        message = await inbox.get()
        if message is None:
            break
        if isinstance(message, Shutdown):
            if running:  # the runner shuts down idle processes only; let any straggler end first
                await asyncio.wait(running)
            await _shutdown_async(module)
            conn.send(Bye())
            break
        assert isinstance(message, Run), message
        task = loop.create_task(_attempt_async(conn, module.run, with_context, message, setup, after_run))
        running.add(task)
        task.add_done_callback(_attempt_ended(running))


def _attempt_ended(running: set[asyncio.Task[None]]) -> Any:
    def ended(task: asyncio.Task[None]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug here, not in run(): on stderr
            traceback.print_exception(task.exception())
            sys.stderr.flush()

    return ended


async def _shutdown_async(module: types.ModuleType) -> None:
    shutdown = getattr(module, "shutdown", None)
    if callable(shutdown):
        try:
            result = shutdown()
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001
            traceback.print_exc()


async def _attempt_async(
    conn: Connection, run: Any, with_context: bool, message: Run, setup: Setup, after_run: _AfterRun
) -> None:
    """One attempt as a task: read (in a thread), `Loaded`, run() under the timeout, `Done` or `Failed`."""
    mini_batch = message.mini_batch
    load_started = time.monotonic()
    scratch = os.path.join(setup.working_dir, f"mb{mini_batch.index:08d}-a{message.attempt}")
    try:
        try:
            data, total = await asyncio.to_thread(_read, setup, message, scratch)
        except Exception as exc:  # noqa: BLE001
            conn.send(_keyed(_failed(AttemptStatus.LOAD_EXCEPTION, AttemptStage.LOAD, exc), message))
            return
        conn.send(Loaded(mini_batch.index, message.attempt, total, time.monotonic() - load_started))
        answer = await _run_one_async(run, with_context, message, data, total, setup, after_run)
        conn.send(_keyed(answer, message))
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)
        sys.stdout.flush()
        sys.stderr.flush()


async def _run_one_async(
    run: Any, with_context: bool, message: Run, data: Any, total: int, setup: Setup, after_run: _AfterRun
) -> Done | Failed:
    """An async run() on one mini-batch: cancelled after `run_invocation_timeout`; its result checked and
    (append_row) written as its part, in a thread. `output_dir` is the attempt's own folder for this task
    only (`ATTEMPT_OUTPUT_DIR`); a file written meanwhile into the process's folder (the path read at
    import or init()) cannot be told apart from the other mini-batches in flight, so it is published at the
    job's end and the attempt is not cached."""
    from ..output.files import list_files, snapshot
    from ..output.results import InvalidResultError

    index, timeout = message.mini_batch.index, setup.run_invocation_timeout
    cpu_started = time.process_time()
    run_started = time.monotonic()
    try:
        before = await asyncio.to_thread(snapshot, setup.output_dir, setup.storage_options)
        token = ATTEMPT_OUTPUT_DIR.set(message.files_url)
        try:
            async with asyncio.timeout(timeout) as limit:
                result = await (run(data, _context(message)) if with_context else run(data))
            if limit.expired():  # it swallowed the cancellation and returned late: timed out all the same
                raise TimeoutError
        except TimeoutError:
            if not limit.expired():
                raise  # run() itself raised TimeoutError (a client's own timeout): a run() exception
            return Failed(
                AttemptStatus.RUN_TIMEOUT,
                AttemptStage.RUN,
                f"mini-batch {index} did not finish in {timeout:g} s (run_invocation_timeout); its run() "
                "coroutine was cancelled",
            )
        finally:
            ATTEMPT_OUTPUT_DIR.reset(token)
        run_seconds = time.monotonic() - run_started
        after = await asyncio.to_thread(snapshot, setup.output_dir, setup.storage_options)
        touched = sorted(name for name in after if before.get(name) != after[name])
        uncacheable = (
            f"{touched[0]}" + (f" (+{len(touched) - 1} more)" if len(touched) > 1 else "") + " changed in "
            "the process's output_dir while this async run() ran (a path taken outside run(): the file "
            "belongs to no single mini-batch; inside run() use EntryScript().output_dir)"
            if touched
            else ""
        )
        files = await asyncio.to_thread(list_files, message.files_url, setup.storage_options)
        changed = await asyncio.to_thread(after_run.side_inputs_changed)
        if changed is not None:
            return changed
        uncacheable = uncacheable or after_run.uncacheable()
        written = await asyncio.to_thread(_write_result, result, message, total, setup)
        identity = await asyncio.to_thread(current_identity, message.mini_batch)
    except InvalidResultError as exc:
        return Failed(AttemptStatus.RUN_INVALID_RESULT, AttemptStage.RUN, str(exc), str(exc) + "\n")
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this task itself is being cancelled (the loop ends)
        return _failed(AttemptStatus.RUN_EXCEPTION, AttemptStage.RUN, exc)  # raised by run() itself
    except Exception as exc:  # noqa: BLE001 - run() failures fail the attempt only
        return _failed(AttemptStatus.RUN_EXCEPTION, AttemptStage.RUN, exc)
    return Done(
        index,
        message.attempt,
        total,
        written.succeeded,
        run_seconds,
        time.process_time() - cpu_started,  # the process's, shared with the mini-batches in flight
        written.part_url,
        tuple(written.columns),
        written.schema,
        tuple(files),
        uncacheable,
        written.item_errors,
        written.items_url,
        identity,
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
    # A fresh program's signal mask: a process inherits its creator's, and the CLI blocks SIGINT/SIGTERM in
    # all its threads (cli_signals.py), the embedded cluster's workers among them; the entry script and
    # the processes it starts must be stoppable by them as anywhere else.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    frozen_at_start = gc.get_freeze_count()  # the fork server's heap; the script may freeze more
    conn = _connect(fd)
    conn.send(Started())  # the runner's clock for init() starts here, not at the interpreter's start
    setup: Setup = conn.recv()
    loop = asyncio.new_event_loop()  # one loop for the process: async init(), run() and shutdown()
    asyncio.set_event_loop(loop)
    reads = UndeclaredReads(setup.watched_reads)
    module = _start(conn, setup, loop, reads)
    _serve(conn, module, setup, loop, _AfterRun.of(setup, reads))
    _end_process(frozen_at_start)


def _end_process(frozen_at_start: int) -> NoReturn:
    """Ends the process once the runner has its `Bye` (or is gone), as a `multiprocessing` child ends: what
    an interpreter's exit does that a script can rely on, then `os._exit`. In `Py_FinalizeEx`'s order: thread
    pools told to end and the non-daemon threads joined, `atexit` handlers run (logging's flush among them),
    the files the script left open for writing flushed, then stdout and stderr. What is skipped is the rest
    of the finalization, tearing down every module of the imported heap (pandas, pyarrow, ...): 45-50 ms in
    a process forked from the fork server, 90 ms in a fresh one, while the runner waited for the exit and
    the job for the runner (docs/performance.md, "An entry-script process's exit"). Objects still alive are
    not deleted one by one at the exit, which Python does not promise either (the data model's `__del__`):
    an open file is the one such object whose loss would lose data, and its buffer is written."""
    threading._shutdown()  # type: ignore[attr-defined]  # as multiprocessing's children end: hooks, joins
    atexit._run_exitfuncs()
    _flush_open_files(frozen_at_start)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


_WRITERS = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def _flush_open_files(frozen_at_start: int) -> None:
    """Writes the buffers of the files the script opened and never closed, as their deletion at the
    interpreter's exit would have. Only objects made since the fork server's `gc.freeze()` are looked at:
    the imported modules' heap is not walked (a fresh process, not forked, walks it whole: 35 ms). A script
    that froze objects itself (`gc.freeze()` in init(), say) may have frozen its files with them: then every
    object is looked at."""
    if gc.get_freeze_count() > frozen_at_start:
        gc.unfreeze()
    for obj in gc.get_objects():
        if isinstance(obj, _WRITERS):
            try:
                if not obj.closed:
                    obj.flush()
            except Exception as exc:  # noqa: BLE001 - reported as the interpreter reports a failed flush
                print(f"Exception ignored flushing {obj!r} at exit: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    main(int(sys.argv[1]))

"""`JobDriver`: one job on a connected Dask client. It composes the job's parts (the output folder, the plan,
reuse, the workers' spec, logs, progress, the output) and runs the loop that submits attempts and books
what comes back: commit, retry or final failure, then the thresholds. Nothing else is in the loop, but
what a streaming plan's listing handed over since the last turn (core/driver/planning.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from distributed import Client

from ..attempt import AttemptResult, AttemptStage, AttemptStatus
from ..config import ParallelRunConfig
from ..errors import ConfigError, InputError
from ..inputs.listing import PathInput, check_local_input
from ..inputs.normalise import as_strings
from ..inputs.source import Dataset
from ..inputs.tabular_types import with_read_types
from ..logs.joblogs import JobLogs
from ..minibatch import MiniBatch
from ..numbers import NumberSet
from ..output.files import FilePublisher
from ..output.folder import OutputFolder
from ..output.sink import JobOutput
from ..plan import Plan, iter_plan, plan
from ..plan.store import PlanStore
from ..retry import InitFailures, Step, next_step
from ..reuse.cache import MiniBatchCache, resolve_cache_root
from ..reuse.reuse import Reuse
from ..spill import SpillError
from ..storage import refuse_url_password
from ..summary import Tally, threshold_breach
from ..worker.attempt import run_mini_batch
from ..worker.chunk import run_attempts
from ..worker.plugin import activity_on, supersede_on
from ..worker.scratch import worker_host
from ..worker.spec import JobSpec, bundle_scripts
from .attempts import LOOP_WAIT_S, AttemptStream, Pending, Window
from .cluster import select_hosts
from .finish import finish_job, prepare_report
from .fusion import Fusion
from .planning import PlanFeed, Planned, first_file
from .progress import Progress, ProgressCallback
from .speculation import Flight, Speculation
from .stopping import StopControl, bounded
from .watchdog import Watchdog

PROBE_BOUND_S = 2.0  # the watchdog's question to the workers waits at most this long
# The first submit waits at most this long for the listing to fill the first window (`_fill_first`).
FIRST_FILL_S = 1.0


def _plain(path: str) -> bool:
    """A path on this host as given (a side input or argument), not a URL: made absolute, checked to exist."""
    return "://" not in path


def _local_paths(
    side_inputs: Sequence[str], arguments: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Side inputs (and arguments naming them) that are paths on this host, made absolute and checked.
    Arguments that are numbers become strings with str(), as Azure passes `arguments=['--test_size', 20]`."""
    arguments = as_strings("arguments", list(arguments))
    if not all(isinstance(s, str) and s for s in side_inputs):
        raise ConfigError("side_inputs", list(side_inputs), "a list of paths or fsspec URLs")
    for given in side_inputs:
        refuse_url_password(given, "side_inputs")
    side = [os.path.abspath(s) if _plain(s) and os.path.exists(s) else s for s in side_inputs]
    for original, path in zip(side_inputs, side, strict=True):
        if _plain(path) and not os.path.exists(path):
            raise ConfigError("side_inputs", original, "an existing file or folder, or an fsspec URL")
    args = tuple(os.path.abspath(a) if a in side_inputs and _plain(a) else a for a in arguments)
    return tuple(side), args


def streams(inputs: Sequence[Dataset]) -> bool:
    """Whether a job's plan may stream (core/driver/planning.py): file inputs, none of which decides
    anything over all its mini-batches (`with_column_types`); or one csv/jsonl input, whose column types
    come from its first file (`types_from_first_file`, planned first: `first_file`). Parquet's
    `null_columns` and the types of several tabular inputs need every mini-batch first."""
    if len(inputs) == 1 and getattr(inputs[0], "types_from_first_file", False) is True:
        return True
    return bool(inputs) and all(
        getattr(d, "kind", None) == "file" and not callable(getattr(d, "with_column_types", None))
        for d in inputs
    )


def _side_input_variables(
    environment: Mapping[str, str], given: Sequence[str], side: Sequence[str]
) -> dict[str, str]:
    """`environment_variables` whose value is a side input as given (`AZUREML_MODEL_DIR: models`) name it
    by the path the workers see: absolute here, and each worker's local copy (core/worker/process.py)."""
    paths = dict(zip(given, side, strict=True))
    return {name: paths.get(value, value) for name, value in environment.items()}


class JobDriver:
    """Runs one job on a connected Client. Use `run_job` unless you manage the client yourself.

    Nothing is created before the output folder is known to be valid, and refusals come in this order:
    arguments and side inputs, the output file's name and the folder's path, overlaps with inputs, the
    cache or protected folders, the plan (a streaming plan: its first mini-batch; a later refusal fails the
    running job), the folder (created, must be ours), then the lock."""

    def __init__(
        self,
        config: ParallelRunConfig,
        inputs: Sequence[Dataset],
        output_path: str,
        *,
        side_inputs: Sequence[str] = (),
        arguments: Sequence[str] = (),
        storage_options: Mapping[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        job_id: str | None = None,
        allow_reuse: bool = True,
        cache_dir: str | None = None,
        planned: Plan | None = None,
        protected_paths: Sequence[str] = (),
        before_claim: Callable[[JobDriver], None] | None = None,
        stream_plan: bool = False,
    ) -> None:
        """`stream_plan`: start running the first mini-batches while the inputs are still listed, where
        the job allows it (`streams`; not with `planned` nor a re-run's `before_claim`): see
        docs/architecture.md, "Streaming planning". Without it the plan is whole once the driver exists."""
        self.started = (time.monotonic(), time.time())
        self.config = config
        self.job_id = job_id or uuid.uuid4().hex[:16]
        self.storage_options = dict(storage_options or {})
        self.inputs = [d.with_credentials(self.storage_options) for d in inputs]  # the job's, where none
        refuse_url_password(str(output_path), "output")
        refuse_url_password(resolve_cache_root(cache_dir), "cache_dir")  # given, or from the environment
        self.side_inputs, self.arguments = _local_paths(side_inputs, arguments)
        self.environment = _side_input_variables(config.environment_variables, side_inputs, self.side_inputs)
        OutputFolder.check(
            output_path,
            self.storage_options,
            output_file=config.output_file_name,
            inputs=[(where, d.storage_options) for d in self.inputs for where in d.locations()],
            cache_root=resolve_cache_root(cache_dir),
            protected_paths=protected_paths,
        )
        self.streaming = stream_plan and planned is None and before_claim is None and streams(self.inputs)
        self.feed: PlanFeed | None = None
        self.store: PlanStore | None = None
        if self.streaming:  # listed (and keyed) by the feed's thread, while the job runs, and kept on disk
            kind, batches = iter_plan(self.inputs, config.mini_batch_size, config.partition_keys)
            if any(callable(getattr(d, "with_column_types", None)) for d in self.inputs):
                first, batches = first_file(batches)  # csv/jsonl: the types, before any key
                self.inputs = with_read_types(self.inputs, first)
            self.store = PlanStore(kind, self.job_id)
            self.plan: Plan | PlanStore = self.store
            whole: Plan | None = None
        else:
            self.plan = whole = planned if planned is not None else plan(self.inputs, config)
        config.check_batch_format(self.plan.kind)
        # csv/jsonl: one set of column types for every slice, decided before the reuse key is (it enters it)
        if not self.streaming:
            self.inputs = with_read_types(self.inputs, list(self.plan))
        output_file = config.output_file_name if config.output_action == "append_row" else None
        if not self.streaming:
            self.folder = OutputFolder(output_path, self.storage_options, output_file)
        bundle, bundle_hash, entry, code_files = bundle_scripts(
            config.entry_script_path, config.source_directory
        )
        self.allow_reuse = allow_reuse
        self.cache = MiniBatchCache(resolve_cache_root(cache_dir), self.storage_options)
        self.reuse = Reuse(
            config,
            self.inputs,
            whole,
            (code_files, entry),
            self.arguments,
            self.side_inputs,
            self.cache,
            allow_reuse=allow_reuse,
            kind=self.plan.kind,
            store=self.store,
        )
        self.cache_key, self.keys = self.reuse.cache_key, self.reuse.keys
        self._misses: list[int] = []  # streaming: listed mini-batches to run (by number), not yet pending
        self._reused = NumberSet()  # streaming: the mini-batches reused so far
        self._damaged: list[str] = []  # streaming: cache entries that failed verification
        self._executing = False  # `execute` began (a progress line is said only from then on)
        self._said_uncached = False  # the first committed result that is not cached was said
        self.reuse_line = ""
        if self.streaming:  # the folder is created after the plan's refusals, as without streaming
            try:
                self.feed = self._start_feed(batches)
                self.folder = OutputFolder(output_path, self.storage_options, output_file)
            except BaseException:
                if self.feed is not None:
                    self.feed.stop()
                self._close_store()
                raise
        self.output, self.local_output = self.folder.url, self.folder.local
        self.stop = StopControl(self.job_id, self._master, self._say)
        if before_claim is not None:  # a re-run's checks (core/reuse/rerun.py): refusals change nothing
            before_claim(self)
        try:  # the claim inside: interrupted between it and `_prepare`, the folder is still let go
            self.folder.claim(self.job_id, self.cancel)
            self._prepare((bundle, bundle_hash, entry), progress)
        except BaseException:  # the lock's heartbeat would keep the folder busy for as long as we live
            self.release()
            raise

    def _start_feed(self, batches: Any) -> PlanFeed:
        """The listing's thread. Its first mini-batch (or its refusal) is waited for before the folder is
        claimed, and every local input path is checked to exist and hold a file (`check_local_input`, a
        walk that stops at the first file): an input that is missing, empty or bad in its first folder is
        refused as without streaming, leaving an earlier job's folder untouched."""
        feed = PlanFeed(batches, self.reuse, look_up=self.allow_reuse, job_id=self.job_id)
        try:
            first = feed.first()
            if isinstance(first, Exception):
                raise first
            for source in self.inputs:  # later inputs that do not exist or hold no file: refused here too
                if isinstance(source, PathInput):
                    for path in source.paths:
                        check_local_input(path, source.storage_options)
        except BaseException:
            feed.stop()
            raise
        return feed

    def _prepare(self, code: tuple[bytes, str, str], callback: ProgressCallback | None) -> None:
        """The job's logs, its spec for the workers, its output and its progress."""
        self.log_root = self.folder.open_logs()
        self.logs = JobLogs(self.log_root)
        self.spec = JobSpec.for_job(
            self.job_id,
            self.config,
            code,
            arguments=self.arguments,
            side_inputs=self.side_inputs,
            datasets=tuple(self.inputs),
            output_url=self.output,
            staging_url=self.folder.staging_url(self.job_id),
            log_url=self.folder.log_url,
            storage_options=self.storage_options,
        )
        self.spec = dataclasses.replace(
            self.spec,
            environment_variables=self.environment,
            partial=dict(self.reuse.partial),
            side_checks=tuple(self.reuse.side_checks),
            side_fingerprints=dict(self.reuse.side_fingerprints),
        )
        self.files = FilePublisher(self.output, self.storage_options, self._warn)
        self.sink = JobOutput(
            self.config.append_row_format, self.output, self.storage_options, self.files, self._master
        )
        self.tally = Tally(len(self.plan), self.plan.total_items, listing=self.streaming)
        # mini-batch -> attempts dispatched from the queue, when more than 1 (speculative copies are not)
        self.tries: dict[int, int] = {}
        self.flight = Flight()
        self.speculation = Speculation(self.config)
        self.slots = max(  # attempts at once: each process runs max_concurrency_per_process (async run())
            1,
            self.config.node_count * self.config.processes_per_node * self.config.max_concurrency_per_process,
        )
        self.init_failures = InitFailures.for_slots(self.slots)
        self.progress = Progress(
            self.job_id,
            self.logs,
            self.tally,
            log_url=self.folder.log_url,
            local=self.local_output,
            storage_options=self.storage_options,
            callback=callback,
            stop_reason=lambda: self.stop.reason,
            started=self.started,
        )
        if self.folder.unlocked:
            self.logs.master(
                f"warning: {self.output} takes no lock (its store cannot create a file exclusively); "
                "make sure no other job writes to it at the same time"
            )
        if self.streaming:
            self.logs.master(
                f"job {self.job_id}: the inputs are being listed; the first mini-batches run meanwhile "
                f"({self.plan.kind} input), entry script {self.config.entry_script}, cache key {self.cache_key}"
            )
        else:
            self._log_plan()

    def _log_plan(self) -> None:
        self.logs.master(
            f"job {self.job_id}: {len(self.plan)} mini-batches, {self.plan.total_items} items "
            f"({self.plan.kind} input), entry script {self.config.entry_script}, cache key {self.cache_key}"
        )

    # -- what the Airflow layer and tests read ------------------------------------------------------
    @property
    def stop_reason(self) -> str | None:
        return self.stop.reason

    def elapsed(self) -> float:
        return time.monotonic() - self.started[0]

    def cancel(self, reason: str = "the job was cancelled") -> None:
        """Thread-safe and signal-safe (it only sets flags): the driver loop sees it within
        `LOOP_WAIT_S`, stops scheduling and kills running attempts (on_kill, SIGTERM/SIGINT, a lost lock)."""
        self.stop.cancel(reason)

    def release(self) -> None:
        """Frees the output folder for the next job (also called when a job ends early); a listing still
        going on stops."""
        if self.feed is not None:
            self.feed.stop()
        try:
            self.folder.release()
        finally:
            self._close_store()

    def _close_store(self) -> None:
        """The plan's and the commit log's spills are removed (the listing's thread, stopped, writes
        nothing more to them)."""
        if self.store is not None:
            self.store.close()
        self.reuse.close()
        sink = getattr(self, "sink", None)  # made once the folder is claimed
        if sink is not None:
            sink.close()

    def _master(self, text: str) -> None:
        self.logs.master(text)

    def _say(self, text: str) -> None:
        self.progress.say(text)

    def _warn(self, text: str) -> None:
        self.logs.master(f"warning: {text}")
        self.progress.say(f"Warning: {text}")

    # -- reuse ---------------------------------------------------------------------------------------
    def find_reusable(self) -> dict[int, AttemptResult]:
        """Cache hits (when allow_reuse) and a log line saying how many were reused and why others were not.

        Streaming: books the hits listed until the first miss (or the listing's end, or a stop) and
        returns none; the reuse line comes when the listing ends."""
        if self.feed is not None:
            while not self._misses and not self.feed.ended and not self.stop.requested:
                self._misses += self._take_planned(self.feed.take(LOOP_WAIT_S))
            return {}
        outcome = self.reuse.find(self.sink.admit_reused, self.files.restore)
        for line in outcome.warnings:
            self._warn(line)
        self.reuse_line = outcome.line
        self.logs.master(self.reuse_line)
        return outcome.hits

    def needs_cluster(self, reused: Mapping[int, AttemptResult]) -> bool:
        """Whether some mini-batch must run (else no cluster starts): streaming, whether a miss was listed
        before the listing ended or the job stopped (`find_reusable` waits for one)."""
        if self.feed is not None:
            return bool(self._misses) and not self.stop.requested
        return len(reused) != len(self.plan)

    # -- streaming planning ------------------------------------------------------------------------------
    def _take_planned(self, fed: Sequence[Any]) -> list[int]:
        """Books what the listing handed over: each mini-batch joins the plan and the tally, a cache hit
        that joins the output's schema (and whose output_dir files come back) is booked as reused; the
        others are returned (their numbers: the plan keeps them on disk), to run. The listing's end or
        failure is booked too."""
        misses: list[int] = []
        for item in fed:
            if isinstance(item, Planned):
                mb = item.mini_batch
                assert self.store is not None
                self.store.reveal(mb.index)
                self.tally.plan(mb)
                if not self._reuse_planned(item):
                    misses.append(mb.index)
            elif isinstance(item, Exception):
                self._listing_failed(item)
            else:
                self._listing_ended()
        self.logs.flush_attempts()  # the reused mini-batches' rows, written unflushed
        return misses

    def _reuse_planned(self, item: Planned) -> bool:
        """One listed mini-batch's cache hit, admitted as `Reuse.find` admits hits; False: it runs."""
        mb = item.mini_batch
        if item.damaged:
            self._damaged.append(item.damaged)
            self._warn(item.damaged)
        if item.hit is None or not self.sink.admit_reused({mb.index: item.hit}):
            return False
        problem = self.files.restore(mb.index, item.files_meta) if item.files_meta else None
        if problem:
            warning = self.reuse.damaged(mb.index, problem)
            self._damaged.append(warning)
            self._warn(warning)
            return False
        self._reused.add(mb.index)
        self.logs.attempt(item.hit, json.dumps(mb.describe()), flush=False)
        self._finalise(mb, item.hit)
        return True

    def _listing_ended(self) -> None:
        """The whole plan is known: the totals, the plan's log line, the reuse line and the cache's record
        of the job (the next run's reuse line compares with it)."""
        self.tally.listed()
        self._log_plan()
        self.reuse_line = self.reuse.conclude(self._reused, self._damaged)
        self.logs.master(self.reuse_line)
        if self._executing:  # else `execute` says it: nothing is said before the job runs, as before
            self._say(self.reuse_line)

    def _listing_failed(self, exc: Exception) -> None:
        """The listing (or a fingerprint) failed after work began: the job fails with its message; what
        was committed stays in the reuse cache."""
        message = str(exc) if isinstance(exc, (InputError, ConfigError)) else f"{type(exc).__name__}: {exc}"
        self.logs.master(f"the inputs could not be listed to the end: {message}")
        self.stop.request(
            f"{message} (found while listing the inputs; committed mini-batches are in the reuse cache)"
        )

    def _pull(self, pending: Pending, in_flight: int) -> None:
        """Streaming: what the listing handed over joins `pending` (waiting up to a loop turn for it when
        nothing is in flight: the loop then has nothing else to wait on)."""
        if self.feed is None:
            return
        if self._misses:
            pending.extend_numbers(self._misses)
            self._misses = []
        if not self.feed.ended and not self.stop.requested:
            fed = self.feed.take(0 if in_flight else LOOP_WAIT_S)
            pending.extend_numbers(self._take_planned(fed))

    @property
    def listing(self) -> bool:
        """The listing goes on: more mini-batches may come."""
        return self.feed is not None and not self.feed.ended

    # -- the loop ------------------------------------------------------------------------------------
    def execute(
        self, client: Client | None, reused: Mapping[int, AttemptResult] | None = None
    ) -> dict[str, Any]:
        """Runs every mini-batch not in `reused`; returns the summary (/work/shared/DESIGN.md, result summary).

        `client` may be None only when every mini-batch is reused: then nothing starts on Dask.
        """
        reused = self.find_reusable() if reused is None else self.sink.admit_reused(reused)
        for index, result in sorted(reused.items()):
            self.logs.attempt(result, json.dumps(self.plan.batch(index).describe()), flush=False)
            self._finalise(self.plan.batch(index), result)
        self.logs.flush_attempts()
        if self.feed is not None:  # streaming: the listed misses; the reuse line comes with the listing's end
            if not self.stop.requested:  # listed while the cluster started
                self._misses += self._take_planned(self.feed.take(0))
            self._executing = True
            if self.reuse_line:  # the listing ended before: said now, as without streaming
                self._say(self.reuse_line)
            pending = Pending(batch=self.plan.batch)
            pending.extend_numbers(self._misses)
            self._misses = []
            if self.stop.requested:  # a listing that failed, or a cancel, before anything ran
                self.feed.stop()
                self.stop.note()
                return finish_job(self)
        else:
            pending = Pending((mb, 1) for mb in self.plan if mb.index not in reused)
            self._say(self.reuse_line)
        if not len(pending) and not self.listing:
            return finish_job(self)
        if client is None:
            raise ValueError("a Dask client is needed: some mini-batches are not reusable")
        stream = self._start(client, len(pending), len(reused) + len(self._reused))
        interrupted: BaseException | None = None
        try:
            self._loop(stream, pending)
        except SpillError as exc:  # the plan kept on disk was damaged: nothing runs as something else
            self.stop.request(f"the job's plan could not be read back from disk: {exc}")
            self.stop.note()
        except Exception as exc:  # noqa: BLE001 - scheduler lost, connection closed: fail with the reason
            self.stop.request(
                f"the Dask cluster failed during the job ({type(exc).__name__}: {exc}); committed mini-batches "
                "are in the reuse cache, so a re-run resumes from them"
            )
            self.stop.note()
        except BaseException as exc:  # KeyboardInterrupt, an Airflow task timeout: stop, finish, re-raise
            interrupted = exc
            self.stop.request(f"interrupted by {type(exc).__name__}" + (f": {exc}" if str(exc) else ""))
            with contextlib.suppress(Exception):
                self._halt(stream, pending)
        finally:
            if self.feed is not None:
                self.feed.stop()
            stream.abandon(self.stop.set_event)  # whatever did not report by now: do not leave it running
            self.stop.finish_workers(client)
        try:
            summary = finish_job(self)
        finally:
            self.stop.detach(client)
        if interrupted is not None:
            raise interrupted
        return summary

    def _start(self, client: Client, to_run: int, reused: int) -> AttemptStream:
        """Chooses the hosts, hands the spec to the workers and opens the stream of attempts."""
        placement = select_hosts(
            client,
            self.config.node_count,
            self.config.processes_per_node,
            concurrency=self.config.max_concurrency_per_process,
        )
        for warning in placement.warnings:
            self._warn(warning)
        self.slots = placement.slots
        self.init_failures = InitFailures.for_slots(self.slots)
        self.window = Window(self.slots, one_per_slot=self.config.speculative_execution)
        self.fusion = Fusion(self.slots, enabled=not self.config.speculative_execution)
        hosts = tuple(placement.hosts) if placement.restricts else None  # keep the job on the chosen hosts
        name = self.stop.attach(client, self.spec, hosts)
        stream = AttemptStream(
            client, self.job_id, run_mini_batch, name, list(hosts) if hosts else None, chunk_task=run_attempts
        )
        self.watchdog = Watchdog(self.config, lambda tails: self._probe(client, tails))
        self.stream = stream
        so_far = " so far (the inputs are still being listed)" if self.listing else ""
        self._say(
            f"Started: {to_run} mini-batches to run, {reused} reused{so_far}, {self.slots} {self._slot_noun()} on "
            f"{len(placement.hosts)} host(s) ({', '.join(placement.hosts)})"
        )
        self.progress.started_running()
        prepare_report()  # while the attempts run: the report is built at the end, before the job returns
        return stream

    def _probe(self, client: Client, tails: bool) -> Mapping[str, Any] | None:
        """What the job's entry-script processes do on each worker (the watchdog's question), or None
        when the workers do not answer within PROBE_BOUND_S (the loop must not wait on them)."""
        answered, report = bounded(
            lambda: client.run(activity_on, self.stop.plugin, tails, on_error="return"),
            PROBE_BOUND_S,
            self._stopping,
        )
        return report if answered and isinstance(report, Mapping) else None

    def _stopping(self) -> bool:
        """A question to the workers is given up once the job is being stopped (the stop's time bound)."""
        return self.stop.requested

    def _slot_noun(self) -> str:
        concurrency = self.config.max_concurrency_per_process
        return "processes" if concurrency == 1 else f"mini-batches at once ({concurrency} per process)"

    def _submit(self, stream: AttemptStream, pending: Pending) -> None:
        """Fills the window: attempts that chunks handed back first (dispatched and counted already; those
        to run alone each in its own task), then new ones, `chunk` per Dask task (`Fusion`)."""
        any_succeeded = self.tally.succeeded_mini_batches > 0
        chunk = self.fusion.size(len(pending), any_succeeded)
        room = self.window.room(len(stream), any_succeeded, len(pending), tasks=stream.tasks, chunk=chunk)
        back = pending.take_back(room)
        attempts = pending.take(room - len(back))
        self.tally.note_started(mb.index for mb, _attempt in attempts)
        for mb, attempt in attempts:
            if attempt > 1:  # a retry (first attempts are not stored: a job may have millions)
                self.tries[mb.index] = self.tries.get(mb.index, 1) + 1
            self.flight.launched(mb.index, attempt)
        stream.submit([attempt for attempt, alone in back if alone], solo=True)
        stream.submit([attempt for attempt, alone in back if not alone] + attempts, chunk=chunk)

    def _speculate(self, stream: AttemptStream, pending: Pending) -> None:
        """Once nothing is left to dispatch: a copy of each straggler on a free worker thread."""
        if len(pending) or self.listing or not self.speculation.due():
            return
        report, free = self._free_threads(stream)
        for item, address, seconds in self.speculation.choose(stream.waiting(), report, free):
            mb, number = item.mini_batch, self.flight.next_number(item.mini_batch.index)
            self.flight.launched(mb.index, number)
            self.speculation.copied[mb.index] = number
            stream.submit([(mb, number)], workers=[address])
            self.logs.master(
                f"speculative_execution: mini-batch {mb.index} attempt {item.attempt} has run for "
                f"{seconds:.1f} s, past {self.speculation.limit() or 0:.1f} s ({self.speculation.multiplier:g} x "
                f"the median run() time): attempt {number} starts on {address}"
            )

    def _free_threads(self, stream: AttemptStream) -> tuple[Mapping[str, Any] | None, dict[str, int]]:
        """What the job's processes run (`activity_on`) and the free threads of each of the job's workers
        (threads minus the tasks the scheduler has them process), or (None, {}) without an answer."""
        hosts = set(stream.hosts or ())

        def look() -> tuple[Mapping[str, Any], dict[str, int]]:
            report = stream.client.run(activity_on, self.stop.plugin, False, on_error="return")
            processing = stream.client.processing()
            workers = stream.client.scheduler_info(n_workers=-1).get("workers", {})
            free = {
                address: int(info.get("nthreads", 1)) - len(processing.get(address, ()))
                for address, info in workers.items()
                if isinstance(report.get(address), Mapping) and (not hosts or worker_host(address) in hosts)
            }
            return report, free

        answered, looked = bounded(look, PROBE_BOUND_S, self._stopping)
        return looked if answered and isinstance(looked, tuple) else (None, {})

    def _stop_attempt(self, index: int, attempt: int) -> None:
        """Kills the process running an attempt that lost (bounded: the loop must not wait on workers)."""
        client, plugin = self.stream.client, self.stop.plugin
        bounded(
            lambda: client.run(supersede_on, plugin, index, attempt, on_error="return"),
            PROBE_BOUND_S,
            self._stopping,
        )

    def _supersede(self, mb: MiniBatch, winner: int) -> None:
        """Attempt `winner` of `mb` committed: its other attempts are forgotten, stopped on their
        workers, and booked as SPECULATIVE_LOST (not a failure, not a try)."""
        for attempt in self.flight.others(mb.index, winner):
            gone = self.stream.forget(mb.index, attempt)
            self._stop_attempt(mb.index, attempt)
            self.speculation.lost += 1
            self.speculation.lost_attempts.add((mb.index, attempt))
            node, process = self.speculation.where.get((mb.index, attempt), ("", ""))
            lost = AttemptResult(
                mb.index,
                attempt,
                AttemptStatus.SPECULATIVE_LOST,
                node=node,
                process=process,
                total=mb.items,
                elapsed_seconds=time.monotonic() - gone.submitted if gone else 0.0,
                error=f"attempt {winner} of mini-batch {mb.index} committed first (speculative_execution); "
                "this attempt was stopped",
            )
            self.logs.attempt(lost, json.dumps(mb.describe()))

    def _fill_first(self, pending: Pending) -> None:
        """Streaming: before the first submit, the listing gets up to FIRST_FILL_S to bring what the first
        window takes with the whole plan known (its tail rule counts what is pending), so that the first
        attempts and their chunks are those of the whole-plan path unless the listing is slow."""
        deadline = time.monotonic() + FIRST_FILL_S
        while self.listing and not self.stop.requested and time.monotonic() < deadline:
            chunk = self.fusion.size(len(pending), False)
            full = self.window.room(0, False, None, tasks=0, chunk=chunk)
            if self.window.room(0, False, len(pending), tasks=0, chunk=chunk) >= full:
                return
            self._pull(pending, 0)

    def _loop(self, stream: AttemptStream, pending: Pending) -> None:
        self._fill_first(pending)
        self._submit(stream, pending)
        while len(stream) or self.listing:
            stream.check_connected()
            listed = self.listing
            self._pull(pending, len(stream))
            if listed and not self.listing and not self.stop.requested:  # all scheduled may be true now
                self.stop.request(threshold_breach(self.tally, self.config, all_scheduled=not len(pending)))
            if len(stream):
                for mb, attempt, result in stream.next_batch():
                    self._record(mb, attempt, result, pending)
                    self.progress.after_record()
            pending.put_back(stream.take_returned())
            self.progress.tick()
            if not len(stream):  # nothing can end while the listing brings nothing to run
                self.watchdog.idle()
            if not self.stop.requested:
                self.stop.request(self.watchdog.check(stream.waiting))
            if self.stop.requested:
                self.stop.request("the job was cancelled")
                self._halt(stream, pending)
                return
            self._submit(stream, pending)
            self._speculate(stream, pending)

    def _record(self, mb: MiniBatch, attempt: int, result: AttemptResult, pending: Pending) -> None:
        """Books one attempt: commit, retry, or final failure; then checks the thresholds."""
        if (mb.index, attempt) in self.speculation.lost_attempts:
            return  # reported with the winner, in the same turn: booked as SPECULATIVE_LOST already
        result = self._admit(mb, result)
        self.flight.landed(mb.index, attempt)
        self.logs.attempt(result, json.dumps(mb.describe()))
        self.watchdog.attempt_ended(result)
        self.fusion.observe(result)
        if mb.index in self.tally.finished:
            return  # a duplicate delivery: the first outcome stands
        if not result.ok and self.flight.running(mb.index):
            self.progress.note_error(result, final=False)
            return  # another attempt of it (speculative execution) still runs: it decides
        self.stop.request(self.init_failures.note(result, self.tally.succeeded_mini_batches > 0))
        tries = self.tries.get(mb.index, 1)  # speculative copies are not tries
        step = next_step(result, tries, self.config.run_max_try, stopping=bool(self.stop.reason))
        if step is Step.DROP:
            return
        if result.ok and not result.reused:
            self._supersede(mb, attempt)
        if step is Step.RETRY:
            pending.retry(mb, self.flight.next_number(mb.index))
            self.tally.note_retry(mb)
            self.progress.note_error(result, final=False)
        else:
            self._finalise(mb, result)
            if step is Step.FAIL:
                self.progress.note_error(result, final=True)
        all_scheduled = not len(pending) and not self.listing
        self.stop.request(threshold_breach(self.tally, self.config, all_scheduled=all_scheduled))

    def _admit(self, mb: MiniBatch, result: AttemptResult) -> AttemptResult:
        """A successful attempt fails (and is not committed) when an input file changed after the job
        fingerprinted it, or when its records cannot join the job's schema (checked second: a schema
        admits the columns it is shown)."""
        if mb.index in self.tally.finished:
            return result  # a duplicate delivery: the first outcome stands
        return self.sink.admit(mb.index, self.reuse.check_inputs(mb, result))

    def _finalise(self, mb: MiniBatch, result: AttemptResult) -> None:
        """Counts a mini-batch's final outcome; a success is stored in the cache (unless reused) and
        committed to the output."""
        self.tally.record(mb, result)
        if not result.ok:
            return
        self.speculation.finished(result)
        files_url = None
        if not result.reused:
            files_url = result.files_url  # the booked run's, never a run again's (core/worker/attempt.py)
            note = self.reuse.commit(result, files_url)
            if note:
                self.logs.master(note)
                if not self._said_uncached:  # once: a reason that holds for one often holds for all
                    self._said_uncached = True
                    self._say(f"Warning: {note} (each such mini-batch: logs/sys/master_role.txt)")
        self.sink.commit(mb.index, result, files_url)

    def _halt(self, stream: AttemptStream, pending: Pending) -> None:
        """No new attempt or process from now on; running ones are killed and what they report is booked
        (CANCELLED for killed ones, a success that finished meanwhile is kept)."""
        self.stop.note()
        pending.clear()
        if self.feed is not None:
            self.feed.stop()
        self.stop.broadcast(stream.client)
        for mb, _attempt, result in stream.drain():
            result = self._admit(mb, result)
            if result.status is AttemptStatus.CANCELLED and result.stage is AttemptStage.START:
                continue  # reached a worker after the stop and started nothing: no row
            if result.status is AttemptStatus.CANCELLED:
                self.stop.cancelled_attempts += 1
            self.logs.attempt(result, json.dumps(mb.describe()))
            if result.ok and mb.index not in self.tally.finished:
                self._finalise(mb, result)

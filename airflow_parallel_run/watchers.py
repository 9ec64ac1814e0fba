"""Event-driven arrival: one asset event per partition that lands complete, without a sensor holding a slot.

`PartitionArrivalTrigger` is a `BaseEventTrigger` for an Airflow 3 `AssetWatcher`. It watches a folder
(local path or fsspec URL) whose sub-folders are partitions (``2024-01-01/`` or hive style
``date=2024-01-01/``: the key is the folder name, or the value after ``=``), and fires one event per
partition that becomes complete by `DatasetPartitionSensor`'s rules (marker file, minimum file count,
or sizes stable across pokes: the engine's `check_partition`, the same code the sensor polls with). The
event's payload names the partition: ``{"partition_key", "uri", "files", "bytes", "seen"}``.

**Exactly once, across triggerer restarts.** What has fired is kept in a state file (JSON,
``<cache root>/watchers/<root's name>-<hash>.json`` unless ``state_path`` says otherwise; on a multi-host
deployment the cache root is shared storage anyway). In the triggerer the trigger runs in the
shared-stream *ack mode*: a partition is recorded as fired once Airflow confirmed its event is stored.
A restart therefore does not fire a recorded partition again, and one that landed while the triggerer
was down fires when it is back, from a fresh listing. What is *done* is decided by Airflow's own event
history, not by the watcher: `ArrivedPartitionsOperator` writes the keys it finds announced on its
target asset beside the state (``...announced.json``; its own keys as soon as Airflow stored them, in
its success callback), and a fired partition that does not get there within `refire_after` seconds is
fired again (its event was lost: a triggerer killed between firing
and storing, seen on the real stack). The router announces a key at most once (it checks the target's
history), so a repeat never scores a partition twice. The trigger never touches the metadata DB.

**Partition keys on the events.** Airflow 3.3 stores a watcher's events without a partition key, and a
`PartitionedAssetTimetable` ignores events without one. `ArrivedPartitionsOperator` (a one-task DAG
scheduled on the watched asset) re-announces each arrival on a second asset with
``add_partitions(key)``; a scoring DAG scheduled with ``PartitionedAssetTimetable`` on that asset then
runs once per partition, with the key as its ``partition_key``. Several watcher events that reach one
router run (Airflow merges queued asset triggers into one run), or that no run consumed (stored while
a run was being queued), are announced one by one all the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import posixpath
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

from airflow_parallel_run.core import ConfigError, FileDataset, InputError
from airflow_parallel_run.core.plan.completeness import Completeness, check_partition
from airflow_parallel_run.partitions import EXTRA_PARTITIONS, check_event_key

if TYPE_CHECKING:
    from airflow.sdk import Context

STATE_VERSION = 1
#: How far back `ArrivedPartitionsOperator` reads the watched asset's events (arrivals no run consumed)
#: and the target's (keys announced already; a watcher repeats an event only after a crash).
DEDUP_WINDOW = dt.timedelta(days=7)


def _secret_options() -> tuple[str, ...]:
    from airflow_parallel_run.hooks import SECRET_OPTIONS

    return SECRET_OPTIONS


def partition_key_of(folder_name: str) -> str:
    """The partition key of a partition folder: its name, or the value of a hive ``key=value`` name."""
    return folder_name.split("=", 1)[1] if "=" in folder_name else folder_name


def default_state_path(root: str) -> str:
    """``<cache root>/watchers/<root's last folder name>-<hash of root>.json`` (`[parallel_run]
    cache_root`, else the engine's default root)."""
    from airflow.sdk.configuration import conf

    from airflow_parallel_run.core.reuse.cache import resolve_cache_root

    cache_root = resolve_cache_root(conf.get("parallel_run", "cache_root", fallback=None) or None)
    digest = hashlib.sha256(root.rstrip("/").encode("utf-8")).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", posixpath.basename(root.rstrip("/")))[-60:] or "root"
    return f"{cache_root.rstrip('/')}/watchers/{name}-{digest}.json"


def announced_path(state_path: str) -> str:
    """Where `ArrivedPartitionsOperator` records the keys it found announced (beside the watcher's state)."""
    return state_path.removesuffix(".json") + ".announced.json"


def read_announced(path: str, storage_options: Mapping[str, Any]) -> set[str]:
    import fsspec

    try:
        with fsspec.open(path, "rb", **storage_options) as handle:
            return set(json.loads(handle.read()).get("announced") or [])
    except FileNotFoundError:
        return set()


class ArrivalWatch:
    """The watcher's logic, outside Airflow's trigger machinery: list, check, remember.

    `arrivals()` yields the payload of each complete partition that is neither recorded as fired nor
    offered already; `record()` marks keys fired (atomically rewriting the state file); `release()`
    offers keys again (their events were not stored).
    """

    def __init__(
        self,
        root: str,
        rule: Completeness,
        poke_interval: float,
        state_path: str,
        storage_options: Mapping[str, Any] | None = None,
        refire_after: float = 300.0,
    ) -> None:
        self.root = root.rstrip("/")
        self.refire_after = refire_after
        self.rule = rule
        self.poke_interval = poke_interval
        self.state_path = state_path
        self.storage_options = dict(storage_options or {})
        self.fired: dict[str, dict[str, Any]] = {}
        self.announced: set[str] = set()
        self.offered: set[str] = set()
        self.pokes: dict[str, dict[str, Any]] = {}  # stable-pokes state per pending partition
        self.refused: set[str] = set()

    # -- state -------------------------------------------------------------------------------------
    def load(self) -> None:
        """Reads the state file (none yet: nothing fired). A file of another root is an error: two
        watchers must not share one."""
        import fsspec

        try:
            with fsspec.open(self.state_path, "rb", **self.storage_options) as handle:
                data = json.loads(handle.read())
        except FileNotFoundError:
            self.fired = {}
            return
        if data.get("root") != self.root:
            raise InputError(
                f"watcher state {self.state_path!r} belongs to {data.get('root')!r}, not {self.root!r}; "
                "give each watcher its own state_path"
            )
        self.fired = dict(data.get("fired") or {})

    def record(self, payloads: Iterable[Mapping[str, Any]]) -> None:
        """Marks the payloads' partitions fired and writes the state file (whole, atomically)."""
        from airflow_parallel_run.core.storage import write_atomic

        now = dt.datetime.now(dt.timezone.utc).isoformat()
        added = False
        for payload in payloads:
            key = str(payload["partition_key"])
            self.offered.discard(key)
            fired = self.fired.setdefault(key, {"files": payload.get("files"), "bytes": payload.get("bytes")})
            fired["at"] = now
            fired["times"] = int(fired.get("times", 0)) + 1
            added = True
        if added:
            document = {"version": STATE_VERSION, "root": self.root, "fired": self.fired}
            write_atomic(self.state_path, json.dumps(document, indent=1).encode(), self.storage_options)

    def release(self, keys: Iterable[str]) -> None:
        self.offered.difference_update(keys)

    def load_announced(self) -> None:
        """The keys `ArrivedPartitionsOperator` found announced in Airflow's own event history
        (`announced_path`): those are done for good."""
        self.announced = read_announced(announced_path(self.state_path), self.storage_options)

    def due(self, key: str) -> bool:
        """Whether `key` is to be fired now: never fired, or fired more than `refire_after` seconds ago
        and still not announced (its event was lost, e.g. the triggerer died before Airflow stored it)."""
        if key in self.announced or key in self.offered or key in self.refused:
            return False
        fired = self.fired.get(key)
        if fired is None:
            return True
        at = dt.datetime.fromisoformat(str(fired["at"]))
        return (dt.datetime.now(dt.timezone.utc) - at).total_seconds() >= self.refire_after

    # -- polling -----------------------------------------------------------------------------------
    def partitions(self) -> list[tuple[str, str]]:
        """(key, folder URL) of every partition folder, sorted by key. Names starting with ``.`` or
        ``_`` (``_temporary``, ``.staging``) are not partitions. A root that does not exist yet has none."""
        from fsspec.core import url_to_fs

        try:
            fs, path = url_to_fs(self.root, **self.storage_options)
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        except (OSError, ValueError, ImportError) as exc:
            raise InputError(
                f"watched folder {self.root!r} cannot be listed: {type(exc).__name__}: {exc}"
            ) from exc
        found = []
        for entry in entries:
            if entry.get("type") != "directory":
                continue
            name = posixpath.basename(str(entry["name"]).rstrip("/"))
            if not name or name.startswith((".", "_")):
                continue
            found.append((partition_key_of(name), f"{self.root}/{name}"))
        return sorted(found)

    def check(self, key: str, url: str) -> dict[str, Any] | None:
        """The event payload when partition `key` is complete now, else None."""
        dataset = FileDataset.from_files(url, storage_options=self.storage_options)
        complete, state, seen = check_partition([dataset], self.rule, self.pokes.get(key))
        self.pokes[key] = state
        if not complete:
            return None
        self.pokes.pop(key, None)
        listing = state.get("listing") if isinstance(state.get("listing"), dict) else None
        files, size = _counts(seen, listing)
        return {"partition_key": key, "uri": url, "files": files, "bytes": size, "seen": seen}

    def poll(self) -> list[dict[str, Any]]:
        """One look at the root: the payloads of newly complete partitions (now offered)."""
        ready = []
        self.load_announced()
        for key, url in self.partitions():
            if not self.due(key):
                continue
            problem = check_event_key(key)
            if problem is not None:
                self.refused.add(key)
                continue
            payload = self.check(key, url)
            if payload is not None:
                self.offered.add(key)
                ready.append(payload)
        return ready

    async def arrivals(self) -> AsyncIterator[dict[str, Any]]:
        """Payloads of newly complete partitions, forever (one poll every `poke_interval` seconds)."""
        await asyncio.to_thread(self.load)
        while True:
            for payload in await asyncio.to_thread(self.poll):
                yield payload
            await asyncio.sleep(self.poke_interval)


def _counts(seen: str, listing: Mapping[str, int] | None) -> tuple[int | None, int | None]:
    """Files and bytes of a complete partition (from the listing when the rule kept one, else from the
    check's own "<n> files, <b> bytes" line)."""
    if listing is not None:
        return len(listing), sum(int(v) for v in listing.values())
    try:
        files_text, bytes_text = seen.split(";", 1)[0].split(",", 1)
        return int(files_text.split()[0]), int(bytes_text.split()[0])
    except (ValueError, IndexError):
        return None, None


class PartitionArrivalTrigger(BaseEventTrigger):
    """Fires one event per partition (sub-folder) of `root` that becomes complete; see the module docstring.

    :param root: the folder whose sub-folders are partitions (path or fsspec URL).
    :param marker_file: complete when this file (e.g. ``_SUCCESS``) is in the partition; or
    :param min_file_count: complete when at least this many files are listed; or
    :param stable_pokes: complete when names and sizes are unchanged for this many polls.
    :param poke_interval: seconds between two looks at `root`.
    :param state_path: where the fired partitions are recorded (default in the cache root).
    :param refire_after: seconds after which a fired partition that `ArrivedPartitionsOperator` has not
        found announced is fired again (its event may have been lost with a dying triggerer).
    :param storage_conn_id: an Airflow connection with the store's credentials (as the operator's).
    :param storage_options: fsspec options without secrets (they would travel in the serialized DAG):
        credentials belong in `storage_conn_id`.
    """

    def __init__(
        self,
        root: str,
        *,
        marker_file: str | None = None,
        min_file_count: int | None = None,
        stable_pokes: int | None = None,
        poke_interval: float = 30.0,
        state_path: str | None = None,
        storage_conn_id: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        refire_after: float = 300.0,
    ) -> None:
        super().__init__()
        if not isinstance(root, str) or not root.strip():
            raise ConfigError("root", root, "a folder path or fsspec URL whose sub-folders are partitions")
        self.rule = Completeness(marker_file, min_file_count, stable_pokes)
        if (
            isinstance(poke_interval, bool)
            or not isinstance(poke_interval, (int, float))
            or poke_interval <= 0
        ):
            raise ConfigError("poke_interval", poke_interval, "a number of seconds > 0")
        secrets = sorted(set(storage_options or {}) & set(_secret_options()))
        if secrets:
            raise ConfigError(
                "storage_options",
                secrets,
                "options without secrets (a watcher's arguments are stored in the serialized DAG): put "
                "credentials in an Airflow connection and pass storage_conn_id",
            )
        self.root = root.strip().rstrip("/")
        self.marker_file = marker_file
        self.min_file_count = min_file_count
        self.stable_pokes = stable_pokes
        self.poke_interval = float(poke_interval)
        self.refire_after = float(refire_after)
        self.state_path = state_path
        self.storage_conn_id = storage_conn_id
        self.storage_options = dict(storage_options or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_parallel_run.watchers.PartitionArrivalTrigger",
            {
                "root": self.root,
                "marker_file": self.marker_file,
                "min_file_count": self.min_file_count,
                "stable_pokes": self.stable_pokes,
                "poke_interval": self.poke_interval,
                "refire_after": self.refire_after,
                "state_path": self.state_path,
                "storage_conn_id": self.storage_conn_id,
                "storage_options": self.storage_options,
            },
        )

    # -- the watch -------------------------------------------------------------------------------
    def resolved_state_path(self) -> str:
        return self.state_path or default_state_path(self.root)

    def resolved_storage_options(self) -> dict[str, Any]:
        """`storage_options` over the connection's (synchronous: for a task, not the triggerer)."""
        options = dict(self.storage_options)
        if self.storage_conn_id:
            from airflow_parallel_run.hooks import storage_options_from_connection

            options = {**storage_options_from_connection(self.storage_conn_id), **options}
        return options

    @classmethod
    async def build_watch(cls, kwargs: Mapping[str, Any]) -> ArrivalWatch:
        """The `ArrivalWatch` of serialized kwargs (credentials from `storage_conn_id`, read here, in
        the triggerer, never stored with the trigger)."""
        trigger = cls(**kwargs)
        options = dict(trigger.storage_options)
        if trigger.storage_conn_id:
            from airflow.sdk import BaseHook

            from airflow_parallel_run.hooks import connection_storage_options

            conn = await BaseHook.aget_connection(trigger.storage_conn_id)
            options = {**connection_storage_options(conn), **options}
        state_path = trigger.state_path
        if not state_path:
            state_path = await asyncio.to_thread(default_state_path, trigger.root)
        return ArrivalWatch(
            trigger.root, trigger.rule, trigger.poke_interval, state_path, options, trigger.refire_after
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """The standalone path (outside the triggerer's shared streams, e.g. a test driving the
        coroutine): a partition is recorded once the consumer took its event and asked for the next."""
        watch = await self.build_watch(self.serialize()[1])
        async for payload in watch.arrivals():
            yield TriggerEvent(payload)
            await asyncio.to_thread(watch.record, [payload])

    # -- the triggerer's ack mode: record only what Airflow stored ---------------------------------
    def shared_stream_key(self) -> Any:
        return (
            "airflow_parallel_run.watchers.PartitionArrivalTrigger",
            json.dumps(self.serialize()[1], sort_keys=True),
        )

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> SharedStreamProducer:
        return ArrivalProducer(kwargs)

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        async for payload in shared_stream:
            yield TriggerEvent(payload)


class ArrivalProducer(SharedStreamProducer):
    """The broker side of `PartitionArrivalTrigger` in ack mode: `advance` records exactly the partitions
    whose events Airflow stored, and offers the others again."""

    def __init__(self, kwargs: Mapping[str, Any]) -> None:
        self.kwargs = dict(kwargs)
        self.watch: ArrivalWatch | None = None

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        self.watch = await PartitionArrivalTrigger.build_watch(self.kwargs)
        async for payload in self.watch.arrivals():
            yield payload, payload

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        assert self.watch is not None
        stored = [item.broker_payload for item in batch if item.outcome.is_clean]
        self.watch.release(
            str(item.broker_payload["partition_key"]) for item in batch if not item.outcome.is_clean
        )
        if stored:
            await asyncio.to_thread(self.watch.record, stored)


class ArrivedPartitionsOperator(BaseOperator):
    """Announces the partitions a `PartitionArrivalTrigger` reported, as partitioned events of `target`.

    Schedule its DAG on the watched asset (``schedule=[source]``, ``max_active_runs=1``); a scoring DAG
    scheduled with ``PartitionedAssetTimetable(assets=target)`` then runs once per arrived partition.

    It reads `source`'s event *history* (the last `window`), not only the events that triggered its
    run: Airflow merges asset events that arrive while a run of the DAG is being queued into that queue
    entry, and one stored after the entry was made but before the run was created is consumed by no
    run (it belongs to neither run's event window) and queues none. Such an event is stored before this
    run was created, so this run's history holds it. A key `target` already announced within `window`
    is not announced again (a repeat from a watcher that died between storing an event and recording
    it). The event extra carries each partition's payload under ``partitions`` (folder, files, bytes).

    :param source: the watched asset (its watcher is a `PartitionArrivalTrigger`).
    :param target: the asset the partitioned events go to.
    :param window: how far back both assets' event histories are read.
    """

    ui_color = "#e8f0d8"

    def __init__(
        self,
        *,
        source: Asset,
        target: Asset,
        window: dt.timedelta = DEDUP_WINDOW,
        **kwargs: Any,
    ) -> None:
        kwargs["inlets"] = [*(kwargs.get("inlets") or []), source, target]
        kwargs["outlets"] = [*(kwargs.get("outlets") or []), target]
        super().__init__(**kwargs)
        self.source = source
        self.target = target
        self.window = window
        # after Airflow stored this run's events: a callback, since `execute` ends before they are stored
        self.on_success_callback = [*self.on_success_callback, self.record_announced]

    def _since(self) -> str:
        return (dt.datetime.now(dt.timezone.utc) - self.window).isoformat()

    def _announced(self, context: Context) -> set[str]:
        """The keys Airflow holds announced on `target` within `window` (read afresh: ``after`` drops
        the accessor's cache)."""
        return {
            str(e.partition_key)
            for e in context["inlet_events"][self.target].after(self._since())
            if getattr(e, "partition_key", None)
        }

    def execute(self, context: Context) -> list[str]:
        since = self._since()
        triggering = arrived_payloads(context["triggering_asset_events"][self.source])
        arrivals = arrived_payloads(context["inlet_events"][self.source].after(since))
        announced = self._announced(context)
        self._tell_watchers(announced)
        fresh = {k: a for k, a in arrivals.items() if k not in announced}
        for key in sorted(set(triggering) & announced):
            self.log.warning("Partition %r was announced on %s already: not again", key, self.target.uri)
        late = sorted(set(fresh) - set(triggering))
        if late:
            self.log.info("Also announcing arrivals no run consumed: %s", ", ".join(late))
        if not fresh:
            self.log.info("No partition to announce")
            return []
        accessor = context["outlet_events"][self.target]
        accessor.extra[EXTRA_PARTITIONS] = {k: a["payload"] for k, a in fresh.items()}
        accessor.add_partitions(sorted(fresh))
        self.log.info(
            "Announced %d arrived partition(s) on %s: %s",
            len(fresh),
            self.target.uri,
            ", ".join(sorted(fresh)),
        )
        return sorted(fresh)

    def record_announced(self, context: Context) -> None:
        """The success callback: tells the watchers the keys this run announced, now that Airflow
        stored its events (a task's outlet events are stored when its success is reported, after
        `execute`, and before its success callbacks run). Without it they would learn them only from
        the next run, and a restarted watcher whose `refire_after` passed meanwhile would fire them
        again. A run that dies before this point leaves them to the next run (a repeat the router
        drops)."""
        announced = self._announced(context)
        told = self._tell_watchers(announced)
        self.log.info(
            "Announced on %s (Airflow's history): %s; told %d watcher(s)",
            self.target.uri,
            ", ".join(sorted(announced)) or "none",
            told,
        )

    def _tell_watchers(self, announced: set[str]) -> int:
        """Records, beside each `PartitionArrivalTrigger`'s state, the keys Airflow holds announced:
        the watcher stops re-firing those (one that stays unannounced is fired again after
        `refire_after`: its event was lost). Returns how many watchers it found."""
        from airflow_parallel_run.core.storage import write_atomic

        told = 0
        for watcher in getattr(self.source, "watchers", None) or []:
            trigger = watcher.trigger
            if not isinstance(trigger, PartitionArrivalTrigger):
                continue
            told += 1
            path = announced_path(trigger.resolved_state_path())
            options = trigger.resolved_storage_options()
            known = read_announced(path, options)
            if announced <= known:
                continue
            document = {"version": STATE_VERSION, "announced": sorted(known | announced)}
            write_atomic(path, json.dumps(document, indent=1).encode(), options)
        return told


def arrived_payloads(events: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Partition key → {"payload", "timestamp"} of `PartitionArrivalTrigger` events (the first event of
    a key wins; events of other sources are skipped)."""
    found: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.timestamp):
        extra = dict(event.extra or {})
        payload = extra.get("payload")
        if not extra.get("from_trigger") or not isinstance(payload, Mapping):
            continue
        key = payload.get("partition_key")
        if isinstance(key, str) and key not in found and check_event_key(key) is None:
            found[key] = {"payload": dict(payload), "timestamp": event.timestamp}
    return found


__all__ = [
    "ArrivalProducer",
    "ArrivalWatch",
    "ArrivedPartitionsOperator",
    "PartitionArrivalTrigger",
    "arrived_payloads",
    "partition_key_of",
]

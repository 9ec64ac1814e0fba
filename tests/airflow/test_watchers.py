"""The arrival watcher (airflow_parallel_run/watchers.py): one event per complete partition, exactly once
across restarts, and the router that turns its events into partitioned asset events.

The trigger's coroutines run for real on real folders: `run()` driven as the triggerer drives it (pull the
next event as soon as one arrived), and the ack-mode producer driven as the triggerer's shared-stream
manager drives it (`open_stream`, then `advance` with the events Airflow stored).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import Asset, AssetWatcher
from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
from airflow.sdk.execution_time.context import OutletEventAccessors, TriggeringAssetEventsAccessor
from airflow.sdk.execution_time.task_runner import _serialize_outlet_events
from airflow.triggers.shared_stream import AdvanceItem, AdvanceOutcome
from test_error_catalogue_airflow import check_documented

from airflow_parallel_run.core import ConfigError
from airflow_parallel_run.watchers import (
    ArrivalProducer,
    ArrivedPartitionsOperator,
    PartitionArrivalTrigger,
    announced_path,
    arrived_payloads,
)

POLL = 0.05
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
LANDING = Asset(name="landing", uri="file:///landing")
ARRIVED = Asset(name="arrived", uri="file:///arrived")


def land(root: Path, name: str, files: int = 2, marker: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"img{i}.png").write_bytes(b"x" * (i + 1))
    if marker:
        (folder / "_SUCCESS").touch()
    return folder


def trigger(root: Path, state: Path, **rule: Any) -> PartitionArrivalTrigger:
    rule = rule or {"marker_file": "_SUCCESS"}
    return PartitionArrivalTrigger(str(root), poke_interval=POLL, state_path=str(state), **rule)


class Triggerer:
    """Drives `run()` as Airflow's triggerer does: every event is taken and the next one asked for at once."""

    def __init__(self, instance: PartitionArrivalTrigger) -> None:
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._drive(instance.run()))

    async def _drive(self, stream: AsyncIterator[Any]) -> None:
        async for event in stream:
            self.events.append(event.payload)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.events) < count:
            if self.task.done():
                self.task.result()
            assert asyncio.get_running_loop().time() < deadline, f"only {self.events}"
            await asyncio.sleep(POLL)
        return [e["partition_key"] for e in self.events]

    async def kill(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.mark.asyncio
async def test_run_fires_each_complete_partition_once_across_a_restart(tmp_path: Path) -> None:
    root, state = tmp_path / "landing", tmp_path / "state" / "watch.json"
    land(root, "2024-01-01")
    land(root, "2024-01-02", marker=False)  # still being written
    land(root, "_temporary")  # a writer's scratch folder is not a partition
    first = Triggerer(trigger(root, state))
    assert await first.wait_for(1) == ["2024-01-01"]
    (root / "2024-01-02" / "_SUCCESS").touch()
    assert await first.wait_for(2) == ["2024-01-01", "2024-01-02"]
    await asyncio.sleep(5 * POLL)
    await first.kill()
    assert first.events[1] == {
        "partition_key": "2024-01-02",
        "uri": f"{root}/2024-01-02",
        "files": 2,
        "bytes": 3,
        "seen": "2 files, 3 bytes; complete (marker file _SUCCESS)",
    }
    land(root, "2024-01-03")  # lands while the triggerer is down
    second = Triggerer(trigger(root, state))
    assert await second.wait_for(1) == ["2024-01-03"]
    await asyncio.sleep(10 * POLL)  # many polls later: nothing fired twice
    await second.kill()
    assert [e["partition_key"] for e in second.events] == ["2024-01-03"]
    recorded = json.loads(state.read_text())
    assert recorded["root"] == str(root) and sorted(recorded["fired"]) == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
    ]


@pytest.mark.asyncio
async def test_a_partition_never_announced_is_fired_again_until_it_is(tmp_path: Path) -> None:
    """An event can be lost between the trigger and Airflow's database (a triggerer SIGKILLed right after
    firing, seen on the real stack): the partition is fired again after `refire_after`, until the router
    found it announced in Airflow's history; then never again."""
    root, state = tmp_path / "landing", tmp_path / "watch.json"
    land(root, "a")
    instance = PartitionArrivalTrigger(
        str(root), marker_file="_SUCCESS", poke_interval=POLL, state_path=str(state), refire_after=0.3
    )
    watcher = Triggerer(instance)
    assert await watcher.wait_for(2) == ["a", "a"], "fired again: nobody announced it"
    # what the router writes once it found "a" in the target asset's history
    Path(announced_path(str(state))).write_text(json.dumps({"version": 1, "announced": ["a"]}))
    await asyncio.sleep(0.5)
    count = len(watcher.events)
    await asyncio.sleep(1.0)  # three refire periods
    await watcher.kill()
    assert len(watcher.events) == count <= 3, "announced: never fired again"
    assert json.loads(state.read_text())["fired"]["a"]["times"] == count


@pytest.mark.asyncio
async def test_hive_folders_and_the_other_completeness_rules(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    land(root, "day=2024-01-01", files=3, marker=False)
    land(root, "day=2024-01-02", files=1, marker=False)
    watcher = Triggerer(trigger(root, tmp_path / "count.json", min_file_count=2))
    assert await watcher.wait_for(1) == ["2024-01-01"]
    await watcher.kill()
    stable = Triggerer(trigger(root, tmp_path / "stable.json", stable_pokes=3))
    await stable.wait_for(2)
    await stable.kill()
    assert sorted(e["partition_key"] for e in stable.events) == ["2024-01-01", "2024-01-02"]
    by_key = {e["partition_key"]: (e["files"], e["bytes"], e["seen"]) for e in stable.events}
    assert by_key["2024-01-01"] == (3, 6, "3 files, 6 bytes; complete (file sizes unchanged for 3 pokes)")


@pytest.mark.asyncio
async def test_ack_mode_records_only_partitions_whose_events_airflow_stored(tmp_path: Path) -> None:
    """The triggerer's path: a partition whose event was not stored (triggerer died, store failed) is
    offered again, by the same producer after a failed outcome and by a new one after a restart."""
    root, state = tmp_path / "landing", tmp_path / "watch.json"
    land(root, "a")
    land(root, "b")
    kwargs = trigger(root, state).serialize()[1]
    producer = PartitionArrivalTrigger.create_shared_stream_producer(kwargs)
    assert isinstance(producer, ArrivalProducer)
    stream = producer.open_stream()
    (first, first_payload), (second, second_payload) = [await anext(stream), await anext(stream)]
    assert [first["partition_key"], second["partition_key"]] == ["a", "b"]
    await producer.advance(
        [
            AdvanceItem(first_payload, AdvanceOutcome(acked=1, failed=0)),
            AdvanceItem(second_payload, AdvanceOutcome(acked=0, failed=1)),  # never confirmed stored
        ]
    )
    again, again_payload = await asyncio.wait_for(anext(stream), 5)
    assert again["partition_key"] == "b", "a failed event is offered again"
    await stream.aclose()  # the triggerer stops before "b" is stored
    assert sorted(json.loads(state.read_text())["fired"]) == ["a"]

    restarted = PartitionArrivalTrigger.create_shared_stream_producer(kwargs)
    stream = restarted.open_stream()
    offered, payload = await asyncio.wait_for(anext(stream), 5)
    assert offered["partition_key"] == "b"
    await restarted.advance([AdvanceItem(payload, AdvanceOutcome(acked=1, failed=0))])
    with pytest.raises(asyncio.TimeoutError):  # everything is recorded: nothing more to offer
        await asyncio.wait_for(anext(stream), 10 * POLL)
    await stream.aclose()
    assert sorted(json.loads(state.read_text())["fired"]) == ["a", "b"]


@pytest.mark.asyncio
async def test_the_filter_turns_each_shared_payload_into_one_trigger_event(tmp_path: Path) -> None:
    instance = trigger(tmp_path, tmp_path / "s.json")

    async def shared() -> AsyncIterator[dict[str, Any]]:
        yield {"partition_key": "a"}
        yield {"partition_key": "b"}

    events = [e.payload async for e in instance.filter_shared_stream(shared())]
    assert events == [{"partition_key": "a"}, {"partition_key": "b"}]
    assert instance.shared_stream_key() == trigger(tmp_path, tmp_path / "s.json").shared_stream_key()
    assert instance.shared_stream_key() != trigger(tmp_path, tmp_path / "other.json").shared_stream_key()


@pytest.mark.asyncio
async def test_a_state_file_of_another_root_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "watch.json"
    state.write_text(json.dumps({"version": 1, "root": "/somewhere/else", "fired": {}}))
    watcher = Triggerer(trigger(tmp_path / "landing", state))
    with pytest.raises(Exception, match="belongs to '/somewhere/else'"):
        await watcher.wait_for(1)


def test_the_trigger_is_an_asset_watcher_and_keeps_secrets_out_of_the_dag(tmp_path: Path) -> None:
    instance = trigger(tmp_path, tmp_path / "s.json")
    watcher = AssetWatcher(name="landing_watcher", trigger=instance)
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow_parallel_run.watchers.PartitionArrivalTrigger"
    assert PartitionArrivalTrigger(**kwargs).serialize() == (classpath, kwargs)
    with pytest.raises(ConfigError) as info:
        PartitionArrivalTrigger(
            "s3://bucket/landing", marker_file="_SUCCESS", storage_options={"secret": "x", "key": "k"}
        )
    check_documented(
        "storage_options=<names> is not allowed: options without secrets (a watcher's arguments are stored in "
        "the serialized DAG): put credentials in an Airflow connection and pass storage_conn_id",
        str(info.value),
    )
    with pytest.raises(ConfigError, match="exactly one of marker_file, min_file_count, stable_pokes"):
        PartitionArrivalTrigger(str(tmp_path))


# -- the router ------------------------------------------------------------------------------------
def _event(extra: dict[str, Any], minute: int, key: str | None = None) -> AssetEventDagRunReferenceResult:
    return AssetEventDagRunReferenceResult(
        asset={"name": "landing", "uri": "file:///landing", "extra": {}},
        extra=extra,
        source_task_id=None,
        source_dag_id=None,
        source_run_id=None,
        source_map_index=None,
        source_aliases=[],
        timestamp=dt.datetime(2024, 1, 1, 0, minute, tzinfo=dt.timezone.utc),
        partition_key=key,
    )


def _arrival(key: str, minute: int) -> AssetEventDagRunReferenceResult:
    return _event({"from_trigger": True, "payload": {"partition_key": key, "uri": f"/landing/{key}"}}, minute)


class History(list):
    """`inlet_events[asset]`: an asset's stored events, filtered by `.after()`."""

    def after(self, since: str) -> History:
        self.since = since
        return History(e for e in self if e.timestamp.isoformat() > since)


def test_the_router_announces_each_arrival_once(tmp_path: Path) -> None:
    state = tmp_path / "watch.json"
    watched = Asset(
        name="landing",
        uri="file:///landing",
        watchers=[AssetWatcher(name="w", trigger=trigger(tmp_path / "landing", state))],
    )
    router = ArrivedPartitionsOperator(task_id="announce", source=watched, target=ARRIVED)
    assert watched in router.inlets and ARRIVED in router.inlets and router.outlets == [ARRIVED]
    now = dt.datetime.now(dt.timezone.utc)
    old = now - dt.timedelta(days=30)
    triggering = [
        _arrival("2024-01-01", 2),  # repeated by a watcher that restarted in its ack window
        _arrival("2024-01-03", 3),
        _arrival("2024-01-02", 4),
        _arrival("2024-01-02", 5),
        _event({"from_trigger": True, "payload": "not ours"}, 6),
    ]
    for event in triggering:
        event.timestamp = now - dt.timedelta(minutes=10 - event.timestamp.minute)
    orphan = _arrival("2024-01-04", 7)  # stored while the run was queued: consumed by no run
    orphan.timestamp = now - dt.timedelta(minutes=1)
    ancient = _arrival("2023-01-01", 8)  # outside the window: not read again
    ancient.timestamp = old
    announced = _event({}, 1, key="2024-01-01")  # by an earlier run
    announced.timestamp = now - dt.timedelta(hours=1)
    outlets = OutletEventAccessors()
    context = {
        "triggering_asset_events": TriggeringAssetEventsAccessor.build(triggering),
        "inlet_events": {watched: History([ancient, *triggering, orphan]), ARRIVED: History([announced])},
        "outlet_events": outlets,
    }
    assert router.execute(context) == ["2024-01-02", "2024-01-03", "2024-01-04"]  # type: ignore[arg-type]
    registered = list(_serialize_outlet_events(outlets))
    assert sorted(e["partition_key"] for e in registered) == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert registered[0]["extra"]["partitions"]["2024-01-03"] == {
        "partition_key": "2024-01-03",
        "uri": "/landing/2024-01-03",
    }
    assert set(arrived_payloads(triggering)) == {"2024-01-01", "2024-01-02", "2024-01-03"}
    # the watcher learns what Airflow holds announced (this run's keys: from the next run on)
    assert json.loads(Path(announced_path(str(state))).read_text())["announced"] == ["2024-01-01"]


def test_the_router_tells_the_watcher_its_own_keys_once_airflow_stored_them(tmp_path: Path) -> None:
    """A restarted watcher must not fire again what this very run announced: the router records its own
    keys in its success callback (after Airflow stored the events), not only from its next run on. Seen
    on the real stack: a triggerer restarted more than `refire_after` after the last router run fired the
    announced partitions again."""
    root, state = tmp_path / "landing", tmp_path / "watch.json"
    land(root, "2024-01-01")
    land(root, "2024-01-02")
    watched = Asset(
        name="landing", uri="file:///landing", watchers=[AssetWatcher(name="w", trigger=trigger(root, state))]
    )
    router = ArrivedPartitionsOperator(task_id="announce", source=watched, target=ARRIVED)
    now = dt.datetime.now(dt.timezone.utc)
    arrivals = [_arrival("2024-01-01", 1), _arrival("2024-01-02", 2)]
    for event in arrivals:
        event.timestamp = now - dt.timedelta(minutes=1)
    stored: History = History()
    outlets = OutletEventAccessors()
    context = {
        "triggering_asset_events": TriggeringAssetEventsAccessor.build(arrivals),
        "inlet_events": {watched: History(arrivals), ARRIVED: stored},
        "outlet_events": outlets,
    }
    fired_long_ago = (now - dt.timedelta(hours=1)).isoformat()
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "root": str(root),
                "fired": {k: {"at": fired_long_ago, "times": 1} for k in ("2024-01-01", "2024-01-02")},
            }
        )
    )
    assert router.execute(context) == ["2024-01-01", "2024-01-02"]  # type: ignore[arg-type]
    # Airflow stores the run's events when its success is reported, then runs the success callbacks
    for registered in _serialize_outlet_events(outlets):
        stored.append(_event({}, 3, key=registered["partition_key"]))
        stored[-1].timestamp = now
    assert router.on_success_callback, "the router needs its success callback"
    for callback in router.on_success_callback:
        callback(context)  # type: ignore[arg-type]
    restarted = trigger(root, state).build_watch  # the watcher as a restarted triggerer builds it
    watch = asyncio.run(restarted({**trigger(root, state).serialize()[1], "refire_after": 0.0}))
    watch.load()
    assert watch.poll() == [], "a restarted watcher fired again partitions the router announced"


def test_the_routers_callback_keeps_the_users_callbacks(tmp_path: Path) -> None:
    seen: list[str] = []
    router = ArrivedPartitionsOperator(
        task_id="announce",
        source=LANDING,
        target=ARRIVED,
        on_success_callback=lambda context: seen.append("user"),
    )
    assert len(router.on_success_callback) == 2
    router.on_success_callback[0]({})  # type: ignore[arg-type]
    assert seen == ["user"]

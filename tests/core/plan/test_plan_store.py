"""The plan kept on disk (core/plan/store.py, core/spill.py, core/json_stream.py): it gives back exactly
what the in-RAM structures it replaces gave (the plan's mini-batches, the keys dict, the fingerprints
dict in both its orders, the documents `json.dumps` wrote), and a spill that was truncated or changed
fails loudly instead of giving something else."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_parallel_run.core.driver.attempts import Pending
from airflow_parallel_run.core.json_stream import Encoded, Listed, dumps_bytes, dumps_chunks, streams
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch
from airflow_parallel_run.core.plan import store as store_module
from airflow_parallel_run.core.plan.store import FingerprintSpill, KeyColumn, PlanStore
from airflow_parallel_run.core.spill import Spill, SpillError

# URLs as a listing gives them: newlines, non-UTF-8 bytes (surrogate escapes), non-ASCII, very long
ODD_NAMES = [
    "/data/plain.txt",
    "/data/with\nnewline.txt",
    "/data/" + b"\xff\xfe-latin1-\xe9.txt".decode("utf-8", "surrogateescape"),
    "/data/caf\u00e9/\u65e5\u672c.txt",
    "/data/" + "d" * 250 + "/" + "f" * 250 + ".txt",
    '/data/quote"and\\backslash.txt',
    "s3://bucket/key with spaces/\u2028line-separator",
]

urls = st.one_of(
    st.sampled_from(ODD_NAMES),
    st.text(min_size=1, max_size=40),  # any code point, lone surrogates included
)


def batch(index: int, names: list[str], **kw: object) -> MiniBatch:
    files = tuple(
        FileRef(name, size=len(name), identity="" if i % 2 else "etag-x") for i, name in enumerate(names)
    )
    return MiniBatch(index=index, kind="file", input_index=0, items=len(files), files=files, **kw)  # type: ignore[arg-type]


def spill_everything(patch: pytest.MonkeyPatch) -> None:
    """Stores made from now on write every mini-batch and fingerprint out at once (none held in RAM)."""
    for name in ("HOLD_MINI_BATCHES", "HOLD_UNITS", "HOLD_FINGERPRINTS"):
        patch.setattr(store_module, name, 0)


@pytest.fixture(params=["held", "spilled"])
def store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlanStore]:
    """A plan store that holds its plan in RAM (a small plan), or one that spilled it from the start."""
    if request.param == "spilled":
        spill_everything(monkeypatch)
    plan = PlanStore("file", "test")
    yield plan
    plan.close()


@pytest.fixture
def spilled_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[PlanStore]:
    spill_everything(monkeypatch)
    plan = PlanStore("file", "test")
    yield plan
    plan.close()


def test_mini_batches_come_back_as_written_with_odd_names(store: PlanStore) -> None:
    written = [batch(i, ODD_NAMES[i:] + ODD_NAMES[:i], partition_key_value={"k": f"v{i}"}) for i in range(7)]
    for mb in written:
        store.append(mb)
    assert len(store) == 0  # nothing counted before the loop takes it
    for mb in written:
        store.reveal(mb.index)
    assert len(store) == 7 and store.total_items == sum(mb.items for mb in written)
    assert list(store) == written
    assert [store.batch(i) for i in (6, 0, 3)] == [written[6], written[0], written[3]]
    documents = list(store.documents())
    assert documents == [json.dumps(mb.to_dict(), separators=(",", ":")) for mb in written]


def test_the_spill_is_private_and_removed_at_the_end() -> None:
    plan = PlanStore("file", "private")
    plan.append(batch(0, ["/a"]))
    folder = plan.folder
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(os.path.join(folder, f)).st_mode) == 0o600 for f in os.listdir(folder))
    plan.close()
    plan.close()  # twice: nothing else is closed
    assert not os.path.exists(folder)
    with pytest.raises(SpillError):
        plan.append(batch(1, ["/b"]))


def test_mini_batches_come_in_order_only(store: PlanStore) -> None:
    with pytest.raises(ValueError):
        store.append(batch(1, ["/a"]))
    store.append(batch(0, ["/a"]))
    with pytest.raises(ValueError):
        store.reveal(1)  # never appended


@pytest.mark.parametrize("limit", ["HOLD_MINI_BATCHES", "HOLD_UNITS"])
def test_a_plan_held_in_ram_moves_to_the_spill_whole_and_in_order(
    monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """Past the hold, what was held is written out in order and later mini-batches follow it: the plan
    reads the same before, across and after the switch, and from then on from the spill (a record changed
    on disk fails)."""
    monkeypatch.setattr(store_module, limit, 4 if limit == "HOLD_MINI_BATCHES" else 9)
    written = [batch(i, [f"/data/{i}/{n}" for n in ODD_NAMES[: 2 + i % 3]]) for i in range(9)]
    plan = PlanStore("file", "switch")
    try:
        seen = []
        for mb in written:
            plan.append(mb)
            plan.reveal(mb.index)
            seen.append(plan._held is not None)
            assert plan.batch(mb.index) == mb and plan.batch(0) == written[0]
        assert seen[:3] == [True, True, True] and not seen[-1]  # held at first, spilled at the end
        assert list(plan) == written
        assert list(plan.documents()) == [json.dumps(mb.to_dict(), separators=(",", ":")) for mb in written]
        path = os.path.join(plan.folder, "plan.bin")
        data = Path(path).read_bytes().replace(b"/data/0/", b"/data/X/")
        Path(path).write_bytes(data)
        with pytest.raises(SpillError):
            plan.batch(0)
    finally:
        plan.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "extend"])
def test_a_damaged_spill_fails_loudly(tmp_path: Path, damage: str) -> None:
    spill = Spill(str(tmp_path), "records.bin")
    first, second = b'{"a": 1, "b": "x"}', b'{"a": 2, "b": "y"}'
    spill.append(first)
    spill.append(second)
    data = bytearray((tmp_path / "records.bin").read_bytes())
    half = len(data) // 2
    if damage == "flip":
        data[-3] ^= 0x01
    elif damage == "truncate":
        data = data[:-4]
    elif damage == "swap":
        data = data[half:] + data[:half]  # both records intact, in each other's place
    else:
        data = data + b"junk"  # records read by their offsets: the extra bytes change nothing...
    (tmp_path / "records.bin").write_bytes(bytes(data))
    if damage == "extend":
        assert (spill.read(0), spill.read(1)) == (first, second)
        return
    with pytest.raises(SpillError):
        spill.read(1)
        spill.read(0)


def test_a_tampered_mini_batch_record_fails_loudly(spilled_store: PlanStore) -> None:
    store = spilled_store
    store.append(batch(0, ["/data/a.txt"]))
    store.reveal(0)
    path = os.path.join(store.folder, "plan.bin")
    data = Path(path).read_bytes().replace(b"/data/a.txt", b"/data/b.txt")
    with open(path, "r+b") as handle:
        handle.write(data)
    with pytest.raises(SpillError):
        store.batch(0)
    with pytest.raises(SpillError):
        list(store.documents())


blocks = st.lists(
    st.dictionaries(urls, st.text(alphabet="0123456789abcdef", min_size=1, max_size=8), max_size=6),
    max_size=8,
)


@pytest.mark.parametrize("hold", [0, 3, None], ids=["spilled", "held-then-spilled", "held"])
@settings(max_examples=60, deadline=None)
@given(updates=blocks)
def test_fingerprints_read_like_the_dict_they_replace(
    tmp_path_factory: pytest.TempPathFactory, updates: list[dict[str, str]], hold: int | None
) -> None:
    folder = tmp_path_factory.mktemp("fp")
    with pytest.MonkeyPatch.context() as patch:
        if hold is not None:
            patch.setattr(store_module, "HOLD_FINGERPRINTS", hold)
        spill = FingerprintSpill(str(folder / "fp.sqlite"))
    expected: dict[str, str] = {}
    try:
        for block in updates:
            spill.update(block)
            expected.update(block)
        assert list(spill.sorted_items()) == sorted(expected.items())
        assert list(spill.items()) == list(expected.items())
        assert len(spill) == len(expected) and dict(spill) == expected
        for unit, fp in expected.items():
            assert spill[unit] == fp and unit in spill
        assert "never-added" not in spill
        manifest = {"components": {"b": 1, "a": [1, 2]}, "inputs": spill}
        assert "".join(dumps_chunks(manifest, sort_keys=True)) == json.dumps(
            {"components": {"b": 1, "a": [1, 2]}, "inputs": expected}, sort_keys=True
        )
    finally:
        spill.close()


@pytest.mark.parametrize("ascending", [True, False])
@pytest.mark.parametrize("damage", ["change", "delete", "insert"])
def test_tampered_fingerprints_fail_loudly(
    tmp_path: Path, damage: str, ascending: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spill_everything(monkeypatch)
    spill = FingerprintSpill(str(tmp_path / "fp.sqlite"))
    spill.update({"/a": "1", "/b": "2"})
    # ascending: the rows as they are; else /a twice, and the grouped read checks the rows it uses too
    spill.update({"/c": "3", "/d": "4"} if ascending else {"/a": "3", "/c": "4"})
    assert spill._ascending is ascending
    other = sqlite3.connect(tmp_path / "fp.sqlite", isolation_level=None)
    if damage == "change":
        other.execute("UPDATE fp SET fp = 'x' WHERE unit = CAST('/b' AS BLOB)")
    elif damage == "delete":
        other.execute("DELETE FROM fp WHERE unit = CAST('/c' AS BLOB)")
    else:
        other.execute("INSERT INTO fp (seq, unit, fp, h) VALUES (99, CAST('/z' AS BLOB), 'z', 0)")
    other.close()
    with pytest.raises(SpillError):
        list(spill.items())
    with pytest.raises(SpillError):
        list(spill.sorted_items())
    spill.close()


def test_units_in_ascending_order_are_read_without_sorting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spill_everything(monkeypatch)
    spill = FingerprintSpill(str(tmp_path / "fp.sqlite"))
    units = [f"/data/d{i // 7:03d}/f{i:05d}" for i in range(200)]
    for start in range(0, 200, 30):
        spill.update({u: f"h{u[-3:]}" for u in units[start : start + 30]})
    assert spill._ascending and len(spill) == 200
    assert list(spill.items()) == list(spill.sorted_items()) == [(u, f"h{u[-3:]}") for u in units]
    spill.update({"/data/a-late-one": "x"})  # no longer ascending: sorted by SQLite from now on
    assert not spill._ascending
    assert list(spill.sorted_items())[0] == ("/data/a-late-one", "x")
    spill.close()


@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),
            st.sampled_from(["a" * 40, "0123456789abcdef" * 2 + "01234567", "f" * 40, "short", "G" * 40]),
        )
    )
)
def test_keys_read_like_the_dict_they_replace(assignments: list[tuple[int, str]]) -> None:
    column, expected = KeyColumn(), {}
    for index, key in assignments:
        column[index] = key
        expected[index] = key
    assert len(column) == len(expected) and set(column) == set(expected)
    assert {i: column[i] for i in expected} == expected and dict(column.items()) == expected
    assert all(i in column for i in expected) and 31 not in column and column.get(31) is None


def test_keys_in_order_take_20_bytes_each() -> None:
    column = KeyColumn()
    for index in range(1000):
        column[index] = f"{index:040x}"
    assert len(column._packed) == 20_000 and not column._other
    assert column[999] == f"{999:040x}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | urls,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(urls, inner, max_size=4),
    max_leaves=20,
)


class _ReadOnly(Mapping[str, object]):
    """A mapping that is not a dict (streamed pair by pair, sorted by `sorted_items` when asked)."""

    def __init__(self, pairs: dict[str, object]) -> None:
        self._pairs = pairs

    def __getitem__(self, key: str) -> object:
        return self._pairs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def sorted_items(self) -> Iterator[tuple[str, object]]:
        return iter(sorted(self._pairs.items()))


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(urls, json_values, max_size=5), st.lists(json_values, max_size=5), st.booleans())
def test_streamed_json_is_what_json_dumps_writes(
    document: dict[str, object], items: list[object], compact: bool
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    for sort_keys in (False, True):
        streamed = {
            **document,
            "listed": Listed(lambda: iter(items)),
            "encoded": Encoded(
                lambda sort_keys=sort_keys: (
                    json.dumps(i, separators=separators, sort_keys=sort_keys).encode() for i in items
                )
            ),
            "nested": {"inner": Listed(lambda: iter(items))},
            "spilled": _ReadOnly(document),  # a Mapping that is not a dict, as a FingerprintSpill
        }
        plain = {
            **document,
            "listed": items,
            "encoded": items,
            "nested": {"inner": items},
            "spilled": document,
        }
        assert streams(streamed) and not streams(plain)
        expected = json.dumps(plain, separators=separators, sort_keys=sort_keys)
        for block in (1, 2, 1000):  # items encoded one by one, in blocks that split them, in one block
            chunks = dumps_chunks(streamed, separators=separators, sort_keys=sort_keys, block=block)
            assert "".join(chunks) == expected, block
        assert (
            b"".join(dumps_bytes(streamed, separators=separators, sort_keys=sort_keys)) == expected.encode()
        )


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("numbers"), st.lists(st.integers(0, 50), max_size=6)),
            st.tuples(st.just("retry"), st.integers(0, 50)),
            st.tuples(st.just("take"), st.integers(0, 5)),
        )
    )
)
def test_pending_numbers_are_taken_as_the_mini_batches_were(steps: list[tuple[str, object]]) -> None:
    """Pending with numbers read back on take hands out what Pending with the mini-batches did."""
    read = lambda i: batch(i, [f"/f{i}"])  # noqa: E731
    by_number, by_batch = Pending(batch=read), Pending()
    for step, arg in steps:
        if step == "numbers":
            by_number.extend_numbers(arg)  # type: ignore[arg-type]
            by_batch.extend((read(i), 1) for i in arg)  # type: ignore[union-attr]
        elif step == "retry":
            by_number.retry(read(arg), 2)  # type: ignore[arg-type]
            by_batch.retry(read(arg), 2)  # type: ignore[arg-type]
        else:
            assert by_number.take(arg) == by_batch.take(arg)  # type: ignore[arg-type]
        assert len(by_number) == len(by_batch)
    assert by_number.take(10**6) == by_batch.take(10**6)

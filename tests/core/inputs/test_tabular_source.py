"""Planning and reading tabular slices, against real files written to tmp_path."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs import tabular_scan
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.inputs.tabular_read import read_tabular
from airflow_parallel_run.core.inputs.tabular_scan import plan_tabular_file
from airflow_parallel_run.core.minibatch import MiniBatch, TabularSlice
from airflow_parallel_run.core.plan import Plan
from airflow_parallel_run.core.plan.manifest import read_manifest, write_manifest
from airflow_parallel_run.core.reuse.key import mini_batch_key

QUOTED_CSV = (
    "id,name,comment\n"
    'a1,alice,"hello, world"\n'
    'b2,bob,"first line\nsecond line"\n'
    'c3,"carol ""the quoter""","she said ""hi""\nthen left"\n'
    'd4,dave,"three\nline\nfield, with comma"\n'
    "e5,eve,plain\n"
    'f6,"frank\n""junior""",x\n'
    'g7,gina,"""quoted at start"""\n'
    "h8,hank,last\n"
)


def _nullable(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the dtypes a mini-batch has: integer and bool columns are pandas' nullable ones, so
    that they do not depend on whether the mini-batch holds a missing value (tabular_read.to_pandas)."""
    nullable = {"int64": "Int64", "int32": "Int32", "bool": "boolean"}
    return frame.astype({c: nullable[str(t)] for c, t in frame.dtypes.items() if str(t) in nullable})


def _write(tmp_path: Path, name: str, data: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _plan(url: str, dataset: TabularDataset, target: int) -> list[TabularSlice]:
    return plan_tabular_file(url, Path(url).stat().st_size, dataset, target)


def _read_each(slices: list[TabularSlice], dataset: TabularDataset) -> pd.DataFrame:
    """Read every slice on its own (as separate workers would) and concatenate the results."""
    return pd.concat([read_tabular([s], dataset) for s in slices], ignore_index=True)


def _assert_tiles(slices: list[TabularSlice], size: int) -> None:
    """csv/jsonl slices are contiguous, in order, start after the header and end at the file's end."""
    assert slices, "expected at least one slice"
    assert slices[0].start == slices[0].header_end
    for prev, cur in zip(slices, slices[1:], strict=False):
        assert prev.end == cur.start
        assert cur.header_end == slices[0].header_end
    assert slices[-1].end == size
    assert all(s.end > s.start and s.rows > 0 for s in slices)


def _check_round_trip(
    url: str,
    dataset: TabularDataset,
    target: int,
    expected: pd.DataFrame,
    read_already: set[tuple[TabularSlice, ...]] | None = None,
) -> list[TabularSlice]:
    """Plans the file and checks the slices; reads them back unless `read_already` holds the same plan.

    Reading depends on nothing but the slices and the dataset (not on the scan's chunk size), so a plan
    equal to one read back before would read the same frames again: a caller that plans one file many
    times passes a set, and each distinct plan is read once (every plan is still made and checked).
    """
    slices = _plan(url, dataset, target)
    _assert_tiles(slices, Path(url).stat().st_size)
    assert sum(s.rows for s in slices) == len(expected)
    if read_already is not None:
        if tuple(slices) in read_already:
            return slices
        read_already.add(tuple(slices))
    for s in slices:
        assert len(read_tabular([s], dataset)) == s.rows
    expected = _nullable(expected)
    pd.testing.assert_frame_equal(_read_each(slices, dataset), expected)
    pd.testing.assert_frame_equal(read_tabular(slices, dataset), expected)
    return slices


# ------------------------------------------------------------------------------------------------ csv


def test_csv_quoted_newlines_and_doubled_quotes_round_trip(tmp_path: Path) -> None:
    url = _write(tmp_path, "quoted.csv", QUOTED_CSV)
    dataset = TabularDataset.from_delimited_files(url)
    expected = pd.read_csv(url)
    assert len(expected) == 8
    assert expected.loc[2, "name"] == 'carol "the quoter"'
    assert expected.loc[3, "comment"] == "three\nline\nfield, with comma"

    slices = _check_round_trip(url, dataset, 50, expected)
    assert len(slices) > 2
    header_end = len(b"id,name,comment\n")
    assert all(s.header_end == header_end and s.start >= header_end for s in slices)
    assert all(s.url == url and s.format == "csv" for s in slices)


@pytest.mark.parametrize("target", [1, 7, 50, 120, 10_000])
@pytest.mark.parametrize("chunk", [1, 3, 16, 8 * 1024 * 1024])
def test_csv_any_target_and_scan_chunk_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: int, chunk: int
) -> None:
    """Quote parity and partial records carry across scan chunks, whatever their size."""
    monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
    url = _write(tmp_path, "quoted.csv", QUOTED_CSV)
    _check_round_trip(url, TabularDataset.from_delimited_files(url), target, pd.read_csv(url))


def test_header_is_applied_to_every_slice(tmp_path: Path) -> None:
    url = _write(tmp_path, "h.csv", "x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(40)))
    dataset = TabularDataset.from_delimited_files(url)
    slices = _plan(url, dataset, 20)
    assert len(slices) > 5
    for s in slices:
        frame = read_tabular([s], dataset)
        assert list(frame.columns) == ["x", "y"]
        assert (frame["y"] == frame["x"] * 2).all()


def test_csv_without_header(tmp_path: Path) -> None:
    url = _write(tmp_path, "nohead.csv", QUOTED_CSV.split("\n", 1)[1])
    dataset = TabularDataset.from_delimited_files(url, header=False)
    expected = pd.read_csv(url, header=None)
    slices = _check_round_trip(url, dataset, 40, expected)
    assert slices[0].start == 0
    assert all(s.header_end == 0 for s in slices)
    assert list(read_tabular([slices[-1]], dataset).columns) == [0, 1, 2]


@pytest.mark.parametrize("sep", [";", "|", "\t"])
def test_custom_separator(tmp_path: Path, sep: str) -> None:
    text = QUOTED_CSV.replace(",", sep)
    url = _write(tmp_path, "sep.csv", text)
    dataset = TabularDataset.from_delimited_files(url, separator=sep)
    expected = pd.read_csv(url, sep=sep)
    assert list(expected.columns) == ["id", "name", "comment"]
    _check_round_trip(url, dataset, 30, expected)


def test_crlf_line_endings(tmp_path: Path) -> None:
    url = _write(tmp_path, "crlf.csv", QUOTED_CSV.replace("\n", "\r\n"))
    dataset = TabularDataset.from_delimited_files(url)
    expected = pd.read_csv(url)
    assert expected.loc[1, "comment"] == "first line\r\nsecond line"
    slices = _check_round_trip(url, dataset, 40, expected)
    assert slices[0].header_end == len(b"id,name,comment\r\n")


def test_no_trailing_newline(tmp_path: Path) -> None:
    url = _write(tmp_path, "notrail.csv", QUOTED_CSV.rstrip("\n"))
    dataset = TabularDataset.from_delimited_files(url)
    slices = _check_round_trip(url, dataset, 45, pd.read_csv(url))
    assert read_tabular([slices[-1]], dataset)["comment"].iloc[-1] == "last"


def test_last_record_is_a_quoted_newline_without_trailing_newline(tmp_path: Path) -> None:
    url = _write(tmp_path, "q.csv", 'a,b\n1,"x\ny"\n2,"z\n"')
    _check_round_trip(url, TabularDataset.from_delimited_files(url), 1, pd.read_csv(url))


def test_blank_lines_are_not_rows_and_never_form_a_slice(tmp_path: Path) -> None:
    text = "a,b\n\n\n1,2\n\r\n   \n\n\n\n\n\n\n\n\n3,4\n\n\n\n\n\n\n\n\n\n\n\n\n"
    url = _write(tmp_path, "blank.csv", text)
    dataset = TabularDataset.from_delimited_files(url)
    slices = _check_round_trip(url, dataset, 2, pd.read_csv(url))
    assert [s.rows for s in slices] == [1, 1]


def test_blank_lines_before_header(tmp_path: Path) -> None:
    url = _write(tmp_path, "lead.csv", "\n\r\na,b\n1,2\n3,4\n")
    slices = _check_round_trip(url, TabularDataset.from_delimited_files(url), 1, pd.read_csv(url))
    assert slices[0].header_end == len(b"\n\r\na,b\n")


@pytest.mark.parametrize("text", ["a,b,c\n", "a,b,c", "", "\n\n"])
def test_header_only_or_empty_file_gives_no_slices(tmp_path: Path, text: str) -> None:
    url = _write(tmp_path, "head.csv", text)
    assert _plan(url, TabularDataset.from_delimited_files(url), 10) == []


def test_empty_file_without_header_gives_no_slices(tmp_path: Path) -> None:
    url = _write(tmp_path, "empty.csv", "\n \n")
    assert _plan(url, TabularDataset.from_delimited_files(url, header=False), 10) == []


@pytest.mark.parametrize("chunk", [1, 5, 8 * 1024 * 1024])
def test_unterminated_quote_raises_input_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
    text = 'a,b\n1,"ok ""fine"""\n2,"never closed ""x"" \n3,4\n'
    url = _write(tmp_path, "broken.csv", text)
    with pytest.raises(InputError) as info:
        _plan(url, TabularDataset.from_delimited_files(url), 10)
    message = str(info.value)
    assert "broken.csv" in message
    opener = text.index('"never')
    assert f"quote opened at byte {opener} is never closed" in message


def test_non_ascii_compatible_encoding_is_rejected(tmp_path: Path) -> None:
    url = _write(tmp_path, "u16.csv", "a,b\n1,2\n".encode("utf-16"))
    dataset = TabularDataset.from_delimited_files(url, encoding="utf-16")
    with pytest.raises(InputError, match="(?i)utf-16"):
        _plan(url, dataset, 10)


def test_latin1_encoding_is_decoded_at_read_time(tmp_path: Path) -> None:
    url = _write(tmp_path, "l1.csv", 'name,city\nJosé,Zürich\nAndré,"Köln\nMitte"\n'.encode("latin-1"))
    dataset = TabularDataset.from_delimited_files(url, encoding="latin-1")
    expected = pd.read_csv(url, encoding="latin-1")
    _check_round_trip(url, dataset, 1, expected)
    assert expected.loc[1, "city"] == "Köln\nMitte"


def test_random_csv_files_round_trip(tmp_path: Path) -> None:
    """Many random files with quoted separators, quotes, LF/CRLF newlines and blank lines, random targets."""
    rng = random.Random(1234)
    pieces = ["a", "b", ",", '"', "\n", "\r\n", " ", "7", ";"]
    for case in range(30):
        eol = rng.choice(["\n", "\r\n"])
        cols = rng.randint(1, 4)
        lines = [",".join(f"c{j}" for j in range(cols))]
        for _ in range(rng.randint(1, 40)):
            values = ["x" + "".join(rng.choices(pieces, k=rng.randint(0, 8))) for _ in range(cols)]
            fields = [v if v.isalnum() else '"' + v.replace('"', '""') + '"' for v in values]
            lines.append(",".join(fields))
            if rng.random() < 0.1:
                lines.append("")
        text = eol.join(lines) + rng.choice(["", eol])
        url = _write(tmp_path, f"r{case}.csv", text)
        dataset = TabularDataset.from_delimited_files(url)
        expected = pd.read_csv(url)
        _check_round_trip(url, dataset, rng.randint(1, 200), expected)


# ------------------------------------------------------------------------------------------------ jsonl


def test_jsonl_round_trip(tmp_path: Path) -> None:
    records = [{"id": i, "text": f'row {i} with \\n escaped, and "quotes"', "v": i / 4} for i in range(30)]
    body = "".join(json.dumps(r) + "\n" + ("\n" if i % 7 == 3 else "") for i, r in enumerate(records))
    url = _write(tmp_path, "data.jsonl", body)
    dataset = TabularDataset.from_json_lines_files(url)
    expected = pd.read_json(io.BytesIO(body.encode()), lines=True)
    assert len(expected) == 30
    slices = _check_round_trip(url, dataset, 100, expected)
    assert len(slices) > 5
    assert all(s.header_end == 0 and s.format == "jsonl" for s in slices)


def test_jsonl_without_trailing_newline_and_crlf(tmp_path: Path) -> None:
    body = "\r\n".join(json.dumps({"k": i, "s": 'a"b'}) for i in range(10))
    url = _write(tmp_path, "crlf.jsonl", body)
    dataset = TabularDataset.from_json_lines_files(url)
    expected = pd.read_json(io.BytesIO(body.encode()), lines=True)
    _check_round_trip(url, dataset, 1, expected)


# ------------------------------------------------------------------------------------------------ parquet


def _parquet_table(rows: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "name": pa.array([f"name-{i}-" + "z" * (i % 13) for i in range(rows)]),
            "score": pa.array([i * 0.5 for i in range(rows)]),
        }
    )


def test_parquet_splits_on_row_group_boundaries(tmp_path: Path) -> None:
    url = str(tmp_path / "data.parquet")
    pq.write_table(_parquet_table(1000), url, row_group_size=100)
    metadata = pq.ParquetFile(url).metadata
    assert metadata.num_row_groups == 10
    group_bytes = [
        sum(metadata.row_group(g).column(c).total_compressed_size for c in range(3)) for g in range(10)
    ]
    target = int(group_bytes[0] * 2.5)
    dataset = TabularDataset.from_parquet_files(url)
    slices = _plan(url, dataset, target)

    assert 2 <= len(slices) < 10
    assert [g for s in slices for g in s.row_groups] == list(range(10))
    assert all(s.rows == 100 * len(s.row_groups) for s in slices)
    assert all(s.format == "parquet" and s.url == url for s in slices)
    for s in slices[:-1]:
        assert sum(group_bytes[g] for g in s.row_groups) >= target
        assert sum(group_bytes[g] for g in s.row_groups[:-1]) < target
    expected = pd.read_parquet(url)
    pd.testing.assert_frame_equal(_read_each(slices, dataset), _nullable(expected))
    pd.testing.assert_frame_equal(read_tabular(slices, dataset), _nullable(expected))
    pd.testing.assert_frame_equal(
        read_tabular([slices[1]], dataset),
        _nullable(expected)
        .iloc[slices[1].row_groups[0] * 100 : (slices[1].row_groups[-1] + 1) * 100]
        .reset_index(drop=True),
    )


def test_parquet_without_row_groups_gives_no_slices(tmp_path: Path) -> None:
    url = str(tmp_path / "empty.parquet")
    pq.ParquetWriter(url, _parquet_table(0).schema).close()
    assert pq.ParquetFile(url).metadata.num_row_groups == 0
    assert _plan(url, TabularDataset.from_parquet_files(url), 1) == []


def test_not_a_parquet_file_raises_input_error(tmp_path: Path) -> None:
    url = _write(tmp_path, "fake.parquet", "a,b\n1,2\n")
    with pytest.raises(InputError, match="fake.parquet"):
        _plan(url, TabularDataset.from_parquet_files(url), 1)


# ------------------------------------------------------------------------------------------------ common


def test_target_larger_than_file_gives_one_slice(tmp_path: Path) -> None:
    csv_url = _write(tmp_path, "one.csv", QUOTED_CSV)
    csv_slices = _plan(csv_url, TabularDataset.from_delimited_files(csv_url), 10**9)
    assert len(csv_slices) == 1
    assert (csv_slices[0].start, csv_slices[0].end, csv_slices[0].rows) == (16, len(QUOTED_CSV), 8)

    jsonl_url = _write(tmp_path, "one.jsonl", '{"a": 1}\n{"a": 2}\n')
    jsonl_slices = _plan(jsonl_url, TabularDataset.from_json_lines_files(jsonl_url), 10**9)
    assert [(s.start, s.end, s.rows) for s in jsonl_slices] == [(0, 18, 2)]

    pq_url = str(tmp_path / "one.parquet")
    pq.write_table(_parquet_table(50), pq_url, row_group_size=10)
    pq_slices = _plan(pq_url, TabularDataset.from_parquet_files(pq_url), 10**9)
    assert [(s.row_groups, s.rows) for s in pq_slices] == [((0, 1, 2, 3, 4), 50)]


def test_zero_slices_read_as_empty_frame() -> None:
    frame = read_tabular([], TabularDataset.from_delimited_files("unused.csv"))
    assert isinstance(frame, pd.DataFrame) and frame.empty


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    url = str(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="missing.csv"):
        plan_tabular_file(url, 10, TabularDataset.from_delimited_files(url), 10)


def test_corrupt_slices_raise_input_error_naming_the_url(tmp_path: Path) -> None:
    csv_url = _write(tmp_path, "bad.csv", "a,b\n1,2\n3,4,5,6\n")
    dataset = TabularDataset.from_delimited_files(csv_url)
    bad = TabularSlice(csv_url, "csv", start=8, end=17, header_end=4, rows=1)
    with pytest.raises(InputError, match=r"bad\.csv bytes \[8, 17\)"):
        read_tabular([bad], dataset)

    jsonl_url = _write(tmp_path, "bad.jsonl", '{"a": 1}\n{"a": \n')
    jsonl_dataset = TabularDataset.from_json_lines_files(jsonl_url)
    with pytest.raises(InputError, match=r"bad\.jsonl bytes \[0, 16\)"):
        read_tabular(_plan(jsonl_url, jsonl_dataset, 10**6), jsonl_dataset)

    pq_url = str(tmp_path / "bad.parquet")
    pq.write_table(_parquet_table(10), pq_url)
    pq_dataset = TabularDataset.from_parquet_files(pq_url)
    with pytest.raises(InputError, match=r"bad\.parquet row groups \[7\]"):
        read_tabular([TabularSlice(pq_url, "parquet", row_groups=(7,), rows=1)], pq_dataset)

    # A slice planned before the file shrank is reported, not silently read short.
    short = TabularSlice(csv_url, "csv", start=8, end=500, header_end=4, rows=1)
    with pytest.raises(InputError, match="bad.csv"):
        read_tabular([short], dataset)


@pytest.mark.parametrize("chunk", [5, 8 * 1024 * 1024])
def test_ragged_row_is_named_by_its_line_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Each slice records the file line it starts on (quoted newlines count, as in an editor); a ragged row's
    message names its line of the file, also when quoted newlines come before it in the same slice."""
    monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
    rows = ["", "id,name"] + [f'{i},"n\n{i}"' if i % 3 == 0 else f"{i},n{i}" for i in range(60)]
    bad = rows.index("40,n40")
    rows[bad] = "40,n40,EXTRA"
    text = "\n".join(rows) + "\n"
    url = _write(tmp_path, "ragged.csv", text)
    dataset = TabularDataset.from_delimited_files(url)
    slices = _plan(url, dataset, 60)
    assert len(slices) > 3
    assert [s.first_line for s in slices] == [text.encode()[: s.start].count(b"\n") + 1 for s in slices]
    offset = text.index("40,n40,EXTRA")
    # line 57: 14 quoted newlines come first (pandas, counting records, would say 43)
    line = text[:offset].count("\n") + 1
    failing = [s for s in slices if s.start <= offset < s.end]
    for group in (failing, slices):  # the slice alone, and read together with the others
        with pytest.raises(InputError, match=rf"Expected 2 fields in line {line}, saw 3") as info:
            read_tabular(group, dataset)
        assert f"bytes [{group[0].start}, {group[-1].end})" in str(info.value)
    # a slice from a manifest written before first_line existed: the line within the slice
    [piece] = failing
    assert piece.first_line is not None
    old, in_slice = dataclasses.replace(piece, first_line=None), line - piece.first_line + 1
    with pytest.raises(
        InputError, match=rf"line {in_slice} of the slice starting at byte {old.start}, saw 3"
    ):
        read_tabular([old], dataset)


def test_first_line_keeps_cache_keys_and_old_manifests_load(tmp_path: Path) -> None:
    url = _write(tmp_path, "t.csv", "id\n" + "".join(f"{i}\n" for i in range(50)))
    dataset = TabularDataset.from_delimited_files(url)
    [piece] = _plan(url, dataset, 10**6)
    assert piece.first_line == 2
    batch = MiniBatch(0, "tabular", 0, piece.rows, slices=(piece,))
    before = dataclasses.replace(batch, slices=(dataclasses.replace(piece, first_line=None),))
    fingerprints = {url: "xxh3:0"}
    assert mini_batch_key("job", batch, fingerprints) == mini_batch_key("job", before, fingerprints)

    manifest = tmp_path / "manifest.json"
    write_manifest(str(manifest), [dataset], Plan("tabular", [batch]))
    document = json.loads(manifest.read_text())
    assert document["mini_batches"][0]["slices"][0]["first_line"] == 2
    del document["mini_batches"][0]["slices"][0]["first_line"]  # as written by an earlier release
    manifest.write_text(json.dumps(document))
    _, planned = read_manifest(str(manifest))
    assert planned.mini_batches == [before]


# ------------------------------------------------------------------------------------------------ speed


def test_planning_speed_on_a_50_mb_csv(tmp_path: Path) -> None:
    block_rows = 2000
    block = "".join(
        f'{i},user{i},"multi\nline ""quoted"" text, {i}",{i * 0.25}\n'
        if i % 3 == 0
        else f"{i},user{i},plain text number {i} with some padding to make the line longer,{i * 0.25}\n"
        for i in range(block_rows)
    ).encode()
    repeats = (50 * 1024 * 1024) // len(block) + 1
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(b"id,user,text,value\n")
        for _ in range(repeats):
            f.write(block)
    url = str(path)
    size = path.stat().st_size
    dataset = TabularDataset.from_delimited_files(url)

    started = time.perf_counter()
    slices = plan_tabular_file(url, size, dataset, 1024 * 1024)
    elapsed = time.perf_counter() - started

    print(
        f"planned {size / 1e6:.1f} MB into {len(slices)} slices in {elapsed:.2f}s ({size / 1e6 / elapsed:.0f} MB/s)"
    )
    assert elapsed < 10
    _assert_tiles(slices, size)
    assert sum(s.rows for s in slices) == block_rows * repeats
    for s in (slices[0], slices[len(slices) // 2], slices[-1]):
        frame = read_tabular([s], dataset)
        assert len(frame) == s.rows
        assert list(frame.columns) == ["id", "user", "text", "value"]
        assert (frame["user"] == "user" + frame["id"].astype(str)).all()


# ------------------------------------------------------------------------------------------------ planner fast paths


def _reference_records(data: bytes, is_csv: bool, blank: bytes) -> tuple[list[tuple[int, bool]], bool]:
    """(offset just after each record-ending newline, record has data), and whether the file ends inside a
    quoted field, by a byte-at-a-time state machine. For CSV it is pandas' C tokenizer's: a quote opens a
    quoted field only where a field starts (record start, after the separator or a CR); inside, a quote
    closes it unless another quote follows; anywhere else a quote is an ordinary character."""
    records, start, state = [], 0, "field_start"
    for i, byte in enumerate(data):
        if byte == 0x0A and state != "quoted":
            records.append((i + 1, bool(data[start:i].translate(None, blank))))
            start, state = i + 1, "field_start"
        elif not is_csv:
            continue
        elif state == "field_start":
            state = "quoted" if byte == 0x22 else "field_start" if byte in b",\r" else "field"
        elif state == "field":
            state = "field_start" if byte in b",\r" else "field"
        elif state == "quoted":
            state = "closing" if byte == 0x22 else "quoted"
        else:  # closing: just after a quote inside a quoted field
            state = "quoted" if byte == 0x22 else "field_start" if byte in b",\r" else "field"
    return records, state == "quoted"


def _rows_after_a_lone_cr(head: bytes) -> int:
    """The non-blank pieces of a header record after its first, split at CRs and LFs outside quoted fields:
    pandas' tokenizer ends a record at a lone CR too, so these are rows of data the planner must not take
    for part of the header."""
    pieces, start, state = [], 0, "field_start"
    for i, byte in enumerate(head):
        if byte in b"\r\n" and state != "quoted":
            pieces.append(head[start:i])
            start, state = i + 1, "field_start"
        elif state in ("field_start", "closing") and byte == 0x22:
            state = "quoted"
        elif state == "quoted":
            state = "closing" if byte == 0x22 else "quoted"
        else:
            state = "field_start" if byte == 0x2C else "field"
    pieces.append(head[start:])
    return max(0, sum(1 for piece in pieces if piece.translate(None, b" \t\r\n")) - 1)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=list('ab,"\n\r \t7'), max_size=80),
    target=st.integers(1, 40),
    chunk=st.sampled_from([1, 2, 3, 5, 8, 64]),
    few=st.sampled_from([0, 1, 256]),
    header=st.booleans(),
)
def test_csv_plan_matches_a_byte_by_byte_reference(
    tmp_path: Path, text: str, target: int, chunk: int, few: int, header: bool
) -> None:
    """Slices tile the file, end only at record ends, count the non-blank records, never hold only blank
    lines and name their first line, whatever the scan chunk size and blank-check path."""
    data = text.encode()
    url = _write(tmp_path, "h.csv", data)
    dataset = TabularDataset.from_delimited_files(url, header=header)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
        patch.setattr(tabular_scan, "_FEW_CANDIDATES", few)
        records, unterminated = _reference_records(data, True, b" \t\r\n")
        head = data[: next((end for end, has_data in records if has_data), len(data))]
        refused = header and not unterminated and _rows_after_a_lone_cr(head) > 0
        try:
            slices = _plan(url, dataset, target)
        except InputError as exc:
            assert unterminated or (refused and "the header record" in str(exc)), str(exc)
            return
    assert not unterminated and not refused
    tail = data[records[-1][0] if records else 0 :]
    if tail:  # an unterminated last record
        records.append((len(data), bool(tail.translate(None, b" \t\r\n"))))
    nonblank = [r for r in records if r[1]]
    if header:
        if not nonblank or (tail and nonblank[0][0] == len(data)):  # no complete header record
            assert slices == []
            return
        header_end = nonblank[0][0]
        body = [r for r in records if r[0] > header_end]
    else:
        header_end, body = 0, records
    expected_rows = sum(1 for r in body if r[1])
    if expected_rows == 0:
        assert slices == []
        return
    _assert_tiles(slices, len(data))
    assert slices[0].header_end == header_end
    assert sum(s.rows for s in slices) == expected_rows
    ends = {r[0] for r in records} | {len(data)}
    for s in slices:
        assert s.end in ends
        assert s.first_line == data[: s.start].count(b"\n") + 1
        assert s.rows == sum(1 for r in body if s.start < r[0] <= s.end and r[1])


@pytest.mark.parametrize("chunk", [1, 4, 13, 8 * 1024 * 1024])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_csv_without_any_quote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, eol: str) -> None:
    monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
    text = eol.join(["id,v"] + [f"{i},{i * 0.5}" for i in range(50)]) + eol
    url = _write(tmp_path, "plain.csv", text)
    dataset = TabularDataset.from_delimited_files(url)
    for target in (1, 9, 40, 10_000):
        slices = _check_round_trip(url, dataset, target, pd.read_csv(url))
        assert [s.first_line for s in slices] == [text.encode()[: s.start].count(b"\n") + 1 for s in slices]


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_quoted_newline_at_every_split_point_and_chunk_edge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, eol: str
) -> None:
    """Every byte offset is, for some target and chunk size, the nominal split point or a chunk edge; the
    quoted newlines in between must never end a slice."""
    text = "a,b" + eol + "".join(f'{i},"x{eol}{eol}y"{eol}' if i % 2 else f"{i},z{eol}" for i in range(12))
    url = _write(tmp_path, "q.csv", text)
    dataset = TabularDataset.from_delimited_files(url)
    expected = pd.read_csv(url)
    read_already: set[tuple[TabularSlice, ...]] = set()  # 168 or 216 plans, 13 distinct ones
    for chunk in (1, 2, 3, 5, 7, 11):
        monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
        for target in range(1, len(text), 3):
            _check_round_trip(url, dataset, target, expected, read_already)


@pytest.mark.parametrize("few", [0, 256])
def test_lines_starting_with_blanks_are_rows_on_both_blank_check_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """Lines that start with a space are checked byte by byte (few of them) or with every byte of the chunk
    (many): either way only the whitespace-only lines are blank."""
    monkeypatch.setattr(tabular_scan, "_FEW_CANDIDATES", few)
    lines = ["a,b"] + [(" " * (i % 3)) + f"{i},x" if i % 5 else "  \t " for i in range(400)]
    text = "\n".join(lines) + "\n\n"
    url = _write(tmp_path, "sp.csv", text)
    dataset = TabularDataset.from_delimited_files(url)
    expected = pd.read_csv(url)
    assert len(expected) == 320
    for target in (1, 50, 700):
        _check_round_trip(url, dataset, target, expected)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252"])
def test_local_and_remote_reads_give_pandas_frames(tmp_path: Path, encoding: str) -> None:
    """Local slices are streamed from the file, remote ones from one ranged read: both must parse exactly as
    pandas.read_csv parses the whole file, also with non-ASCII characters across the parser's read chunks."""
    import fsspec

    rows = [f'{i},"Zürich {i}\nMitte",{i * 0.1!r},é{"ä" * (i % 7)}' for i in range(30_000)]
    data = ("id,city,x,s\n" + "\n".join(rows) + "\n").encode(encoding)
    local = _write(tmp_path, "enc.csv", data)
    remote = f"memory://apr-test-{encoding}/enc.csv"
    with fsspec.open(remote, "wb") as f:
        f.write(data)
    try:
        expected = pd.read_csv(local, encoding=encoding)
        for url in (local, remote):
            dataset = TabularDataset.from_delimited_files(url, encoding=encoding)
            slices = plan_tabular_file(url, len(data), dataset, 300_000)
            assert len(slices) > 3
            pd.testing.assert_frame_equal(_read_each(slices, dataset), _nullable(expected))
            pd.testing.assert_frame_equal(read_tabular(slices, dataset), _nullable(expected))
    finally:
        fsspec.filesystem("memory").rm(remote)


def test_csv_file_shorter_than_planned_is_an_input_error_local_and_remote(tmp_path: Path) -> None:
    import fsspec

    text = "a,b\n" + "".join(f"{i},{i}\n" for i in range(100))
    local = _write(tmp_path, "s.csv", text)
    remote = "memory://apr-test-short/s.csv"
    with fsspec.open(remote, "wb") as f:
        f.write(text.encode())
    try:
        for url in (local, remote):
            dataset = TabularDataset.from_delimited_files(url)
            [piece] = plan_tabular_file(url, len(text), dataset, 10**6)
            with fsspec.open(url, "wb") as f:
                f.write(text[: len(text) // 2].encode())
            with pytest.raises(InputError, match="shorter than planned"):
                read_tabular([piece], dataset)
    finally:
        fsspec.filesystem("memory").rm(remote)


# ------------------------------------------------------------------------------------------------ many files


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_files_planned_in_parallel_keep_their_order_and_first_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    from airflow_parallel_run.core.inputs import tabular
    from airflow_parallel_run.core.plan import planner

    monkeypatch.setattr(tabular, "_PLAN_THREADS", threads)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(23):
        rows = "".join(f"{i},{j}\n" for j in range(1 + (i * 7) % 30))
        (folder / f"f{i:02d}.csv").write_text("file,row\n" + rows)
    dataset = TabularDataset.from_delimited_files(str(folder))
    plan = planner.plan_inputs([dataset], 40)
    urls = [mb.slices[0].url for mb in plan.mini_batches]
    assert urls == sorted(urls)
    assert [mb.index for mb in plan.mini_batches] == list(range(len(plan.mini_batches)))
    frame = pd.concat([read_tabular(mb.slices, dataset) for mb in plan.mini_batches], ignore_index=True)
    assert list(frame["file"]) == [i for i in range(23) for _ in range(1 + (i * 7) % 30)]

    (folder / "f05.csv").write_text('file,row\n5,"open\n')
    (folder / "f17.csv").write_text('file,row\n17,"open\n')
    with pytest.raises(InputError, match="f05.csv"):
        planner.plan_inputs([dataset], 40)


# ------------------------------------------------------------------------------------------------ quotes inside fields

INCH_CSV = (
    "id,item,note\n"
    '1,TV 5" screen,ok\n'  # a quote inside an unquoted field is an ordinary character for pandas
    '2,a"b"c,"quoted, with comma"\n'
    '3,  "spaced",x\n'  # a quote after spaces: the field started with the spaces, so it is data too
    '4,"multi\nline ""quoted"" field",y\n'
    '5,"closed"tail,z\n'  # text after a closing quote belongs to the field
    '6,12" ruler,"two\r\nlines"\n'
    "7,plain,last\n"
)


@pytest.mark.parametrize("chunk", [1, 5, 8 * 1024 * 1024])
def test_quotes_inside_unquoted_fields_plan_as_pandas_reads_for_every_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """Before: the planner counted quote parity over the whole file, so `5" screen` opened a "quoted field":
    the file was refused, or (with a quoted multi-line field later) slices ended inside records, giving a
    garbage row and lost rows for some sizes while the job succeeded."""
    monkeypatch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
    url = _write(tmp_path, "inch.csv", INCH_CSV)
    dataset = TabularDataset.from_delimited_files(url)
    expected = pd.read_csv(url)
    assert expected["item"].tolist()[:3] == ['TV 5" screen', 'a"b"c', '  "spaced"']
    assert expected["note"].tolist()[3] == "y" and expected["item"].tolist()[4] == "closedtail"
    reads: dict[tuple[int, int], pd.DataFrame] = {}
    # every mini_batch_size (with tiny scan chunks, every third: each plan then takes many chunks)
    for target in range(1, len(INCH_CSV) + 1, 1 if chunk > 5 else 3):
        slices = _plan(url, dataset, target)
        _assert_tiles(slices, len(INCH_CSV))
        assert sum(s.rows for s in slices) == len(expected)
        frames = []
        for s in slices:
            if (s.start, s.end) not in reads:
                reads[(s.start, s.end)] = read_tabular([s], dataset)
            frames.append(reads[(s.start, s.end)])
        got = pd.concat(frames, ignore_index=True)
        pd.testing.assert_frame_equal(got.astype(str), expected.astype(str), obj=f"target {target}")


def test_utf8_byte_order_mark_is_skipped_like_pandas(tmp_path: Path) -> None:
    text = '\ufeff"quoted id",v\n"1",x\n2,"y\nz"\n'
    url = _write(tmp_path, "bom.csv", text)
    expected = pd.read_csv(url)
    assert list(expected.columns) == ["quoted id", "v"]
    _check_round_trip(url, TabularDataset.from_delimited_files(url), 1, expected)
    dataset = TabularDataset.from_delimited_files(url, header=False)
    slices = _plan(url, dataset, 1)
    assert [s.rows for s in slices] == [1, 1, 1] and slices[0].start == 0
    pd.testing.assert_frame_equal(
        _read_each(slices, dataset).astype(str), pd.read_csv(url, header=None).astype(str)
    )


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("rows.csv.gz", __import__("gzip").compress(b"a,b\n1,2\n"), "gzip"),
        ("rows.csv", __import__("gzip").compress(b"a,b\n1,2\n"), "gzip"),  # a plain name: its bytes tell
        ("rows.jsonl.bz2", __import__("bz2").compress(b'{"a": 1}\n'), "bzip2"),
        ("rows.jsonl", __import__("bz2").compress(b'{"a": 1}\n'), "bzip2"),
        ("rows.csv.zst", b"\x28\xb5\x2f\xfd rest", "zstd"),
    ],
    ids=["gz-name", "gzip-bytes", "bz2-name", "bzip2-bytes", "zst-name"],
)
def test_compressed_input_is_refused_by_name(tmp_path: Path, name: str, data: bytes, kind: str) -> None:
    url = _write(tmp_path, name, data)
    fmt = "jsonl" if ".jsonl" in name else "csv"
    dataset = (
        TabularDataset.from_json_lines_files(url)
        if fmt == "jsonl"
        else TabularDataset.from_delimited_files(url)
    )
    with pytest.raises(InputError, match=rf"{name}: {kind}-compressed {fmt} is not supported"):
        _plan(url, dataset, 10)


def test_jsonl_values_keep_their_json_types(tmp_path: Path) -> None:
    """Before: pandas guessed dtypes, so "01234" became 1234 and a column named `date` became timestamps."""
    body = '{"zip": "01234", "date": "2024-01-02", "modified": 1700000000, "x": 0.30000000000000004}\n' * 3
    url = _write(tmp_path, "t.jsonl", "\ufeff" + body)
    dataset = TabularDataset.from_json_lines_files(url)
    frame = read_tabular(_plan(url, dataset, 1), dataset)
    assert frame.to_dict("records") == [json.loads(body.splitlines()[0])] * 3

"""Planner: listing, file mini-batches, partitions, and planning a 100,000-file folder quickly."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_parallel_run.core import ConfigError, FileDataset, InputError, ParallelRunConfig, TabularDataset
from airflow_parallel_run.core.inputs.sql import KeyRange
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch, TabularSlice
from airflow_parallel_run.core.plan import plan


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    script = tmp_path / "s.py"
    script.write_text("def run(b):\n    return b\n")
    return lambda **kw: ParallelRunConfig(entry_script=str(script), **kw)


def test_files_in_batches_of_n(files, cfg) -> None:  # type: ignore[no-untyped-def]
    root = files(25)
    (root / ".hidden").write_text("x")
    (root / "_SUCCESS").write_text("")
    result = plan([FileDataset.from_files(str(root))], cfg(mini_batch_size=10))
    assert [mb.items for mb in result.mini_batches] == [10, 10, 5]
    assert [mb.index for mb in result.mini_batches] == [0, 1, 2]
    urls = [f.url for mb in result.mini_batches for f in mb.files]
    assert urls == sorted(urls) and len(urls) == 25 and all(u.endswith(".txt") for u in urls)


def test_globs_lists_urls_and_several_inputs(files, cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = files(12)
    by_glob = plan([FileDataset.from_files(str(root / "f00*.txt"))], cfg(mini_batch_size=100))
    assert by_glob.total_items == 10
    by_list = plan([FileDataset.from_files([str(root / "f001.txt"), f"file://{root}/f002.txt"])], cfg())
    assert by_list.total_items == 2
    two = plan(
        [FileDataset.from_files(str(root)), FileDataset.from_files(str(root / "f01*"))],
        cfg(mini_batch_size=5),
    )
    assert [mb.input_index for mb in two.mini_batches] == [0, 0, 0, 1]


def test_bad_inputs_are_named(files, cfg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="does-not-exist"):
        plan([FileDataset.from_files(str(tmp_path / "does-not-exist"))], cfg())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="matched no files"):
        plan([FileDataset.from_files(str(tmp_path / "empty"))], cfg())
    root = files(2)
    with pytest.raises(ConfigError, match="one type"):
        plan([FileDataset.from_files(str(root)), TabularDataset.from_parquet_files(str(root))], cfg())
    with pytest.raises(ConfigError, match="inputs"):
        plan([], cfg())


def test_partition_format_one_batch_per_key_combination(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    for user, season, genre in [
        ("ann", "s1", "rock"),
        ("ann", "s1", "jazz"),
        ("bob", "s2", "rock"),
        ("ann", "s2", "pop"),
    ]:
        folder = tmp_path / "audio" / user / season
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{genre}.wav").write_bytes(b"RIFF")
    dataset = FileDataset.from_files(str(tmp_path / "audio"), partition_format="{user}/{season}/{genres}.wav")
    result = plan([dataset], cfg(partition_keys=["user", "season"], mini_batch_size=1))
    groups = [(mb.partition_key_value, mb.items) for mb in result.mini_batches]
    assert groups == [
        ({"user": "ann", "season": "s1"}, 2),
        ({"user": "ann", "season": "s2"}, 1),
        ({"user": "bob", "season": "s2"}, 1),
    ]
    with pytest.raises(InputError, match="partition key"):
        plan([dataset], cfg(partition_keys=["country"]))


def test_hive_partitions_for_tabular(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    for day in ("2024-01-01", "2024-01-02"):
        for part in range(2):
            folder = tmp_path / "t" / f"day={day}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"p{part}.csv").write_text("a,b\n1,2\n3,4\n")
    result = plan([TabularDataset.from_delimited_files(str(tmp_path / "t"))], cfg(partition_keys=["day"]))
    assert [(mb.partition_key_value["day"], mb.items, len(mb.slices)) for mb in result.mini_batches] == [
        ("2024-01-01", 4, 2),
        ("2024-01-02", 4, 2),
    ]


def test_tabular_batches_never_cross_files(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("x,y\n" + "".join(f"{i},{i * i}\n" for i in range(100)))
    result = plan([TabularDataset.from_delimited_files(str(tmp_path / "*.csv"))], cfg(mini_batch_size="256"))
    assert result.total_items == 200
    assert all(len({s.url for s in mb.slices}) == 1 for mb in result.mini_batches)
    assert len({mb.slices[0].url for mb in result.mini_batches}) == 2


def test_planning_100k_files_takes_seconds(tmp_path: Path, cfg) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "many"
    subprocess.run(  # creating them is the slow part; do it without Python per-file overhead where possible
        [
            sys.executable,
            "-c",
            "import os,sys\nr=sys.argv[1]\nfor d in range(100):\n p=os.path.join(r,f'd{d:03d}')\n"
            " os.makedirs(p)\n for i in range(1000):\n  open(os.path.join(p,f'{i:04d}.png'),'wb').close()",
            str(root),
        ],
        check=True,
    )
    started = time.perf_counter()
    result = plan([FileDataset.from_files(str(root))], cfg(mini_batch_size=10))
    elapsed = time.perf_counter() - started
    assert result.total_items == 100_000 and len(result.mini_batches) == 10_000
    print(f"planned 100,000 files in {elapsed:.2f}s")
    assert elapsed < 15, f"planning 100,000 files took {elapsed:.1f}s"
    assert os.path.basename(result.mini_batches[0].files[0].url) == "0000.png"


# -- MiniBatch.to_dict: dataclasses.asdict's document, built without deep copies -------------------------
_text = st.text(max_size=8)
_file_refs = st.builds(FileRef, url=_text, size=st.none() | st.integers(0, 2**40), identity=_text)
_slices = st.builds(
    TabularSlice,
    url=_text,
    format=st.sampled_from(["csv", "jsonl", "parquet"]),
    start=st.integers(0, 2**40),
    end=st.integers(0, 2**40),
    header_end=st.integers(0, 100),
    row_groups=st.lists(st.integers(0, 99), max_size=4).map(tuple),
    rows=st.integers(0, 10**6),
    first_line=st.none() | st.integers(1, 10**6),
    null_columns=st.none() | st.lists(_text, max_size=3).map(tuple),
)
_pieces = st.builds(
    KeyRange,
    database=_text,
    relation=_text,
    columns=st.lists(_text, min_size=1, max_size=3).map(tuple),
    lower=st.none() | st.lists(_text, max_size=3).map(tuple),
    upper=st.none() | st.lists(_text, max_size=3).map(tuple),
    rows=st.integers(0, 10**6),
    digest=_text,
    shape=_text,
)


@settings(max_examples=300, derandomize=True, database=None)
@given(
    index=st.integers(0, 10**6),
    files=st.lists(_file_refs, max_size=4).map(tuple),
    slices=st.lists(_slices, max_size=3).map(tuple),
    pieces=st.lists(_pieces, max_size=2).map(tuple),
    keys=st.dictionaries(_text, _text, max_size=3),
)
def test_to_dict_is_asdicts_document(index, files, slices, pieces, keys) -> None:
    """Every field of every descriptor, as `dataclasses.asdict` gives it (the reference), with pieces
    named by type; the document is a copy (changing it changes no mini-batch) and reads back whole."""
    mb = MiniBatch(index, "file", 0, len(files), files, slices, keys, pieces)
    reference = dataclasses.asdict(mb)
    reference["pieces"] = [{"type": type(p).__name__, **dataclasses.asdict(p)} for p in pieces]
    document = mb.to_dict()
    assert document == reference
    assert json.dumps(document) == json.dumps(reference)
    document["partition_key_value"]["changed"] = "yes"
    assert "changed" not in mb.partition_key_value
    assert MiniBatch.from_dict(json.loads(json.dumps(mb.to_dict()))) == mb

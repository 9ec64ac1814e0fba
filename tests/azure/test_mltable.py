"""MLTable files: parsed with a YAML library into the engine's datasets; what cannot be honoured is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from airflow_parallel_run.azure.mltable import ColumnSteps, RowWindow, is_mltable, load_mltable
from airflow_parallel_run.azure.mltable_source import MLTableDataset
from airflow_parallel_run.core import ConfigError, FileDataset, InputError, TabularDataset
from airflow_parallel_run.core.inputs import dataset_from_dict, dataset_to_dict
from airflow_parallel_run.core.inputs.tabular_read import read_tabular
from airflow_parallel_run.core.plan.planner import plan_inputs


def write(folder: Path, text: str, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLTable").write_text(text)
    for name, content in files.items():
        path = folder / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return folder


CSV = "a,b\n1,x\n2,y\n"


def test_read_delimited_becomes_a_tabular_dataset_with_its_options(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "t",
        "paths:\n  - file: ./data.csv\ntransformations:\n  - read_delimited:\n      delimiter: ';'\n"
        "      encoding: latin1\n      header: no_header\n",
        **{"data.csv": "1;x\n"},
    )
    table = load_mltable(str(folder))
    dataset = table.dataset
    assert isinstance(dataset, TabularDataset)
    assert dataset.paths == (str(folder / "data.csv"),)
    assert (dataset.format, dataset.separator, dataset.header, dataset.encoding) == (
        "csv",
        ";",
        False,
        "latin-1",
    )
    assert table.columns.generic_names  # no_header names the columns Column1..n


@pytest.mark.parametrize(
    ("transformation", "fmt"),
    [("read_parquet", "parquet"), ("read_json_lines", "jsonl"), ("read_delimited", "csv")],
)
def test_read_transformations(tmp_path: Path, transformation: str, fmt: str) -> None:
    folder = write(
        tmp_path / "t", f"paths:\n  - pattern: ./*.dat\ntransformations:\n  - {transformation}: {{}}\n"
    )
    dataset = load_mltable(str(folder / "MLTable")).engine_dataset()
    assert isinstance(dataset, TabularDataset) and dataset.format == fmt
    assert dataset.paths == (str(folder / "*.dat"),)


def test_no_read_transformation_means_files(tmp_path: Path) -> None:
    folder = write(tmp_path / "t", "paths:\n  - file: ./mnist\n")  # the mnist sample's dump_mltable.py
    dataset = load_mltable(str(folder)).engine_dataset()
    assert isinstance(dataset, FileDataset) and dataset.paths == (str(folder / "mnist"),)


def test_the_mltable_file_is_never_data(tmp_path: Path) -> None:
    """`folder: ./` is the common form; the MLTable file beside the data must not become a row or an item."""
    folder = write(
        tmp_path / "t",
        "paths:\n  - folder: ./\ntransformations:\n  - read_delimited: {}\n",
        **{"one.csv": CSV, "sub__two.csv": CSV, ".hidden.csv": "junk\n"},
    )
    dataset = load_mltable(str(folder)).engine_dataset()
    planned = plan_inputs([dataset], "1MB")
    urls = sorted(s.url for mb in planned.mini_batches for s in mb.slices)
    assert urls == [str(folder / "one.csv"), str(folder / "sub" / "two.csv")]
    frames = [read_tabular(mb.slices, dataset) for mb in planned.mini_batches]
    assert sum(len(f) for f in frames) == 4 and all(list(f.columns) == ["a", "b"] for f in frames)


def test_a_pattern_matching_the_mltable_file_drops_it(tmp_path: Path) -> None:
    folder = write(tmp_path / "t", "paths:\n  - pattern: ./*\n", **{"x.bin": "1", "y.bin": "2"})
    planned = plan_inputs([load_mltable(str(folder)).engine_dataset()], 10)
    assert sorted(f.url for mb in planned.mini_batches for f in mb.files) == [
        str(folder / "x.bin"),
        str(folder / "y.bin"),
    ]


def test_partition_folders_keep_their_root(tmp_path: Path) -> None:
    """Narrowed globs keep the MLTable's folder as their root, so a partition format still matches."""
    folder = write(
        tmp_path / "t",
        "paths:\n  - folder: ./\ntransformations:\n  - read_delimited: {}\n"
        "  - extract_columns_from_partition_format: {partition_format: '{Store}/{Brand}/{file_name}.csv'}\n"
        "  - drop_columns: [file_name]\n",
        **{"1000__tropicana__d.csv": CSV, "1001__dominicks__d.csv": CSV},
    )
    table = load_mltable(str(folder))
    planned = plan_inputs([table.dataset], None, ["Store", "Brand"])
    assert [mb.partition_key_value for mb in planned.mini_batches] == [
        {"Store": "1000", "Brand": "tropicana"},
        {"Store": "1001", "Brand": "dominicks"},
    ]


def test_the_oj_sample_mltable(oj_example: Path) -> None:
    table = load_mltable(str(oj_example / "partitioned"))
    assert table.partition_format == "{Store}/{Brand}/{file_name}.{extension}"
    steps = table.columns
    assert steps.path_column and steps.partition_columns == ("Store", "Brand", "file_name", "extension")
    # Path, file_name and extension are dropped again; Store and Brand stay: run() must see them
    assert steps.changes_columns() == ["extract_columns_from_partition_format (adds ['Store', 'Brand'])"]
    dataset = table.engine_dataset()
    assert isinstance(dataset, MLTableDataset) and dataset.kind == "tabular"
    planned = plan_inputs([dataset], None, ["Store", "Brand"])
    first = planned.mini_batches[0]
    frame, rows = dataset.read(first, "")
    assert rows == len(frame) > 0
    assert list(frame.columns)[-2:] == ["Store", "Brand"] and "Path" not in frame.columns
    assert {*frame["Store"]} == {first.partition_key_value["Store"]}
    assert {*frame["Brand"]} == {first.partition_key_value["Brand"]}


def test_column_steps_apply() -> None:
    steps = ColumnSteps(
        path_column=True,
        partition_columns=("Store", "Brand", "file_name"),
        selections=(("drop", ("Path", "file_name")),),
    )
    frame = pd.DataFrame({"WeekStarting": ["1990-06-14"], "INCOME": [1]})
    out = steps.apply(frame, "/d/1000/trop/x.csv", {"Store": "1000", "Brand": "trop", "file_name": "x"})
    assert list(out.columns) == ["WeekStarting", "INCOME", "Store", "Brand"]
    assert out.iloc[0].tolist() == ["1990-06-14", 1, "1000", "trop"]
    generic = ColumnSteps(generic_names=True, selections=(("keep", ("Column2",)),))
    assert list(generic.apply(pd.DataFrame([[1, 2]]), "u", {}).columns) == ["Column2"]
    with pytest.raises(InputError, match="drop_columns names"):
        ColumnSteps(selections=(("drop", ("nope",)),)).apply(frame, "u", {})


def test_identity_steps() -> None:
    assert ColumnSteps().is_identity()
    assert ColumnSteps(path_column=True, selections=(("drop", ("Path",)),)).is_identity()
    assert not ColumnSteps(path_column=True).is_identity()
    assert not ColumnSteps(selections=(("keep", ("a",)),)).is_identity()
    assert not ColumnSteps(skip=1).is_identity()


@pytest.mark.parametrize(
    ("steps", "window"),
    [
        ("  - skip: 2\n  - take: 3\n", RowWindow(2, 5)),
        ("  - take: 3\n  - skip: 2\n", RowWindow(2, 3)),
        ("  - take: 10\n  - take: 4\n", RowWindow(0, 4)),
        ("  - skip: 1\n  - skip: 1\n", RowWindow(2, None)),
    ],
)
def test_skip_and_take_compose_in_order(tmp_path: Path, steps: str, window: RowWindow) -> None:
    folder = write(
        tmp_path / "t", "paths:\n  - file: ./d.csv\ntransformations:\n  - read_delimited: {}\n" + steps
    )
    assert load_mltable(str(folder)).columns.window == window


def test_row_window_within_a_run_of_rows() -> None:
    window = RowWindow(5, 12)
    assert window.within(0, 4) == (4, 4)  # before the window
    assert window.within(4, 4) == (1, 4)
    assert window.within(8, 10) == (0, 4)
    assert window.within(12, 3) == (0, 0)
    assert RowWindow(0, None).within(100, 7) == (0, 7)


@pytest.mark.parametrize(
    ("yaml_text", "field", "allowed"),
    [
        ("paths: []\n", "paths", "a non-empty list"),
        ("paths:\n  - url: x\n", "paths[0]", "{file: PATH}"),
        ("paths:\n  - file: azureml://datastores/d/paths/x.csv\n", "paths[0].file", "azureml: datastore URI"),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - filter: 'col(\"a\") > 1'\n",
            "transformations[0].filter",
            "filter rows in run()",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - convert_column_types: []\n",
            "transformations[0].convert_column_types",
            "astype",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - take_random_sample: {probability: 0.1}\n",
            "transformations[0].take_random_sample",
            "sample in run()",
        ),
        (
            "paths:\n  - folder: ./x\ntransformations:\n  - read_delta_lake: {version_as_of: 1}\n",
            "transformations[0].read_delta_lake",
            "Parquet",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - frobnicate: 1\n",
            "transformations[0].frobnicate",
            "one of read_delimited",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {empty_as_string: true}\n",
            "transformations[0].read_delimited.empty_as_string",
            "false",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {infer_column_types: false}\n",
            "transformations[0].read_delimited.infer_column_types",
            "true",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {encoding: utf16}\n",
            "transformations[0].read_delimited.encoding",
            "UTF-16/32",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {delimiter: '\u00a7'}\n",
            "transformations[0].read_delimited.delimiter",
            "one ASCII character",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {header: maybe}\n",
            "transformations[0].read_delimited.header",
            "no_header",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {quoting: true}\n",
            "transformations[0].read_delimited.quoting",
            "delimiter",
        ),
        (
            "paths:\n  - file: ./x.jsonl\ntransformations:\n  - read_json_lines: {invalid_lines: drop}\n",
            "transformations[0].read_json_lines.invalid_lines",
            "error",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - drop_columns: [a]\n  - read_delimited: {}\n",
            "transformations[1].read_delimited",
            "before all others",
        ),
        (
            "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {}\n  - extract_columns_from_partition_format: {t:yyyy/MM/dd}\n",
            "transformations[1].extract_columns_from_partition_format",
            "date-time parts",
        ),
        (
            "paths:\n  - file: ./x\ntransformations:\n  - take: 5\n",
            "transformations",
            "read_delimited, read_parquet or read_json_lines",
        ),
        ("paths:\n  - file: ./x.csv\nquery_source: select 1\n", "query_source", "SQL"),
        ("paths:\n  - file: ./x.csv\nschema: {}\n", "schema", "the MLTable keys"),
        (
            "paths:\n  - folder: ./a\n  - folder: ./b\ntransformations:\n  - read_delimited: {header: from_first_file}\n",
            "read_delimited.header",
            "single file",
        ),
    ],
)
def test_refused_by_name(tmp_path: Path, yaml_text: str, field: str, allowed: str) -> None:
    folder = write(tmp_path / "t", yaml_text)
    with pytest.raises(ConfigError) as info:
        load_mltable(str(folder)).engine_dataset()
    assert info.value.field == f"MLTable {folder / 'MLTable'}: {field}"
    assert allowed in info.value.allowed


def test_row_windows_are_refused_until_the_reader_applies_them(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "t",
        "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {include_path_column: true}\n  - take: 5\n",
    )
    with pytest.raises(ConfigError) as info:
        load_mltable(str(folder)).engine_dataset()
    assert info.value.value == ["take: 5"]


def test_column_steps_reach_run_and_the_source_round_trips(tmp_path: Path) -> None:
    """A no_header file named Column1.., a Path column per file, keep_columns: what run() gets; the source is
    written to and read back from a document (manifests, the sensor) by its registered name."""
    folder = write(
        tmp_path / "t",
        "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {header: no_header, include_path_column: true}\n"
        "  - keep_columns: [Column2, Path]\n",
        **{"a.csv": "1,x\n2,y\n", "b.csv": "3,z\n"},
    )
    dataset = load_mltable(str(folder)).engine_dataset()
    assert isinstance(dataset, MLTableDataset)
    planned = plan_inputs([dataset], "1GB")
    frames = [dataset.read(mb, "")[0] for mb in planned.mini_batches]
    frame = pd.concat(frames, ignore_index=True)
    assert list(frame.columns) == ["Column2", "Path"]
    assert frame["Column2"].tolist() == ["x", "y", "z"]
    assert [Path(p).name for p in frame["Path"]] == ["a.csv", "a.csv", "b.csv"]
    document = dataset_to_dict(dataset, credentials=False)
    assert document["type"] == "MLTableDataset"
    assert dataset_from_dict(json.loads(json.dumps(document))) == dataset


def test_a_column_the_mltable_adds_that_the_file_already_has_is_refused_by_name(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "t",
        "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {include_path_column: true}\n",
        **{"x.csv": "Path,b\n1,2\n"},
    )
    dataset = load_mltable(str(folder)).engine_dataset()
    planned = plan_inputs([dataset], "1GB")
    with pytest.raises(InputError) as info:
        dataset.read(planned.mini_batches[0], "")
    message = str(info.value).replace(str(tmp_path), "/data")
    assert message == (
        "file '/data/t/x.csv' already has a column named ['Path'], which the MLTable /data/t/MLTable adds "
        "(include_path_column or extract_columns_from_partition_format): rename one of them"
    )
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text(encoding="utf-8")
    assert f"`{message}`" in doc


def test_not_an_mltable(tmp_path: Path) -> None:
    assert not is_mltable(str(tmp_path))
    with pytest.raises(InputError, match="is not an MLTable"):
        load_mltable(str(tmp_path))
    (tmp_path / "MLTable").write_text("paths: [\n")
    assert is_mltable(str(tmp_path)) and is_mltable(str(tmp_path / "MLTable"))
    with pytest.raises(ConfigError, match="valid YAML"):
        load_mltable(str(tmp_path))


def test_a_remote_mltable_resolves_relative_paths_against_its_url(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/tables/t/MLTable", b"paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {}\n")
    fs.pipe("/tables/t/a.csv", CSV.encode())
    table = load_mltable("memory://tables/t")
    assert table.paths == ("memory://tables/t/*.csv",)
    planned = plan_inputs([table.engine_dataset()], "1MB")
    urls = [s.url for mb in planned.mini_batches for s in mb.slices]
    assert len(urls) == 1 and urls[0].startswith("memory://") and urls[0].endswith("/tables/t/a.csv")
    fs.rm("/tables", recursive=True)


def test_notes_for_keys_without_effect(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "t",
        "type: mltable\nmetadata: {x: 1}\ntraits: {index_columns: [a]}\npaths:\n  - file: ./x\n",
    )
    notes = load_mltable(str(folder)).notes
    assert len(notes) == 2 and "traits" in notes[1]
    assert os.path.isabs(load_mltable(str(folder)).paths[0])


def test_the_mltable_source_keys_its_column_steps_not_its_place(tmp_path: Path) -> None:
    """Reuse: what the MLTable asks of the rows is in the key, where its file lies is not."""
    from airflow_parallel_run.core.reuse.key import key_fields

    text = "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {include_path_column: true}\n"
    one = load_mltable(str(write(tmp_path / "a", text, **{"x.csv": CSV}))).engine_dataset()
    moved = load_mltable(str(write(tmp_path / "b", text, **{"x.csv": CSV}))).engine_dataset()
    dropped = load_mltable(
        str(write(tmp_path / "c", text + "  - drop_columns: [b]\n", **{"x.csv": CSV}))
    ).engine_dataset()
    assert key_fields(one) == key_fields(moved) != key_fields(dropped)
    assert "source" not in key_fields(one)

"""The reuse key is complete by construction: every field of the job's dataclasses is in it or is listed,
with a reason, as one that cannot change a result; read options (separator, encoding, ...) are in it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch, TabularSlice, register_piece
from airflow_parallel_run.core.reuse.components import job_components
from airflow_parallel_run.core.reuse.key import (
    CONTENT_IN_KEY,
    KEY_WHEN_SET,
    NOT_IN_KEY,
    key_fields,
    mini_batch_key,
)

CLASSES = [ParallelRunConfig, FileDataset, TabularDataset, MiniBatch, FileRef, TabularSlice]


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_every_field_is_in_the_key_or_listed_with_a_reason(cls: type) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    excluded, by_content = NOT_IN_KEY.get(cls, {}), CONTENT_IN_KEY.get(cls, {})
    assert set(excluded) <= names, f"NOT_IN_KEY names fields {cls.__name__} does not have"
    assert set(by_content) <= names, f"CONTENT_IN_KEY names fields {cls.__name__} does not have"
    assert not set(excluded) & set(by_content)
    assert all(len(reason) > 20 for reason in {**excluded, **by_content}.values()), "a reason is missing"


def test_a_new_config_field_enters_the_key(tmp_path: Path) -> None:
    """A field nobody has thought about yet is in the key (the safe default), not silently left out."""
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    extended = dataclasses.make_dataclass(
        "ExtendedConfig",
        [("new_knob", int, dataclasses.field(default=1))],
        bases=(ParallelRunConfig,),
        frozen=True,
    )
    one, two = extended(entry_script=str(script)), extended(entry_script=str(script), new_knob=2)
    assert key_fields(one)["new_knob"] == 1
    components = [job_components(c, {"score.py": "h"}, [], {}) for c in (one, two)]
    assert components[0] != components[1]
    assert components[0]["settings"] == {"batch_format": "pandas", "new_knob": 1}


def _config_values(script: str, src: Path) -> dict[str, tuple[Any, Any]]:
    """Two valid values for each config field."""
    (src / "other.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    return {
        "entry_script": (script, str(src / "other.py")),
        "source_directory": (None, str(src)),
        "mini_batch_size": (None, 5),
        "partition_keys": (None, ["user"]),
        "error_threshold": (-1, 3),
        "allowed_failed_count": (None, 2),
        "allowed_failed_percent": (None, 5.0),
        "output_action": ("append_row", "summary_only"),
        "append_row_file_name": ("parallel_run_step.txt", "out.txt"),
        "append_row_format": ("text", "csv"),
        "batch_format": ("pandas", "pyarrow"),
        "node_count": (1, 2),
        "process_count_per_node": (None, 2),
        "max_concurrency_per_process": (1, 4),
        "run_invocation_timeout": (60, 5),
        "run_max_try": (3, 1),
        "logging_level": ("INFO", "DEBUG"),
        "environment_variables": ({}, {"A": "1"}),
        "resource_monitor_interval": (600, 0),
        "progress_update_timeout": (None, 30),
        "first_task_creation_timeout": (None, 30),
        "speculative_execution": (False, True),
        "speculation_multiplier": (3, 5),
    }


def test_each_config_field_changes_the_key_exactly_when_it_is_not_excluded(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    script = src / "score.py"
    # async: max_concurrency_per_process > 1 needs it (the script's content is in the key by other means)
    script.write_text("async def run(mini_batch):\n    return mini_batch\n")
    values = _config_values(str(script), src)
    assert set(values) == {f.name for f in dataclasses.fields(ParallelRunConfig)}, (
        "a field has no test values"
    )
    base = ParallelRunConfig(entry_script=str(script))
    for name, (first, second) in values.items():
        if name in CONTENT_IN_KEY[ParallelRunConfig]:
            continue  # its content enters through the code bundle (tests/core/reuse/test_reuse.py changes it)
        one = dataclasses.replace(base, **{name: first})
        two = dataclasses.replace(base, **{name: second})
        differ = job_components(one, {}, [], {}) != job_components(two, {}, [], {})
        assert differ == (name not in NOT_IN_KEY[ParallelRunConfig]), name


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [
        ("separator", ",", ";"),
        ("header", True, False),
        ("encoding", "utf-8", "latin-1"),
        ("partition_format", None, "{user}/x.csv"),
        ("format", "csv", "jsonl"),
        ("column_types", None, {"zip": "string"}),
        ("column_types", {"zip": "int64"}, {"zip": "string"}),
    ],
)
def test_read_options_change_every_mini_batch_key(field: str, first: object, second: object) -> None:
    batch = MiniBatch(0, "tabular", 0, 2, slices=(TabularSlice("/d/a.csv", "csv", 0, 10, 4, rows=2),))
    base: dict[str, Any] = {"paths": ("/d",), "format": "csv"}
    keys = {
        mini_batch_key("job", batch, {"/d/a.csv": "xxh3:1"}, key_fields(TabularDataset(**{**base, field: v})))
        for v in (first, second)
    }
    assert len(keys) == 2


def test_storage_options_and_paths_stay_out_of_the_key() -> None:
    one = FileDataset(("/a",), storage_options={"key": "secret-1"})
    two = FileDataset(("/a", "/b"), storage_options={"key": "secret-2"})
    assert key_fields(one) == key_fields(two) == {"partition_format": None}


@dataclasses.dataclass(frozen=True)
class _Range:
    """A piece of a source that is neither files nor tabular files."""

    NOT_IN_KEY: ClassVar[dict[str, str]] = {"digest": "the content enters as the unit's fingerprint"}

    table: str
    lower: int
    upper: int
    digest: str = ""

    @property
    def unit(self) -> str:
        return f"{self.table}[{self.lower}:{self.upper}]"

    def describe(self) -> dict[str, Any]:
        return {"table": self.table, "lower": self.lower, "upper": self.upper}

    def label(self) -> str:
        return self.unit


def test_fields_keyed_only_when_set_name_real_fields() -> None:
    for cls, table in KEY_WHEN_SET.items():
        assert set(table) <= {f.name for f in dataclasses.fields(cls)}
        assert all(len(reason) > 20 for reason in table.values())


def test_pieces_enter_a_key_only_when_there_are_some() -> None:
    """File and tabular mini-batches keep the keys they had before pieces existed; a piece always counts,
    except the fields its class declares as not in the key."""
    files = MiniBatch(0, "file", 0, 1, files=(FileRef("/d/a.txt", 1),))
    assert "pieces" not in key_fields(files)
    one = MiniBatch(0, "tabular", 0, 10, pieces=(_Range("t", 0, 10, "d1"),))
    assert key_fields(one)["pieces"] == [{"table": "t", "lower": 0, "upper": 10}]
    same_range_other_digest = MiniBatch(0, "tabular", 0, 10, pieces=(_Range("t", 0, 10, "d2"),))
    other_range = MiniBatch(0, "tabular", 0, 10, pieces=(_Range("t", 0, 11, "d1"),))
    keys = [
        mini_batch_key("job", mb, {mb.pieces[0].unit: "fp"})
        for mb in (one, same_range_other_digest, other_range)
    ]
    assert keys[0] == keys[1] != keys[2]
    assert mini_batch_key("job", one, {"t[0:10]": "fp"}) != mini_batch_key("job", one, {"t[0:10]": "fp2"})


def test_a_mini_batch_reads_back_with_its_pieces() -> None:
    register_piece(_Range)
    batch = MiniBatch(3, "tabular", 1, 10, partition_key_value={"d": "1"}, pieces=(_Range("t", 0, 10, "d"),))
    assert MiniBatch.from_dict(json.loads(json.dumps(batch.to_dict()))) == batch
    assert batch.units() == ["t[0:10]"] and batch.label() == "t[0:10]"
    assert batch.describe() == {
        "input_index": 1,
        "pieces": [{"table": "t", "lower": 0, "upper": 10}],
        "partition_key_value": {"d": "1"},
    }
    written_before_pieces = {k: v for k, v in MiniBatch(0, "file", 0, 0).to_dict().items() if k != "pieces"}
    assert MiniBatch.from_dict(written_before_pieces).pieces == ()

"""Cache keys must not move: golden keys, component digests and planned slices, written down from the
engine as it was before its modules were rearranged.

A key that changes silently makes every cache entry of every user a miss (the next run recomputes
everything), and a planned slice that moves changes the keys of its mini-batch and of every later one.
Each value below was computed once and written here; a change that moves one must say why and bump
`KEY_FORMAT` (then the values are written again, once). KEY_FORMAT 3: `batch_format` and an input's
`column_types` entered the key, and tabular inputs are read by Arrow with one set of column types per job
(nullable Int64/boolean columns for pandas), so results cached under 2 may differ and must miss.

The inputs live on fsspec's in-memory file system, so their URLs (which are in the keys) and their
fingerprints (xxh3 of the bytes: the store has no content identity) are the same on every machine.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from airflow_parallel_run.core import FileDataset, JobDriver, ParallelRunConfig, TabularDataset
from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter
from airflow_parallel_run.core.minibatch import FileRef, MiniBatch, TabularSlice
from airflow_parallel_run.core.plan import plan_inputs
from airflow_parallel_run.core.reuse.components import component_digests, job_components
from airflow_parallel_run.core.reuse.key import digest, key_fields, mini_batch_key

ROOT = "memory://apr-golden-keys"
CODE = {"score.py": "a" * 64, "lib/util.py": "b" * 64}
SIDE = {"/side/model.bin": "xxh3:" + "c" * 32}

# -------------------------------------------------------------------------------------- fixed inputs


def _csv() -> bytes:
    rows = ["id,name,note\n", '1,a,"two\nlines"\n']
    rows += [f"{i},n{i},{'x' * (i % 7)}\n" for i in range(2, 40)]
    rows += ["\n", '40,"quoted, comma","say ""hi"""\n', "41,last,\n"]
    return ("\ufeff" + "".join(rows)).encode("utf-8")


def _jsonl() -> bytes:
    lines = [f'{{"id": {i}, "v": "{"y" * (i % 5)}"}}\n' for i in range(30)]
    lines.insert(10, "\n")
    return "".join(lines).encode("utf-8")


def _parquet() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(100)), "f": [i / 3 for i in range(100)]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=10)
    return buffer.getvalue()


@pytest.fixture
def memory_inputs() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    if fs.exists(ROOT):
        fs.rm(ROOT, recursive=True)
    for i in range(7):
        fs.pipe_file(f"{ROOT}/files/part{i}/f{i:02d}.txt", f"file {i}\n".encode())
    fs.pipe_file(f"{ROOT}/csv/a.csv", _csv())
    fs.pipe_file(f"{ROOT}/csv/b.csv", b"id,name,note\n1,b,x\n2,b,y\n")
    fs.pipe_file(f"{ROOT}/jsonl/a.jsonl", _jsonl())
    fs.pipe_file(f"{ROOT}/parquet/a.parquet", _parquet())
    try:
        yield ROOT
    finally:
        fs.rm(ROOT, recursive=True)


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "score.py"
    path.write_text("def run(mini_batch):\n    return mini_batch\n")
    return str(path)


def _configs(script: str) -> dict[str, ParallelRunConfig]:
    return {
        "defaults": ParallelRunConfig(entry_script=script),
        "many": ParallelRunConfig(
            entry_script=script,
            mini_batch_size=5,
            partition_keys=["user"],
            error_threshold=3,
            allowed_failed_count=2,
            allowed_failed_percent=5.0,
            append_row_format="csv",
            node_count=2,
            process_count_per_node=3,
            run_invocation_timeout=5,
            run_max_try=1,
            logging_level="DEBUG",
            environment_variables={"A": "1", "TOKEN": "secret"},
            resource_monitor_interval=0,
        ),
        "parquet": ParallelRunConfig(
            entry_script=script, append_row_format="parquet", append_row_file_name="out.parquet"
        ),
        "summary_only": ParallelRunConfig(entry_script=script, output_action="summary_only"),
    }


# ---------------------------------------------------------------------------------- what is computed


def job_keys(script: str) -> dict[str, Any]:
    """The job key and the digests the cache's job manifest keeps, per config."""
    out = {}
    for name, config in _configs(script).items():
        components = job_components(config, CODE, ["--x", "1"], SIDE, "score.py")
        read_options = [key_fields(TabularDataset(("/d",), "csv", separator=";"))]
        out[name] = {
            "cache_key": digest(components)[:32],
            "digests": component_digests({**components, "read_options": read_options}),
        }
    return out


def _batches() -> dict[str, tuple[MiniBatch, dict[str, Any]]]:
    tabular = key_fields(TabularDataset(("/d",), "csv"))
    return {
        "files": (
            MiniBatch(3, "file", 0, 2, files=(FileRef("/d/a.txt", 2), FileRef("/d/b.txt", 5))),
            key_fields(FileDataset(("/d",))),
        ),
        "partition": (
            MiniBatch(0, "file", 1, 1, files=(FileRef("/d/u=1/a.txt", 2),), partition_key_value={"u": "1"}),
            key_fields(FileDataset(("/d",), partition_format="{u}/{name}.txt")),
        ),
        "remote": (
            MiniBatch(1, "file", 0, 1, files=(FileRef("s3://bucket/a.txt", 10, "ETag:abc"),)),
            key_fields(FileDataset(("s3://bucket",))),
        ),
        "csv": (
            MiniBatch(
                2,
                "tabular",
                0,
                4,
                slices=(TabularSlice("/d/a.csv", "csv", 13, 90, 13, rows=4, first_line=2),),
            ),
            key_fields(TabularDataset(("/d",), "csv", separator=";", header=True, encoding="latin-1")),
        ),
        "jsonl": (
            MiniBatch(
                5,
                "tabular",
                0,
                3,
                slices=(
                    TabularSlice("/d/a.jsonl", "jsonl", 0, 40, rows=2),
                    TabularSlice("/d/a.jsonl", "jsonl", 40, 60, rows=1, first_line=None),
                ),
            ),
            key_fields(TabularDataset(("/d",), "jsonl")),
        ),
        "parquet": (
            MiniBatch(
                0,
                "tabular",
                0,
                20,
                slices=(TabularSlice("/d/a.parquet", "parquet", row_groups=(0, 1), rows=20),),
            ),
            tabular,
        ),
    }


def mini_batch_keys(tmp_path: Path) -> dict[str, str]:
    fingerprinter = Fingerprinter(str(tmp_path / "memo.sqlite"))
    try:
        out = {}
        for name, (batch, options) in _batches().items():
            refs = list(batch.files) or [FileRef(s.url) for s in batch.slices]
            if name == "remote":  # the store's identity stands in for the content
                prints = fingerprinter.many(refs)
            else:
                prints = {ref.url: f"xxh3:{ref.url}" for ref in refs}
            out[name] = mini_batch_key("job-key", batch, prints, options)
        return out
    finally:
        fingerprinter.close()


def _datasets(root: str) -> dict[str, tuple[Any, Any]]:
    return {
        "files": (FileDataset.from_files(f"{root}/files"), {"mini_batch_size": 3}),
        "partitioned": (
            FileDataset.from_files(f"{root}/files", partition_format="part{p}/{name}.txt"),
            {"partition_keys": ["p"]},
        ),
        "csv": (TabularDataset.from_delimited_files(f"{root}/csv"), {"mini_batch_size": 64}),
        "jsonl": (TabularDataset.from_json_lines_files(f"{root}/jsonl"), {"mini_batch_size": 100}),
    }


def driver_keys(script: str, root: str, tmp_path: Path) -> dict[str, Any]:
    """What a real `JobDriver` computes: the job key and every mini-batch key (planning and
    fingerprinting included)."""
    out = {}
    for name, (dataset, overrides) in _datasets(root).items():
        config = ParallelRunConfig(entry_script=script, **overrides)
        driver = JobDriver(
            config, [dataset], str(tmp_path / f"out-{name}"), cache_dir=str(tmp_path / "cache")
        )
        try:
            out[name] = {
                "cache_key": driver.cache_key,
                "keys": [driver.keys[mb.index] for mb in driver.plan.mini_batches],
            }
        finally:
            driver.release()
    return out


def planned_slices(root: str) -> dict[str, list[list[Any]]]:
    out = {}
    cases = {
        "csv": (TabularDataset.from_delimited_files(f"{root}/csv"), 64),
        "jsonl": (TabularDataset.from_json_lines_files(f"{root}/jsonl"), 100),
        "parquet": (TabularDataset.from_parquet_files(f"{root}/parquet"), 900),
    }
    for name, (dataset, size) in cases.items():
        plan = plan_inputs([dataset], size)
        out[name] = [
            [mb.index, mb.items]
            + [
                [s.url, s.format, s.start, s.end, s.header_end, list(s.row_groups), s.rows, s.first_line]
                for s in mb.slices
            ]
            for mb in plan.mini_batches
        ]
    return out


# ------------------------------------------------------------------------------------------- golden

GOLDEN_JOB_KEYS: dict[str, Any] = {
    "defaults": {
        "cache_key": "1f1033cd9d555a1ac3231c573acd0acd",
        "digests": {
            "code": {
                "lib/util.py": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "score.py": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            },
            "entry_script": "a845c04c71d89f2a22fee5b7fd6ae6d4",
            "arguments": "70e29888a97b34457d831c21b11ef7b3",
            "side_inputs": "142dd8c49fb230efdaecba79ae3750fa",
            "environment_variables": "44136fa355b3678a1146ad16f7e8649e",
            "output": "0d530f497b680cf580cf8163f70b158f",
            "partition_keys": "4f53cda18c2baa0c0354bb5f9a3ecbe5",
            "settings": {"batch_format": "0a6934e28a6bb591c4542051ac4f02f7"},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                    "column_types": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
    "many": {
        "cache_key": "b8c25148987b8cc310d5a3e315e9f547",
        "digests": {
            "code": {
                "lib/util.py": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "score.py": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            },
            "entry_script": "a845c04c71d89f2a22fee5b7fd6ae6d4",
            "arguments": "70e29888a97b34457d831c21b11ef7b3",
            "side_inputs": "142dd8c49fb230efdaecba79ae3750fa",
            "environment_variables": "7edb0ee6ed85b8888b3e4e2fbbb7dbae",
            "output": "c80bc226fca3e917f128b58b087deb1d",
            "partition_keys": "cec35d191f4a2ca2e8d72e0d763c69a3",
            "settings": {"batch_format": "0a6934e28a6bb591c4542051ac4f02f7"},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                    "column_types": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
    "parquet": {
        "cache_key": "72e93e60ed87dc9116d791a927643f98",
        "digests": {
            "code": {
                "lib/util.py": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "score.py": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            },
            "entry_script": "a845c04c71d89f2a22fee5b7fd6ae6d4",
            "arguments": "70e29888a97b34457d831c21b11ef7b3",
            "side_inputs": "142dd8c49fb230efdaecba79ae3750fa",
            "environment_variables": "44136fa355b3678a1146ad16f7e8649e",
            "output": "4419f0be79c42304dd5ae5e5ffaa8334",
            "partition_keys": "4f53cda18c2baa0c0354bb5f9a3ecbe5",
            "settings": {"batch_format": "0a6934e28a6bb591c4542051ac4f02f7"},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                    "column_types": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
    "summary_only": {
        "cache_key": "deab0b0a32b3b554178de3737882d7ae",
        "digests": {
            "code": {
                "lib/util.py": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
                "score.py": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            },
            "entry_script": "a845c04c71d89f2a22fee5b7fd6ae6d4",
            "arguments": "70e29888a97b34457d831c21b11ef7b3",
            "side_inputs": "142dd8c49fb230efdaecba79ae3750fa",
            "environment_variables": "44136fa355b3678a1146ad16f7e8649e",
            "output": "776f6c8bf5b768ee20c972d85d299d03",
            "partition_keys": "4f53cda18c2baa0c0354bb5f9a3ecbe5",
            "settings": {"batch_format": "0a6934e28a6bb591c4542051ac4f02f7"},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                    "column_types": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
}
GOLDEN_MINI_BATCH_KEYS: dict[str, str] = {
    "files": "0b85bf649d1b8dc81658ed4cc9cd805454ce99f0",
    "partition": "a1b8f5f69c6fb793b0aeaa67b96411df5d43de08",
    "remote": "30cb4fdceb296a18f030d99df014833cd153441b",
    "csv": "dbe1fed7dadbc09d383a1fd932a16a586756cf2c",
    "jsonl": "56a61a2ad140c95af7d6799324f673e63f619471",
    "parquet": "47b6566f5c343b3fd9a6fc2bb45173f49a16866b",
}
GOLDEN_DRIVER_KEYS: dict[str, Any] = {
    "files": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "0ef7ba8a13f5674c4c52d9a683e30202a0b702c9",
            "ec7f28a74602452ffffbc284621812b19aa1d828",
            "5c5916fe3b1d4feccf864fa82475c88d99ab4168",
        ],
    },
    "partitioned": {
        "cache_key": "6976c545db30fd4458dc0f73584107d5",
        "keys": [
            "f221578cf55a4ec2ed1e6d48332fbf29265cbd7c",
            "7f47e0343042054d72efbeda2484f8ea488426c6",
            "8f2f2f432ea95d5a3cb8984147aed4eb7e21f498",
            "95904e14bce4f486034e72c3b296ee3baf7af78f",
            "66e927901fe5d9ee547f0aa7bbba53ab91499df0",
            "eb3dc1e02ceb4df5c97542b20079fa6bcbf4ee58",
            "ea93fd005893ecbd6824b9480f2557b80778f7c5",
        ],
    },
    "csv": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "5fb401de83ab49be6b23be60da6ecee928179d56",
            "4c44b4e5c45a27a72a1a5e1f8a4fdf954c81ee68",
            "d0b4a44c3540213ea081f9cf3e476220543c59c9",
            "a1456c7eb1c71e486dfc307aed266dbaae11fda1",
            "0b4d85452b2289dbb062e8b601da24032cfd6611",
            "67488b0013502f87e9385a2b403890c239ae401c",
            "beb438e5ed6760b74713cee90d9f848787443b0f",
            "b9e5f8adcb598009427523dcb6b98937e6d7889f",
        ],
    },
    "jsonl": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "11acc9d93c475ec8537023e5f6ba43e470dc1cb7",
            "06bc22f1429620ca227a6a55e17ee6ca7ef9baa3",
            "fba056846625dba5b6ace0b9225913ac7f65edc9",
            "a287118f89f294873e28e8d332ea29fc1b6f6e6f",
            "3144aa085959ff5cacdfe6cfa56e52af82c55621",
            "3e4438db113294663bc2757d06ecdabe10b02c75",
        ],
    },
}
GOLDEN_SLICES: dict[str, Any] = {
    "csv": [
        [0, 6, ["memory:///apr-golden-keys/csv/a.csv", "csv", 16, 82, 16, [], 6, 2]],
        [1, 7, ["memory:///apr-golden-keys/csv/a.csv", "csv", 82, 153, 16, [], 7, 9]],
        [2, 7, ["memory:///apr-golden-keys/csv/a.csv", "csv", 153, 230, 16, [], 7, 16]],
        [3, 7, ["memory:///apr-golden-keys/csv/a.csv", "csv", 230, 307, 16, [], 7, 23]],
        [4, 7, ["memory:///apr-golden-keys/csv/a.csv", "csv", 307, 384, 16, [], 7, 30]],
        [5, 6, ["memory:///apr-golden-keys/csv/a.csv", "csv", 384, 467, 16, [], 6, 37]],
        [6, 1, ["memory:///apr-golden-keys/csv/a.csv", "csv", 467, 476, 16, [], 1, 44]],
        [7, 2, ["memory:///apr-golden-keys/csv/b.csv", "csv", 13, 25, 13, [], 2, 2]],
    ],
    "jsonl": [
        [0, 5, ["memory:///apr-golden-keys/jsonl/a.jsonl", "jsonl", 0, 105, 0, [], 5, 1]],
        [1, 5, ["memory:///apr-golden-keys/jsonl/a.jsonl", "jsonl", 105, 210, 0, [], 5, 6]],
        [2, 5, ["memory:///apr-golden-keys/jsonl/a.jsonl", "jsonl", 210, 321, 0, [], 5, 11]],
        [3, 5, ["memory:///apr-golden-keys/jsonl/a.jsonl", "jsonl", 321, 431, 0, [], 5, 17]],
        [4, 5, ["memory:///apr-golden-keys/jsonl/a.jsonl", "jsonl", 431, 541, 0, [], 5, 22]],
        [5, 5, ["memory:///apr-golden-keys/jsonl/a.jsonl", "jsonl", 541, 651, 0, [], 5, 27]],
    ],
    "parquet": [
        [0, 40, ["memory:///apr-golden-keys/parquet/a.parquet", "parquet", 0, 0, 0, [0, 1, 2, 3], 40, None]],
        [1, 40, ["memory:///apr-golden-keys/parquet/a.parquet", "parquet", 0, 0, 0, [4, 5, 6, 7], 40, None]],
        [2, 20, ["memory:///apr-golden-keys/parquet/a.parquet", "parquet", 0, 0, 0, [8, 9], 20, None]],
    ],
}


def test_job_keys_and_component_digests_do_not_move(script: str) -> None:
    assert job_keys(script) == GOLDEN_JOB_KEYS


def test_mini_batch_keys_do_not_move(tmp_path: Path) -> None:
    assert mini_batch_keys(tmp_path) == GOLDEN_MINI_BATCH_KEYS


def test_keys_of_a_planned_and_fingerprinted_job_do_not_move(
    script: str, memory_inputs: str, tmp_path: Path
) -> None:
    assert driver_keys(script, memory_inputs, tmp_path) == GOLDEN_DRIVER_KEYS


def test_planned_slices_do_not_move(memory_inputs: str) -> None:
    assert planned_slices(memory_inputs) == GOLDEN_SLICES

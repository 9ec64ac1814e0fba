"""Cache keys must not move: golden keys, component digests and planned slices, written down from the
engine as it was before its modules were rearranged.

A key that changes silently makes every cache entry of every user a miss (the next run recomputes
everything), and a planned slice that moves changes the keys of its mini-batch and of every later one.
Each value below was computed once and written here; a change that moves one must say why and bump
`KEY_FORMAT` (then the values are written again, once). KEY_FORMAT 3: `batch_format` and an input's
`column_types` entered the key, and tabular inputs are read by Arrow with one set of column types per job
(nullable Int64/boolean columns for pandas), so results cached under 2 may differ and must miss. KEY_FORMAT 4:
CSV values read as pandas reads them where Arrow read them otherwise (hex integers, NaN spellings, repeated
header names, a short row's names), so a mini-batch cached under 3 may hold values the reader no longer gives. KEY_FORMAT 5:
Parquet integer and bool columns without a missing value in the job are numpy's int64/bool for pandas (they
were nullable Int64/boolean), and the job's `null_columns` entered the key with the input.

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
                    "null_columns": "74234e98afe7498fb5daf1f36ac2d78a",
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
                    "null_columns": "74234e98afe7498fb5daf1f36ac2d78a",
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
                    "null_columns": "74234e98afe7498fb5daf1f36ac2d78a",
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
                    "null_columns": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
}
GOLDEN_MINI_BATCH_KEYS: dict[str, str] = {
    "files": "87c72f32d9a1c4a3d096abc7e05918d1dcfd242f",
    "partition": "e98b2625dd67ddc88875aa7248cce6ea89a7704b",
    "remote": "6afa768cba65dafe89c94f462d87435feaeb3232",
    "csv": "189dfb6115b87c051dd48bfa8b872345bd32ec71",
    "jsonl": "ab8e937ccbffff2dc21a26126a4276fdd8e015a4",
    "parquet": "94dedf41b2e96e496f4ab54af844ff48492edc16",
}
GOLDEN_DRIVER_KEYS: dict[str, Any] = {
    "files": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "7a4180972249da9b7bfb8e4cef052d35ea956719",
            "178b0b7df30f062d6ca03978a5249b2e1bb780f1",
            "156e8a1a5234863d17702950eb127f564cd1f1cf",
        ],
    },
    "partitioned": {
        "cache_key": "6976c545db30fd4458dc0f73584107d5",
        "keys": [
            "a0605ffea15e3ef88f6e6c531f58bd415037efea",
            "bf8162c7e594beb8ef06e593d4f1bfde1bea6c4d",
            "578504da3fe3b16f6fbb9884c62ae81e7f84c03e",
            "ed59177b0fedc7a938da3b825e9e50051cd259ee",
            "c13419a9ffa39b2790b0c347bd1c152cd0af1c23",
            "dd2efcee7d2023d482364d72b15038bc0c140e3b",
            "61b7bf02aa06608455b93b923256e86c53d97f7c",
        ],
    },
    "csv": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "0266cc6ee7582fcc39a4e9a5649c36f8e7748935",
            "4db4cba4abfaaa5d53ebac9aec5413d67072989a",
            "90ec8ad5364b36ccc074e40ffaaf0826b55c1c75",
            "846c3f4e6f39c69800dedb6f942dba0eeb0d80af",
            "f6e10b86980cc02e7eafaa523c745bd130cd3122",
            "19ba30473ea00df160cf4a5cc2c74795ae568bf6",
            "441551bac7ac30e5321793ba9c6516717054d3b7",
            "3e54c5b4d011bf946623e8f7be42c9f62e945d5f",
        ],
    },
    "jsonl": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "2644626e8e3164fb618de7322196cff04f99f789",
            "79c6f7f94b34ad67bad5517f0485b479e42389aa",
            "19a8d0c1a65ca7f869d7c519ec10447cdecb68bf",
            "49a8f5dd82f17440a600d7748b7714971c848c7b",
            "71c524a5e7dcdb4d058a38933a8f2e5e4e1ff81f",
            "6c662301cfaffaaab357d845ced6205c2b221457",
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

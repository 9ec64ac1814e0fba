"""Cache keys must not move: golden keys, component digests and planned slices, written down from the
engine as it was before its modules were rearranged.

A key that changes silently makes every cache entry of every user a miss (the next run recomputes
everything), and a planned slice that moves changes the keys of its mini-batch and of every later one.
Each value below was computed once and written here; a change that moves one must say why and bump
`KEY_FORMAT` (then the values are written again, once). KEY_FORMAT 3: `batch_format` and an input's
`column_types` entered the key, and tabular inputs are read by Arrow with one set of column types per job
(nullable Int64/boolean columns for pandas), so results cached under 2 may differ and must miss. KEY_FORMAT 4:
CSV values read as pandas reads them where Arrow read them otherwise (hex integers, NaN spellings, repeated
header names, a short row's names), so a mini-batch cached under 3 may hold values the reader no longer gives.

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
    "files": "b20037fa34ce342ba6e9fed7af0af9bf5e209710",
    "partition": "b66ef74151817f65d8ca8faffb48ade6d540f99a",
    "remote": "d9df8adb48d747b7d4c845e487c13ea6a38cb2ec",
    "csv": "87518d2fd6500cd0514863a4c4b4e2f7bfce1f6a",
    "jsonl": "647afbc3a8a4f1b9977fa66d969d1ebb1e81c2a6",
    "parquet": "6e41fb831d5dfdeebce06848ec418ed4b3dabd18",
}
GOLDEN_DRIVER_KEYS: dict[str, Any] = {
    "files": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "e8911d964ca4cb000993a30644289fb2416458cb",
            "bc53b7af40a0f07c899bab2655c6007095751a14",
            "17a7b7a24453af59ac84900667e1aade2c33623f",
        ],
    },
    "partitioned": {
        "cache_key": "6976c545db30fd4458dc0f73584107d5",
        "keys": [
            "c68ba20093d61e376d170124284c99bb0e58af08",
            "bec71c4876a390b70764355d87409bc3df2d8a95",
            "27055227a2c5c05372ce338d81bc5a3d221ddf3c",
            "7f43cf5eaaa0b7b3db602f68ccf4bb605abb3435",
            "ee2cb9a3dac168f52d460df6a8146eafe64f5bc7",
            "52dd7d74d43da51c6fa7ab697b6090df58c88344",
            "492dec98d37ec3e59df8d0a041f02d049523fbf1",
        ],
    },
    "csv": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "019661d4c3f6a2c6927a3f9fc1e19c849e869120",
            "2a8d42b4701cb897dc0c79e5cf2827218b1f1614",
            "2ac9b8edee21985fccd54ca11d0694797839f09a",
            "aba1d921ce05c9bf27f1a1d00f0cc4b605eb164a",
            "6b20079dcb5ebb406568fdc5b45f226d339155f1",
            "a8692211d7292a1b5bd087e22902895752a42275",
            "884b72e307c83a4a333f4d70610c3ae57669740b",
            "700457c57f4d1fef9aff1ec35033796d722cc461",
        ],
    },
    "jsonl": {
        "cache_key": "903427c5983dfa8f4f90336ff29fac51",
        "keys": [
            "255994be12588c1d95f88ce0154b8ba484cff0c2",
            "88aca7d0f7acca0a4590217525e4c64372b246ce",
            "a257dccbabf8c7af094b19f105803e433ad6714b",
            "93855eb3a0382f3c5979fc44213c50310bf36d45",
            "35b90745724ca6006df11bae3998954b270d449e",
            "f45329d6c50b9aa238fde1c267a3b504a7ebd48a",
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

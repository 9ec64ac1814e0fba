"""Cache keys must not move: golden keys, component digests and planned slices, written down from the
engine as it was before its modules were rearranged.

A key that changes silently makes every cache entry of every user a miss (the next run recomputes
everything), and a planned slice that moves changes the keys of its mini-batch and of every later one.
Each value below was computed once and written here; a change that moves one must say why and bump
`KEY_FORMAT` instead of editing this file.

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
        "cache_key": "7ce9fb6572f32a6a25129d4b872c395c",
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
            "settings": {},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
    "many": {
        "cache_key": "8fcbeb0134dc5b3e63584d65b4b4dfdf",
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
            "settings": {},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
    "parquet": {
        "cache_key": "bb421289de1b5a05e5008c30c0d9bd8a",
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
            "settings": {},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
    "summary_only": {
        "cache_key": "aad6e38437108e05ebfc0e2f6cbbf703",
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
            "settings": {},
            "read_options": [
                {
                    "format": "82cacb7d3298441d7e03e0d916f2417f",
                    "separator": "8c45a5435a740956846dab045914851d",
                    "header": "b5bea41b6c623f7c09f1bf24dcae58eb",
                    "encoding": "d98383a6cb0943d0f3b771d8bf29de73",
                    "partition_format": "74234e98afe7498fb5daf1f36ac2d78a",
                }
            ],
        },
    },
}
GOLDEN_MINI_BATCH_KEYS: dict[str, str] = {
    "files": "18f081f047e0db4baa114a7fdce840f5c6103712",
    "partition": "5bd19b935edf924d203615c7abe20f6051650617",
    "remote": "1e6e4a5c6a07d1c9eba7e0b86db97fbe1b3efeaf",
    "csv": "9a99623965e8a888e5d2452101bb8cecb4e775a9",
    "jsonl": "c6a510c1e63554d813a826efc619786c5f56ca59",
    "parquet": "419e6a5d218fb2bb45d182dd34f69730e86bbfdb",
}
GOLDEN_DRIVER_KEYS: dict[str, Any] = {
    "files": {
        "cache_key": "3f1248771a1e70878c8d9906ffe954c9",
        "keys": [
            "dc4b7eecd1ec967eb91fd38eb67fadb86ff8f54c",
            "492946d377a30cfbe6be581b6eee4d62be6710ac",
            "1ebcaf41fa593dee3f9328ba45ffb02d6fb45db7",
        ],
    },
    "partitioned": {
        "cache_key": "c02fe7eb7649013eb453638ef50deb0a",
        "keys": [
            "8188a0155640be33df83c54eb7c42a3caa4edc61",
            "a41b60914fa23705feefd6e44376e9039c5909d3",
            "caa675d844466584a062f7640f3ae4a6c5352cef",
            "e072a7fe87e667252ba870d1cd0d662efae1ce7b",
            "ab10d7fdfb99362623af67d596548b11580b1c1a",
            "8d384bbec425ed79855069c33e14dd0d8c5bbaf2",
            "e7d9e374f1554f01bf9a90156bec7a5cd8a25c6f",
        ],
    },
    "csv": {
        "cache_key": "3f1248771a1e70878c8d9906ffe954c9",
        "keys": [
            "cab3088015eaf3ba5673f5d624de5170cea37e32",
            "1adbeed568e54f96fb42ed433be75e00c73575be",
            "e529caa26ddc92b805dfe21f3c4b8452479b52d9",
            "93f4a4857e610c7368c3aff0941f199bedd3f829",
            "6954b84de599a270b4ed1505068e552727add20c",
            "99c1c9d0444447cbf698fb27dc961191a72f81c6",
            "70d6c6daeafc0bf48dc57aea95b105abf27d04b4",
            "8d8fdd7b416f1639a511678ef45767d0b69454f1",
        ],
    },
    "jsonl": {
        "cache_key": "3f1248771a1e70878c8d9906ffe954c9",
        "keys": [
            "bbb557bf563a75798bca02b2ae5aab5e2bb00076",
            "faf8e85dfd848ad1b35e7a89831e9471181641b2",
            "461c792f977e4fadb6b2d5fcf85be50572705623",
            "9e43c7d4941862f02b6cb3f29aac03fc6e370bfb",
            "680a2925fba60e9d19c01d48aa4670261cd0adb1",
            "e72e9d9247a0db6a208f9ab811bfebadc2d7a48e",
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

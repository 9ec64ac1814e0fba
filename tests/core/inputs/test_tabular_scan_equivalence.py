"""The CSV / JSON Lines planner gives exactly the slices (start, end, header_end, rows, first_line), or the same
error, as the planner it replaced (tabular_scan_reference.py), on random bytes and any scan chunk size: with the
native record scan (`_record_scan.c`, built by `make install`) and with the numpy scan used without it."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shlex
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from property_support import REPEATABLE
from tabular_scan_reference import reference_plan

from airflow_parallel_run.core.errors import InputError
from airflow_parallel_run.core.inputs import tabular_scan
from airflow_parallel_run.core.inputs.tabular import TabularDataset
from airflow_parallel_run.core.minibatch import TabularSlice

# Pieces that matter to the scan: quotes at a field's start and in its middle, "" escapes, quoted line breaks of
# every kind, blank lines and blank bytes, every separator the tests use, and ordinary bytes.
_PIECES = [
    "a",
    "7",
    "x y",
    '"',
    '""',
    '"q"',
    '"a""b"',
    '"\n"',
    '"\r\n"',
    '"\r"',
    '"x\n\ny"',
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    " ",
    "\t",
    "  \n",
    ",",
    ";",
    "\t",
    '5" screen',
    '  "x"',
    "{}",
    "*",
    "\x02",
]
_URL = "memory://equivalence/data.csv"


def _outcome(plan: object) -> list[TabularSlice] | str:
    try:
        return plan()  # type: ignore[operator]
    except InputError as exc:
        return f"InputError: {exc}"


def test_the_native_record_scan_is_built() -> None:
    """`make install` builds it (setup.py): a test run without it would compare the numpy scan twice."""
    assert tabular_scan._native_scan is not None, "the native record scan is not built: run `make install`"


_SOURCE = Path(tabular_scan.__file__).with_name("_record_scan.c")


def _build(folder: Path, *defines: str) -> Any:
    """The native scan's C file compiled into `folder` with these `-D` definitions, imported (not into
    sys.modules)."""
    target = folder / f"_record_scan{sysconfig.get_config_var('EXT_SUFFIX')}"
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        [
            *compiler,
            "-O2",
            "-shared",
            "-fPIC",
            *(f"-D{d}" for d in defines),
            f"-I{include}",
            str(_SOURCE),
            "-o",
            str(target),
        ],
        check=True,
    )
    spec = importlib.util.spec_from_file_location("_record_scan", target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def portable_scan(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Any, ...]]:
    """The native scan built with its portable word-at-a-time path (`-DAPR_PORTABLE_SCAN`), the one compilers
    without SSE2 (ARM) use: `make install` builds the SSE2 path on these machines."""
    return _build(tmp_path_factory.mktemp("portable-scan"), "APR_PORTABLE_SCAN").scan_chunk  # type: ignore[no-any-return]


def test_a_module_built_from_another_source_is_not_used(tmp_path: Path) -> None:
    """A module left from an older checkout (built from another C file) is not used: the planner falls back
    to the numpy scan and says why; one built from the C file next to it is used."""
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()
    (tmp_path / "current").mkdir()
    (tmp_path / "older").mkdir()
    current = _build(tmp_path / "current", f'APR_SOURCE_SHA256="{digest}"')
    older = _build(tmp_path / "older", f'APR_SOURCE_SHA256="{"0" * 64}"')
    assert tabular_scan.usable_native_scan(current, _SOURCE) is current.scan_chunk
    with pytest.warns(RuntimeWarning, match="built from another version of _record_scan.c"):
        assert tabular_scan.usable_native_scan(older, _SOURCE) is None
    assert tabular_scan.usable_native_scan(older, tmp_path / "no-source.c") is older.scan_chunk  # a wheel
    assert tabular_scan._native_scan is not None  # the installed module is current (`make install`)


@pytest.mark.parametrize("native", ["sse2", "portable", "numpy"])
@settings(REPEATABLE, max_examples=600)
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=60),
    bom=st.booleans(),
    fmt=st.sampled_from(["csv", "csv", "jsonl"]),
    separator=st.sampled_from([",", ";", "\t"]),
    header=st.booleans(),
    target=st.integers(1, 16),
    chunk=st.sampled_from([1, 2, 3, 5, 8, 13, 64, 8 * 1024 * 1024]),
    few=st.sampled_from([0, 1, 256]),
)
def test_slices_are_the_old_planners_on_random_bytes(
    pieces: list[str],
    bom: bool,
    fmt: str,
    separator: str,
    header: bool,
    target: int,
    chunk: int,
    few: int,
    native: str,
    portable_scan: Callable[..., tuple[Any, ...]],
) -> None:
    data = (b"\xef\xbb\xbf" if bom else b"") + "".join(pieces).encode()
    if fmt == "csv":
        dataset = TabularDataset.from_delimited_files(_URL, header=header, separator=separator)
    else:
        dataset = TabularDataset.from_json_lines_files(_URL)
    expected = _outcome(lambda: reference_plan(data, _URL, dataset, target, chunk))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
        patch.setattr(tabular_scan, "_FEW_CANDIDATES", few)
        if native != "sse2":
            patch.setattr(tabular_scan, "_native_scan", portable_scan if native == "portable" else None)
        got = _outcome(lambda: tabular_scan._plan_lines(io.BytesIO(data), _URL, dataset, target))
    assert got == expected


@pytest.mark.parametrize("chunk", [64 * 1024, 8 * 1024 * 1024])
def test_the_native_scan_on_chunks_of_many_records(
    chunk: int, portable_scan: Callable[..., tuple[Any, ...]]
) -> None:
    """Tens of thousands of records per chunk, with quoted newlines only after the first few thousand: the
    native scan's arrays grow several times, and its line indices start late (the small random inputs above
    never reach either)."""
    import random

    rng = random.Random(7)
    rows = [f"{i},{rng.random()},name_{i % 97}\n" for i in range(30_000)]
    rows += [
        rng.choice(['"multi\nline",1,x\n', '"a""b",2,y\n', '5" screen,3,z\n', "\n", '"x\r\ny",4,w\n'])
        for _ in range(30_000)
    ]
    data = ("id,value,name\n" + "".join(rows)).encode()
    dataset = TabularDataset.from_delimited_files(_URL)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tabular_scan, "_CHUNK_BYTES", chunk)
        native = tabular_scan._plan_lines(io.BytesIO(data), _URL, dataset, 50_000)
        patch.setattr(tabular_scan, "_native_scan", portable_scan)
        portable = tabular_scan._plan_lines(io.BytesIO(data), _URL, dataset, 50_000)
        patch.setattr(tabular_scan, "_native_scan", None)
        numpy_scan = tabular_scan._plan_lines(io.BytesIO(data), _URL, dataset, 50_000)
    assert native == portable == numpy_scan == reference_plan(data, _URL, dataset, 50_000, chunk)
    assert sum(s.rows for s in native) == 30_000 + sum(1 for r in rows[30_000:] if r != "\n")

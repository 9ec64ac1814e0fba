"""core/driver/allocator.py: in a process the engine owns (the CLI's, an Airflow task's), glibc maps and
unmaps large blocks one by one from the job's report on; a library call changes nothing. Each case runs in
a fresh interpreter: glibc's setting lasts as long as the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.driver import allocator, finish
from airflow_parallel_run.core.logs import report

glibc = pytest.mark.skipif(allocator._glibc_mallopt() is None, reason="glibc's allocator only")

#: Frees a 1 MiB block (glibc raises its threshold to 1 MiB), then asks for 512 KiB: whether that block is a
#: map of its own (the IS_MMAPPED bit of its chunk's size field, glibc's malloc.c) or comes from the heap. The
#: module is loaded from its file alone: the interpreter imports nothing else (no thread of a library's that
#: could allocate meanwhile), and the block's own bit is read, not a count another thread could change.
PROBE = """
import ctypes, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("allocator_alone", sys.argv[1])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
{before}
libc.free(libc.malloc(1 << 20))
block = libc.malloc(512 << 10)
size_field = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
print(json.dumps({{"fixed": fixed, "mapped": bool(size_field & 2)}}))
libc.free(block)
"""


def _probe(before: str) -> dict[str, bool]:
    code = PROBE.format(before=textwrap.dedent(before))
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", code, allocator.__file__],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@glibc
def test_a_library_call_leaves_the_process_allocator_alone() -> None:
    assert _probe("fixed = allocator.large_blocks_returned()") == {"fixed": False, "mapped": False}


@glibc
def test_a_process_the_engine_owns_maps_large_blocks_from_then_on() -> None:
    probe = _probe("allocator.own_process()\nfixed = allocator.large_blocks_returned()")
    assert probe == {"fixed": True, "mapped": True}


def test_the_report_is_built_after_the_threshold_is_fixed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    files: Callable[..., Path],
    write_script: Callable[..., str],
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(finish, "large_blocks_returned", lambda: seen.append("threshold") or True)
    build = report.build_report
    monkeypatch.setattr(report, "build_report", lambda *a, **k: seen.append("report") or build(*a, **k))
    config = ParallelRunConfig(entry_script=write_script("def run(mb):\n    return mb\n"), mini_batch_size=2)
    summary = run_job(
        config, [FileDataset.from_files(str(files(3)))], str(tmp_path / "out"), allow_reuse=False
    )
    assert summary["status"] == "succeeded"
    assert seen == ["threshold", "report"]


@glibc
def test_the_cli_owns_its_process(
    tmp_path: Path, files: Callable[..., Path], write_script: Callable[..., str]
) -> None:
    script = write_script("def run(mb):\n    return mb\n")
    code = (
        "import sys\nfrom airflow_parallel_run import cli\nfrom airflow_parallel_run.core.driver import allocator\n"
        f"code = cli.main(['run', '--input', {str(files(3))!r}, '--output', {str(tmp_path / 'out')!r}, "
        f"'--entry-script', {script!r}, '--mini-batch-size', '2', '--process-count-per-node', '1'])\n"
        "print(code, allocator._owned, allocator._fixed)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 True True"

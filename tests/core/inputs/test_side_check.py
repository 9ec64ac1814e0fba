"""`core/inputs/side_check.py` and a worker's check of a downloaded side input, on their own: what the
check after each run() reads (nothing while the side input's files keep their identity), what passes (the
same bytes touched) and what fails; and a download from a store that lists no content identity, checked by
the bytes downloaded (the end-to-end cases: tests/core/reuse/test_side_input_changed.py and
tests/cluster/test_s3_input_changed.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fsspec
import pytest

from airflow_parallel_run.core.errors import DataChangedError
from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter, hash_file
from airflow_parallel_run.core.inputs.side_check import SideInputCheck, planned
from airflow_parallel_run.core.worker.plugin import JobWorker


class Counted:
    """`hash_file`, counting the files it reads."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def __call__(self, path: str) -> str:
        self.read.append(path)
        return hash_file(path)


@pytest.fixture
def memo(tmp_path: Path) -> Any:
    with Fingerprinter(str(tmp_path / "memo" / "memo.sqlite")) as fingerprinter:
        yield fingerprinter


def _model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"w" * 100)
    (folder / "sub" / "vocab.txt").write_text("a b c")
    return folder


def test_unchanged_side_inputs_are_checked_without_reading_them(tmp_path: Path, memo: Any) -> None:
    folder, single = _model(tmp_path), tmp_path / "labels.txt"
    single.write_text("x")
    sides = [planned(str(folder), memo.path), planned(str(single), memo.path)]
    assert sides[0].fingerprint == memo.path(str(folder)) and sides[0].identity
    hashes = Counted()
    check = SideInputCheck(sides, hashes)
    for _ in range(3):
        check.check()
    assert hashes.read == []


def test_a_touched_side_input_is_read_once_then_passes_without_reading(tmp_path: Path, memo: Any) -> None:
    folder = _model(tmp_path)
    hashes = Counted()
    check = SideInputCheck([planned(str(folder), memo.path)], hashes)
    st = os.stat(folder / "weights.bin")
    os.utime(folder / "weights.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    check.check()
    assert len(hashes.read) == 2, "the folder's files hashed again once"
    check.check()
    assert len(hashes.read) == 2, "its new identity was remembered"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda f: (f / "weights.bin").write_bytes(b"v" * 100), "its bytes differ"),
        (lambda f: (f / "sub" / "new.txt").write_text("n"), "its bytes differ"),
        (lambda f: (f / "sub" / "vocab.txt").rename(f / "sub" / "vocab2.txt"), "its bytes differ"),
        (lambda f: shutil.rmtree(f), "deleted or moved"),
    ],
    ids=["edited", "file added", "file renamed", "deleted"],
)
def test_a_changed_side_input_fails_naming_it(tmp_path: Path, memo: Any, change: Any, why: str) -> None:
    folder = _model(tmp_path)
    check = SideInputCheck([planned(str(folder), memo.path)], hash_file)
    change(folder)
    with pytest.raises(
        DataChangedError, match=f"side input {folder} changed after the job fingerprinted it.*{why}"
    ):
        check.check()


def test_a_download_from_a_store_without_identities_is_checked_by_its_bytes(
    tmp_path: Path, memo: Any
) -> None:
    """The memory file system lists no ETag: the keyed fingerprint hashed the objects' bytes, and the
    worker hashes the bytes it downloaded."""
    fs = fsspec.filesystem("memory")
    fs.pipe({"/side/model/a.txt": b"aaa", "/side/model/b/c.txt": b"ccc", "/side/one.txt": b"one"})
    try:
        for url in ("memory://side/model", "memory://side/one.txt"):
            path = fs._strip_protocol(url)
            target = str(tmp_path / "download" / os.path.basename(path))
            fs.get(path, target, recursive=fs.isdir(path))
            worker = SimpleNamespace(spec=SimpleNamespace(side_fingerprints={url: memo.path(url)}))
            JobWorker._check_download(worker, url, fs, path, target)  # type: ignore[arg-type]
            local = target if os.path.isfile(target) else os.path.join(target, "a.txt")
            with open(local, "r+b") as handle:  # a download of other bytes than those keyed
                handle.write(b"x")
            with pytest.raises(DataChangedError, match=f"side input {url} changed.*as downloaded"):
                JobWorker._check_download(worker, url, fs, path, target)  # type: ignore[arg-type]
    finally:
        fs.rm("/side", recursive=True)

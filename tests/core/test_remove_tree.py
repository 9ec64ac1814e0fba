"""`remove_tree` on a local folder (the staging folder at every job's end): everything under it goes, odd names
included; a link is removed, never followed; and the memory does not grow with the entries (fsspec's `rm`
listed every path first: the driver's peak at the end of a job of 100,000 mini-batches)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_parallel_run.core.storage import remove_local_tree, remove_tree


def _tree(root: Path) -> None:
    (root / "job" / "a" / "b").mkdir(parents=True)
    (root / "job" / "a" / "b" / "deep.part").write_bytes(b"x")
    (root / "job" / "empty").mkdir()
    for name in ("new\nline.part", "tab\tand space .part", "é-ü-日本.part", "x" * 240):
        (root / "job" / name).write_bytes(b"y")
    os.close(
        os.open(os.path.join(os.fsencode(root / "job"), b"not-utf8-\xff\xfe.part"), os.O_CREAT | os.O_WRONLY)
    )


def test_everything_under_the_folder_goes(tmp_path: Path) -> None:
    staging = tmp_path / ".staging"
    _tree(staging)
    remove_tree(str(staging), {})
    assert not staging.exists() and os.listdir(tmp_path) == []


def test_a_folder_that_is_not_there_is_fine(tmp_path: Path) -> None:
    remove_tree(str(tmp_path / "absent"), {})
    with pytest.raises(FileNotFoundError):
        remove_local_tree(str(tmp_path / "absent"))


def test_links_are_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "sub" / "keep2.txt").write_text("keep")
    staging = tmp_path / ".staging"
    _tree(staging)
    (staging / "job" / "to-folder").symlink_to(outside, target_is_directory=True)
    (staging / "job" / "to-file").symlink_to(outside / "keep.txt")
    (staging / "job" / "dangling").symlink_to(tmp_path / "nothing")
    remove_tree(str(staging), {})
    assert not staging.exists()
    assert (outside / "keep.txt").read_text() == "keep" and (outside / "sub" / "keep2.txt").exists()
    linked = tmp_path / "linked-staging"  # the folder itself a link: the link goes, its target stays
    linked.symlink_to(outside, target_is_directory=True)
    remove_tree(str(linked), {})
    assert not os.path.lexists(linked) and (outside / "sub" / "keep2.txt").exists()


#: In a fresh process (no other thread allocating while it is traced): the peak of Python's allocations while
#: `remove_tree` removes a folder of `count` empty files.
REMOVE_PROBE = r"""
import os, sys, tracemalloc
from airflow_parallel_run.core.storage import remove_tree
staging, count = sys.argv[1], int(sys.argv[2])
folder = os.path.join(os.fsencode(staging), b"job")
os.makedirs(folder)
for i in range(count):
    os.close(os.open(os.path.join(folder, b"mb%07d-a1-run.part" % i), os.O_CREAT | os.O_WRONLY))
tracemalloc.start()
remove_tree(staging, {})
print(tracemalloc.get_traced_memory()[1])
assert not os.path.exists(staging)
"""


def test_memory_does_not_grow_with_the_entries(tmp_path: Path) -> None:
    peaks = {}
    for count in (200, 20_000):
        done = subprocess.run(
            [sys.executable, "-c", REMOVE_PROBE, str(tmp_path / f"staging-{count}"), str(count)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[count] = int(done.stdout.split()[-1])
    # fsspec's rm: about 2.5 MB for 20,000 paths (every path listed first); removed as read: a few KB
    assert peaks[20_000] < 100_000 and peaks[20_000] < peaks[200] + 50_000, peaks


def test_an_error_leaves_no_descriptor_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = tmp_path / ".staging"
    _tree(staging)
    unlink = os.unlink

    def refuse_the_deep_one(path: str, *, dir_fd: int | None = None) -> None:
        if path == "deep.part":
            raise PermissionError(13, "refused", path)
        unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", refuse_the_deep_one)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PermissionError):
        remove_local_tree(str(staging))
    assert len(os.listdir("/proc/self/fd")) == before
    assert (staging / "job" / "a" / "b" / "deep.part").exists()

"""Scratch folders of processes that died are removed by the next process that makes one of their
family; folders of live processes, and anything that is not provably ours and abandoned, stay.

The owners here are real processes (a Python child that makes its folders and then waits), killed with
SIGKILL as the OOM killer or a killed Airflow task would kill them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_parallel_run.core.owned_folders import (
    SharedFolder,
    owned_folder,
    owner_file,
    remove_owned,
    sweep,
    sweep_shared,
)

OWNER = """
import sys, time
from airflow_parallel_run.core.owned_folders import SharedFolder, owned_folder
parent, kind = sys.argv[1], sys.argv[2]
if kind == "owned":
    print(owned_folder(parent, "apr-plan-job1-", family="apr-plan-"), flush=True)
else:
    print(SharedFolder(parent, "job1").join(), flush=True)
sys.stdin.read()  # until the test closes it or kills this process
"""


class Owner:
    """A child process holding a folder of `kind` ("owned" or "shared") in `parent`."""

    def __init__(self, parent: Path, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OWNER, str(parent), kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.folder = Path(self.proc.stdout.readline().strip())
        assert self.folder.is_dir(), self.folder

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def end(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def owners() -> Iterator[list[Owner]]:
    started: list[Owner] = []
    yield started
    for owner in started:
        owner.end()


def test_a_killed_process_folders_go_with_the_next_folder_of_their_family(
    tmp_path: Path, owners: list[Owner]
) -> None:
    dead, alive = Owner(tmp_path, "owned"), Owner(tmp_path, "owned")
    owners += [dead, alive]
    (dead.folder / "plan.bin").write_bytes(b"x" * 1000)
    dead.kill()
    assert dead.folder.is_dir(), "nothing removes a folder until a process makes one of its family"

    mine = owned_folder(str(tmp_path), "apr-plan-job2-", family="apr-plan-")
    assert not dead.folder.exists() and not Path(owner_file(str(dead.folder))).exists()
    assert alive.folder.is_dir(), "a live process's folder stays"
    assert Path(mine).is_dir() and os.listdir(mine) == [], "the owner file is beside the folder, not in it"
    assert oct(os.stat(mine).st_mode & 0o777) == "0o700"
    assert sweep(str(tmp_path), "apr-plan-") == [], "this process's own folder is not taken by its sweep"

    remove_owned(mine)
    assert not Path(mine).exists() and not Path(owner_file(mine)).exists()
    alive.end()
    assert sweep(str(tmp_path), "apr-plan-") == [str(alive.folder)]
    assert sorted(os.listdir(tmp_path)) == []


def test_what_is_not_provably_an_abandoned_folder_of_ours_stays(tmp_path: Path, owners: list[Owner]) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    no_owner = tmp_path / "apr-plan-old"  # made before owner files, or its owner died while making it
    no_owner.mkdir()
    (tmp_path / "apr-plan-link").symlink_to(target)
    Path(owner_file(str(tmp_path / "apr-plan-link"))).write_text("")
    (tmp_path / "apr-plan-file").write_text("a file")
    Path(owner_file(str(tmp_path / "apr-plan-file"))).write_text("")
    linked_owner = tmp_path / "apr-plan-linked-owner"  # an owner file that is a symlink
    linked_owner.mkdir()
    Path(owner_file(str(linked_owner))).symlink_to(target / "keep.txt")
    other_family = Owner(tmp_path, "owned")
    owners.append(other_family)
    other_family.kill()

    assert sweep(str(tmp_path), "apr-commits-") == [], "another family's folders are not looked at"
    assert sweep(str(tmp_path), "apr-plan-") == [str(other_family.folder)]
    assert (
        no_owner.is_dir()
        and (tmp_path / "apr-plan-link").is_symlink()
        and (tmp_path / "apr-plan-file").exists()
    )
    assert linked_owner.is_dir() and (target / "keep.txt").read_text() == "keep"


def test_a_shared_folder_is_removed_by_its_last_user_after_its_upload(
    tmp_path: Path, owners: list[Owner]
) -> None:
    other = Owner(tmp_path, "shared")
    owners.append(other)
    mine = SharedFolder(str(tmp_path), "job1")
    assert Path(mine.join()) == other.folder
    (other.folder / "node.txt").write_text("lines")
    uploads: list[list[str]] = []

    assert mine.leave(lambda folder: uploads.append(sorted(os.listdir(folder)))) is False
    assert uploads == [["node.txt"]], "the upload sees the folder, and nothing of ours is in it"
    assert other.folder.is_dir(), "another process still uses it"

    again = SharedFolder(str(tmp_path), "job1")
    again.join()
    other.kill()
    assert again.leave(lambda folder: uploads.append(sorted(os.listdir(folder)))) is True
    assert uploads[-1] == ["node.txt"] and sorted(os.listdir(tmp_path)) == [], "folder, owner and mutex gone"

    rejoined = SharedFolder(str(tmp_path), "job1")
    assert Path(rejoined.join()).is_dir(), "a later user makes it again"
    assert rejoined.leave(remove=False) is False and Path(rejoined.folder).is_dir()


def test_shared_folders_whose_users_all_died_are_swept(tmp_path: Path, owners: list[Owner]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dead, alive = Owner(tmp_path / "a", "shared"), Owner(tmp_path / "b", "shared")
    owners += [dead, alive]
    for folder in (tmp_path / "a", tmp_path / "b"):
        (folder / "job2").mkdir()  # no owner file: not ours to judge
    dead.kill()
    assert sweep_shared(str(tmp_path / "a")) == [str(dead.folder)]
    assert sweep_shared(str(tmp_path / "b")) == []
    assert sorted(os.listdir(tmp_path / "a")) == ["job2"]
    assert alive.folder.is_dir() and (tmp_path / "b" / "job2").is_dir()


def test_a_file_system_without_flock_gets_folders_without_owner_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lustre without `-o flock` and some FUSE mounts answer flock with ENOLCK or EOPNOTSUPP: a job there
    worked before owner files and must still work, its folders removed at the end and never swept."""
    import errno
    import fcntl

    real_flock = fcntl.flock

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = owned_folder(str(tmp_path), "apr-plan-job1-", family="apr-plan-")
    assert os.path.isdir(folder)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(folder)], "no owner file, staged or not"
    shared = SharedFolder(str(tmp_path / "logs"), "job1")
    (tmp_path / "logs").mkdir()
    assert shared.join() == str(tmp_path / "logs" / "job1")
    uploads: list[str] = []
    assert shared.leave(uploads.append) is False
    assert uploads == [shared.folder], "the upload still runs"
    assert os.path.isdir(shared.folder), "not removed: without locks nobody knows it is the last user"

    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert sweep(str(tmp_path), "apr-plan-") == [], "a folder without an owner file is never swept"
    remove_owned(folder)
    assert not os.path.exists(folder)

    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):  # any other failure is not hidden
        owned_folder(str(tmp_path), "apr-plan-job2-", family="apr-plan-")
    assert [n for n in os.listdir(tmp_path) if n.startswith("apr-plan-job2-")] == [], "nothing left by it"


# A child that makes one folder and stops at a step of the making: killed there (SIGKILL, as the OOM
# killer would), or paused until the test lets it go on.
MAKER = """
import fcntl, os, signal, sys
from airflow_parallel_run.core import owned_folders
parent, step, action = sys.argv[1], sys.argv[2], sys.argv[3]

def stop_here():
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print("paused", flush=True)
    sys.stdin.readline()

real_flock, real_rename, real_mkdir = fcntl.flock, os.rename, os.mkdir
done = set()

def once(name):
    if step == name and name not in done:
        done.add(name)
        stop_here()

def flock(fd, op):
    if op & fcntl.LOCK_EX:
        once("lock")
    return real_flock(fd, op)

def rename(src, dst, *args, **kwargs):
    once("name")
    return real_rename(src, dst, *args, **kwargs)

def mkdir(path, *args, **kwargs):
    once("folder")
    real_mkdir(path, *args, **kwargs)
    once("made")

fcntl.flock, os.rename, os.mkdir = flock, rename, mkdir
folder = owned_folders.owned_folder(parent, "apr-plan-job1-", family="apr-plan-")
print(folder, flush=True)
sys.stdin.readline()
"""

STEPS = ["lock", "name", "folder", "made"]  # before the lock, the rename, the folder; after the folder


def _maker(parent: Path, step: str, action: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", MAKER, str(parent), step, action],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("step", STEPS)
def test_a_process_killed_while_making_its_folder_leaves_nothing_the_sweep_keeps(
    tmp_path: Path, step: str
) -> None:
    """Before, the folder came first and its owner file after it: a process killed in between left a folder
    without owner file, which no sweep may remove (it cannot tell it from one being made), for good."""
    maker = _maker(tmp_path, step, "kill")
    maker.communicate(timeout=60)
    assert maker.returncode == -signal.SIGKILL
    sweep(str(tmp_path), "apr-plan-")
    assert os.listdir(tmp_path) == [], f"killed before {step}: left behind"


@pytest.mark.parametrize("step", STEPS)
def test_a_sweep_while_a_live_process_makes_its_folder_leaves_it_a_folder_it_owns(
    tmp_path: Path, step: str
) -> None:
    """A sweep at any step of another process's making: the maker still ends with its folder and a locked
    owner file beside it (a staged file a sweep took before its lock makes the maker take another name)."""
    maker = _maker(tmp_path, step, "pause")
    assert maker.stdin is not None and maker.stdout is not None
    try:
        assert maker.stdout.readline().strip() == "paused"
        sweep(str(tmp_path), "apr-plan-")
        maker.stdin.write("\n")
        maker.stdin.flush()
        folder = Path(maker.stdout.readline().strip())
        assert folder.is_dir() and Path(owner_file(str(folder))).is_file(), os.listdir(tmp_path)
        assert sweep(str(tmp_path), "apr-plan-") == [] and folder.is_dir(), (
            "a live process's folder was taken"
        )
        left = sorted(os.listdir(tmp_path))
        assert left == sorted([folder.name, f"{folder.name}.owner"]), left
    finally:
        maker.kill()
        maker.wait()
    assert sweep(str(tmp_path), "apr-plan-") == [str(folder)]
    assert os.listdir(tmp_path) == []


LEAVER = """
import os, shutil, signal, sys
from airflow_parallel_run.core.owned_folders import SharedFolder
real_rmtree = shutil.rmtree

def rmtree(path, *args, **kwargs):
    real_rmtree(path, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the folder is gone, its owner and mutex files not yet

shared = SharedFolder(sys.argv[1], "job1")
shared.join()
shutil.rmtree = rmtree
shared.leave()
"""


def test_the_files_of_a_shared_folder_whose_last_user_was_killed_while_leaving_are_swept(
    tmp_path: Path,
) -> None:
    """Before, only folders were looked at: the owner and mutex files of a removed folder stayed for good."""
    leaver = subprocess.run([sys.executable, "-c", LEAVER, str(tmp_path)], check=False)
    assert leaver.returncode == -signal.SIGKILL
    assert sorted(os.listdir(tmp_path)) == ["job1.lock", "job1.owner"]
    held = SharedFolder(str(tmp_path), "job2")
    held.join()
    Path(held.folder).rmdir()  # a live user's files without its folder: held, so they stay
    try:
        assert sweep_shared(str(tmp_path)) == []
        assert sorted(os.listdir(tmp_path)) == ["job2.lock", "job2.owner"]
    finally:
        held.leave()

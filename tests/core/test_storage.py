"""`core/storage.py`: one answer to "is this local?" for every kind of path and URL the engine takes."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pytest

from airflow_parallel_run.core import storage

CASES = [
    # url, local?, protocol
    ("/data/in", True, "file"),
    ("data/in", True, "file"),
    ("~/in", True, "file"),
    ("file:///data/in", True, "file"),
    ("local:///data/in", True, "local"),
    ("memory://bucket/in", False, "memory"),
    ("s3://bucket/in", False, "s3"),
    ("S3://bucket/in", False, "s3"),
    ("simplecache::s3://bucket/in", False, "simplecache::s3"),
]


@pytest.mark.parametrize(("url", "local", "protocol"), CASES)
def test_protocol_and_locality(url: str, local: bool, protocol: str) -> None:
    assert storage.protocol(url) == protocol
    assert storage.is_local(url) is local


def test_local_protocol_urls_are_local_everywhere() -> None:
    """A `local://` URL is local for the URL helpers as for fsspec (its file system says so too)."""
    fs, _ = fsspec.core.url_to_fs("local:///tmp")
    assert storage.is_local(fs) and storage.is_local("local:///tmp")
    assert not storage.is_local(fsspec.filesystem("memory"))


def test_local_path_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.local_path("file:///a/b") == "/a/b"
    assert storage.local_path("local:///a/b") == "/a/b"
    assert storage.local_path("/a/b") == "/a/b"
    assert storage.local_path("rel/x") == "rel/x"
    with pytest.raises(ValueError, match="not a local path"):
        storage.local_path("s3://bucket/x")
    assert storage.absolute("rel/x/") == os.path.join(str(tmp_path), "rel", "x")
    assert storage.absolute("file:///a/b/") == "/a/b"
    assert storage.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert storage.absolute("s3://bucket/x/") == "s3://bucket/x"
    assert storage.absolute("/") == "/"


def test_join_and_to_url() -> None:
    assert storage.join("s3://b/out/", "logs", "sys") == "s3://b/out/logs/sys"
    assert storage.join("/out", "logs") == "/out/logs"
    memory = fsspec.filesystem("memory")
    assert storage.to_url(memory, "/b/x") == "memory:///b/x"
    local, _ = fsspec.core.url_to_fs("/tmp")
    assert storage.to_url(local, "/tmp/x") == "/tmp/x"


@pytest.mark.parametrize("scheme", ["", "file://", "memory://"])
def test_write_read_and_remove(tmp_path: Path, scheme: str) -> None:
    base = f"memory://apr-storage-{os.getpid()}" if scheme == "memory://" else f"{scheme}{tmp_path}"
    url = storage.join(base, "tree", "a", "file.bin")
    storage.write_atomic(url, b"one", {})
    storage.write_atomic(url, b"two", {})
    assert storage.read_bytes(url, {}) == b"two"
    if scheme != "memory://":
        assert os.listdir(tmp_path / "tree" / "a") == ["file.bin"]  # no temp file left
    storage.remove_tree(storage.join(base, "tree"), {})
    storage.remove_tree(storage.join(base, "tree"), {})  # gone already: fine
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(url, {})


def test_upload_folder(tmp_path: Path) -> None:
    source = tmp_path / "logs"
    (source / "sys").mkdir(parents=True)
    (source / "sys" / "a.txt").write_text("a")
    (source / "b.txt").write_text("b")
    target = f"memory://apr-upload-{os.getpid()}/out/logs"
    storage.upload_folder(str(source), target, {})
    fs = fsspec.filesystem("memory")
    assert fs.cat_file(f"{target}/sys/a.txt") == b"a"
    assert fs.cat_file(f"{target}/b.txt") == b"b"
    fs.rm(f"memory://apr-upload-{os.getpid()}", recursive=True)

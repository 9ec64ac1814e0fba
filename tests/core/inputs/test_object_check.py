"""`core/inputs/object_check.py` on its own: which downloads are checked with no request to the store, which
ask it again, and what each finding says (the end-to-end cases, on a real S3 server, are in
tests/cluster/test_s3_input_changed.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core.errors import DataChangedError
from airflow_parallel_run.core.inputs.object_check import check_download, check_object
from airflow_parallel_run.core.minibatch import FileRef


class Store:
    """An object store's metadata calls, counted: `info` answers with `etag` (None: the object is gone)."""

    def __init__(self, etag: str | None) -> None:
        self.etag, self.infos, self.invalidated = etag, 0, 0

    def invalidate_cache(self, path: str) -> None:
        self.invalidated += 1

    def info(self, path: str) -> dict[str, Any]:
        self.infos += 1
        if self.etag is None:
            raise FileNotFoundError(path)
        return {"name": path, "size": 3, "ETag": f'"{self.etag}"'}


def _download(tmp_path: Path, data: bytes) -> str:
    local = tmp_path / "x.txt"
    local.write_bytes(data)
    return str(local)


def test_a_download_whose_md5_is_its_planned_etag_asks_the_store_nothing(tmp_path: Path) -> None:
    md5 = hashlib.md5(b"abc").hexdigest()
    store = Store(etag="something-else")  # would fail the check if it were asked
    ref = FileRef("s3://b/x.txt", 3, f"ETag:{md5}")
    check_download(store, "b/x.txt", ref, _download(tmp_path, b"abc"), 3, mini_batch=7)
    assert store.infos == 0


def test_a_download_of_another_size_fails_without_asking(tmp_path: Path) -> None:
    store = Store(etag="e")
    ref = FileRef("s3://b/x.txt", 4, "ETag:e")
    with pytest.raises(
        DataChangedError, match=r"s3://b/x.txt \(mini-batch 7\).*4 bytes when planned, 3 read"
    ):
        check_download(store, "b/x.txt", ref, _download(tmp_path, b"abc"), 3, mini_batch=7)
    assert store.infos == 0


@pytest.mark.parametrize("planned", ["ETag:0123-2", "generation:17", f"ETag:{'0' * 32}"])
def test_an_identity_the_bytes_do_not_prove_is_asked_again(tmp_path: Path, planned: str) -> None:
    """A multipart ETag, another store's identity, and a 32-digit ETag that is not the MD5 of the bytes
    (KMS-encrypted objects have those) are asked again: the same identity passes, another fails."""
    kind, value = planned.split(":")
    same = Store(etag=None) if kind != "ETag" else Store(etag=value)
    if kind != "ETag":
        same.info = lambda path: {"name": path, "size": 3, kind: value}  # type: ignore[method-assign]
    check_download(same, "b/x.txt", FileRef("s3://b/x.txt", 3, planned), _download(tmp_path, b"abc"), 3, 1)
    assert same.invalidated == 1, "the listing cache is bypassed"

    other = Store(etag="changed")
    with pytest.raises(DataChangedError, match="changed after the job fingerprinted it") as caught:
        check_download(
            other, "b/x.txt", FileRef("s3://b/x.txt", 3, planned), _download(tmp_path, b"abc"), 3, 1
        )
    assert planned in str(caught.value) and "ETag:changed now" in str(caught.value)
    assert other.infos == 1


def test_an_object_deleted_after_planning_fails_and_one_without_identity_is_not_asked() -> None:
    with pytest.raises(DataChangedError, match="deleted after it was planned"):
        check_object(Store(etag=None), "b/x.csv", "s3://b/x.csv", "ETag:e", "bytes [0, 10)")
    nothing = Store(etag="e")
    check_object(nothing, "b/x.csv", "https://h/x.csv", "", "bytes [0, 10)")  # HTTP lists no identity
    assert nothing.infos == 0


def test_the_field_listed_at_planning_is_the_one_compared() -> None:
    """A store whose metadata call gives more fields than its listing (an ETag beside the generation the
    listing gave): the listed field is compared, not the first of the metadata's."""
    store = Store(etag="not-listed")
    store.info = lambda path: {"name": path, "size": 3, "ETag": "x", "generation": 17}  # type: ignore[method-assign]
    check_object(store, "b/x.csv", "gs://b/x.csv", "generation:17", "bytes [0, 10)")
    with pytest.raises(DataChangedError, match="generation:16 when planned, generation:17 now"):
        check_object(store, "b/x.csv", "gs://b/x.csv", "generation:16", "bytes [0, 10)")

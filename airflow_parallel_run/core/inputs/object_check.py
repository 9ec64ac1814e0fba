"""Whether an object-store input a worker read is the object the job planned.

Why: a mini-batch's cache key names each object-store input by the content identity its store listed at
planning (ETag, md5, generation: `listing.store_identity`). An object overwritten after that and before its
mini-batch read it would be read with other bytes under the old key: run() would get them, its result would
be output and cached as the planned object's, and a tabular slice would be cut at byte offsets planned in
another file (rows split or skipped, with "succeeded"). Local files are checked as attempts commit
(core/reuse/reuse.py: `Reuse.check_inputs`); objects are checked here, where they are read, before run().

How, cheapest first: a downloaded file whose size is not the listed size changed; an S3 ETag of a single-part
upload is the MD5 of the bytes, so a download whose MD5 is that ETag is the planned object with no request at
all; otherwise (multipart or KMS ETags, other stores' identities, tabular ranges) the object's identity is
asked again after the read (one metadata request, the file system's listing cache bypassed), and a different
one fails the mini-batch with `DataChangedError` (not retried: another try would read the changed object
under the same key). Not told: an object changed and put back with its old identity during the read; an
object of a store that lists no content identity (HTTP) is checked by its size only.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..errors import DataChangedError
from ..minibatch import FileRef
from .listing import store_identity

#: A plain S3 ETag: the MD5 of the object's bytes when it was uploaded in one part without KMS encryption.
_MD5_ETAG = re.compile(r"(?:ETag|etag):([0-9a-fA-F]{32})")
#: Largest download hashed to compare with its ETag (MD5 runs at about 600 MB/s: 16 MiB is about one
#: metadata request's round trip); a larger one asks the store instead.
MD5_CHECK_MAX_BYTES = 16 * 1024 * 1024


def check_download(fs: Any, path: str, ref: FileRef, local: str, size: int, mini_batch: int) -> None:
    """`DataChangedError` unless the file downloaded to `local` (`size` bytes) from `path` on `fs` is the
    object `ref` names (its listed size and content identity)."""
    if ref.size is not None and size != ref.size:
        raise _changed(ref.url, f"mini-batch {mini_batch}", f"{ref.size} bytes when planned, {size} read")
    if not ref.identity:
        return
    md5 = _MD5_ETAG.fullmatch(ref.identity)
    if md5 and size <= MD5_CHECK_MAX_BYTES and _md5_of(local) == md5.group(1).lower():
        return  # the bytes read are those the ETag names
    check_object(fs, path, ref.url, ref.identity, f"mini-batch {mini_batch}")


def check_object(fs: Any, path: str, url: str, identity: str, read: str) -> None:
    """`DataChangedError` unless the object at `path` on `fs` still has the content identity `identity`
    (as listed at planning; '' when its store lists none: nothing to compare). Called after a read (`read`
    says which: "mini-batch 3", "bytes [0, 4096)"): the bytes read are the planned ones unless the object
    changed and changed back during it."""
    if not identity:
        return
    fs.invalidate_cache(path)  # a listing cached in this process would answer with the planned identity
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise _changed(url, read, "deleted after it was planned") from None
    # the field listed at planning (a store's metadata call may hold more fields than its listing)
    kind = identity.partition(":")[0]
    now = f"{kind}:{str(info[kind]).strip(chr(34))}" if info.get(kind) else store_identity(info)
    if now != identity:
        raise _changed(url, read, f"{identity} when planned, {now or 'no identity'} now")


def _changed(url: str, read: str, detail: str) -> DataChangedError:
    return DataChangedError(
        f"input file {url} ({read}) changed after the job fingerprinted it ({detail}): run() would get other "
        "bytes than those the mini-batch's cache key names, so it fails without a retry (another try would read "
        "the changed object under the same key); run the job again to process the files as they are now"
    )


def _md5_of(local: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(local, "rb", buffering=0) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

"""What a mini-batch's local input files are on disk, as (size, mtime_ns, inode): a digest of them taken
as the job fingerprinted the files, and another taken where run() ran, right after it returned.

Why: a result is cached and output under a key that names its files' bytes; a file changed after it was
fingerprinted may have been read with other bytes (core/reuse/reuse.py: `Reuse.check_inputs`). Equal
digests prove nothing moved, with no stat and no memo query on the driver's loop for each commit (each
system call there hands the GIL to the embedded cluster's threads, about half a millisecond in a busy job);
different ones, or none, send the driver to look at the files itself. Light on imports: the entry-script
process uses it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable

from ..minibatch import MiniBatch
from ..storage import is_local, local_path

#: (size, mtime_ns, inode) of a file.
Identity = tuple[int, int, int]


def local_paths(mb: MiniBatch) -> dict[str, str]:
    """The mini-batch's units that are local files (files, or the files its slices cut), URL -> path."""
    paths: dict[str, str] = {}
    if not (mb.files or mb.slices):
        return paths
    for url in mb.units():
        if "://" not in url:  # the local listing's URLs are plain paths
            paths[url] = url
        elif is_local(url):
            paths[url] = local_path(url)
    return paths


def identity_digest(identities: Iterable[Identity]) -> int:
    """A 64-bit digest of identities in order; never 0 (0 means "not known")."""
    digest = hashlib.blake2b(digest_size=8)
    for size, mtime_ns, inode in identities:
        digest.update(b"%d:%d:%d;" % (size, mtime_ns, inode))
    return int.from_bytes(digest.digest(), "little") or 1


def mini_batch_identity(paths: Iterable[str], identity_of: Callable[[str], Identity | None]) -> int:
    """The digest of the identities of `paths` (a mini-batch's `local_paths`) as `identity_of` gives them;
    0 when there are none or one is not known."""
    identities = []
    for path in paths:
        identity = identity_of(path)
        if identity is None:
            return 0
        identities.append(identity)
    return identity_digest(identities) if identities else 0


def _stat(path: str) -> Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def current_identity(mb: MiniBatch) -> int:
    """The digest of the mini-batch's local files as they are now; 0 when it has none or one is gone."""
    return mini_batch_identity(local_paths(mb).values(), _stat)

"""Files an entry script writes to `EntryScript().output_dir`: whose they are, and getting them out.

Which mini-batch wrote a file has to be known, or the reuse cache cannot keep those files with the
mini-batch's entry (a re-run into a new output folder would lose them) and a failed attempt's
half-written files would land in the output. Processes write concurrently, so a shared folder
cannot say who wrote what. Instead:

- during `run()`, `output_dir` (and `AZUREML_BI_OUTPUT_PATH`) is a folder of that attempt alone,
  `<staging>/files/mb<index>-a<attempt>-<run>/` (each run of a Dask task has its own `<run>`, so a
  lost worker's task run again never writes where the run the driver booked did); what is in it when
  `run()` returns is the mini-batch's;
- outside `run()` (module import, `init()`, `shutdown()`) it is a folder of that entry-script
  process alone, `<staging>/files/init-<node>-<process>/`. A script that keeps that path from
  `init()` and writes there during `run()` is still attributed exactly, because only one `run()`
  at a time happens in a process: files that appear there during a `run()` move into that
  attempt's folder. A file that existed before and changed during `run()` (one file appended to
  by many mini-batches) belongs to no single mini-batch, so that mini-batch is not cached;
- the driver moves the committed attempt's files into the output folder (other attempts' files
  are dropped with the staging area), stores them in the cache entry with their digests, and
  copies them back from the cache when the mini-batch is reused; what is left in the per-process
  folders at the end of the job is moved into the output folder too (not cached);
- a name that several mini-batches or processes wrote is concatenated in the output, in the order
  they were committed, as appends to one shared file would have been (with a warning: names
  derived from the input, as in Azure's examples, never meet).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import fsspec

from ..storage import is_local, local_path

Snapshot = dict[str, tuple[Any, ...]]


def attempt_folder(staging_url: str, index: int, attempt: int, run: str) -> str:
    """One run's own output_dir folder (`run`: see `JobSpec.files_url`)."""
    return f"{staging_url}/files/mb{index:08d}-a{attempt}-{run}"


def process_folder(staging_url: str, node: str, process: str) -> str:
    return f"{staging_url}/files/init-{node}-{process}"


def snapshot(url: str, storage_options: Mapping[str, Any]) -> Snapshot:
    """Relative name -> (size, mtime or store identity) of every file under `url` ({} when absent)."""
    if is_local(url):
        root = local_path(url)
        found: Snapshot = {}
        for folder, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                found[rel] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        return found
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options))
    if not fs.exists(path):
        return {}
    return {
        posixpath.relpath(name, path): (
            info.get("size"),
            str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")),
        )
        for name, info in fs.find(path, detail=True).items()
    }


def list_files(url: str, storage_options: Mapping[str, Any]) -> list[str]:
    return sorted(snapshot(url, storage_options))


def drop_if_empty(url: str) -> None:
    """Removes an attempt's local output_dir folder that run() left empty (most do): one `rmdir` in the
    entry-script process now, instead of a folder per mini-batch for the driver to walk and remove with
    .staging at the job's end (100,000 of them took minutes). A folder that is not empty stays."""
    if is_local(url):
        # not empty (a sub-folder run() made), or gone: left to the .staging removal
        with contextlib.suppress(OSError):
            os.rmdir(local_path(url))


def publish_files(
    source_root: str,
    target_root: str,
    names: Sequence[str],
    storage_options: Mapping[str, Any],
    *,
    move: bool,
    append: Collection[str] = (),
) -> None:
    """Moves (or copies) `names` from `source_root` to the same relative names under `target_root`.

    A name in `append` is added to the end of the target (another mini-batch or process of the job
    wrote that name already: as appends to one shared file would have been); any other name appears
    whole (a temp name, then a rename), replacing a file of that name.
    """
    options = dict(storage_options)
    for name in names:
        source, target = f"{source_root.rstrip('/')}/{name}", f"{target_root.rstrip('/')}/{name}"
        if is_local(source) and is_local(target):
            source, target = local_path(source), local_path(target)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if name in append and os.path.exists(target):
                with open(source, "rb") as src, open(target, "ab") as dst:
                    shutil.copyfileobj(src, dst)
                if move:
                    os.remove(source)
            elif move:
                os.replace(source, target)
            else:
                temporary = f"{target}.apr-copy"
                shutil.copyfile(source, temporary)
                os.replace(temporary, target)
            continue
        source_fs, source_path = fsspec.core.url_to_fs(source, **options)
        target_fs, target_path = fsspec.core.url_to_fs(target, **options)
        if name in append and target_fs.exists(target_path):
            target_fs.pipe_file(
                target_path, target_fs.cat_file(target_path) + source_fs.cat_file(source_path)
            )
            if move:
                source_fs.rm(source_path)
        elif source_fs is target_fs:
            (source_fs.mv if move else source_fs.copy)(source_path, target_path)
        else:
            target_fs.pipe_file(target_path, source_fs.cat_file(source_path))
            if move:
                source_fs.rm(source_path)


def collect_leftovers(
    staging_url: str, target_root: str, storage_options: Mapping[str, Any], published: set[str]
) -> list[str]:
    """Moves what the entry-script processes left in their own folders (written outside run(), or
    appended to across runs) into the output folder; a name the job wrote already is appended to.
    Adds the names to `published` and returns those that were appended to."""
    files_root = f"{staging_url}/files"
    appended: list[str] = []
    for rel in list_files(files_root, storage_options):
        folder, _, name = rel.partition("/")
        if folder.startswith("init-") and name:
            if name in published:
                appended.append(name)
            publish_files(
                f"{files_root}/{folder}", target_root, [name], storage_options, move=True, append=published
            )
            published.add(name)
    return appended


class OutputDirWatch:
    """Inside an entry-script process: attributes the files written during one run() to its attempt."""

    def __init__(self, process_url: str, storage_options: Mapping[str, Any]) -> None:
        self.process_url = process_url
        self.storage_options = dict(storage_options)
        self._before: Snapshot = {}

    def start(self) -> None:
        """Before run(): what the process folder holds now."""
        self._before = snapshot(self.process_url, self.storage_options)

    def finish(self, attempt_url: str) -> tuple[list[str], str]:
        """After run(): moves files new in the process folder into the attempt's folder; returns
        (every file of the attempt, why the attempt cannot be cached or "")."""
        after = snapshot(self.process_url, self.storage_options)
        new = sorted(name for name in after if name not in self._before)
        changed = sorted(name for name in after if name in self._before and after[name] != self._before[name])
        if new:
            publish_files(self.process_url, attempt_url, new, self.storage_options, move=True)
        reason = ""
        if changed:
            reason = (
                f"run() changed {changed[0]}"
                + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else "")
                + " in output_dir, a file that existed before it ran, so the file belongs to no single "
                "mini-batch"
            )
        return list_files(attempt_url, self.storage_options), reason


class FilePublisher:
    """In the driver: moves each committed attempt's output_dir files into the output folder (copies them
    back from the cache for reused mini-batches), and at the end what the processes left in their own
    folders. Remembers which mini-batch wrote each name, so that a name written twice is appended to, with
    a warning (`warn`), as appends to one shared file would have been."""

    def __init__(
        self, output_url: str, storage_options: Mapping[str, Any], warn: Callable[[str], None]
    ) -> None:
        self.output_url = output_url
        self.storage_options = dict(storage_options)
        self.warn = warn
        self.published: dict[str, int] = {}  # output_dir file -> the mini-batch that wrote it

    def publish(self, index: int, source: str, names: Sequence[str], *, move: bool) -> None:
        """Moves (copies, from the cache) mini-batch `index`'s files under `source` into the output."""
        shared = {name for name in names if self.published.get(name, index) != index}
        for name in sorted(shared):
            self.warn(
                f"mini-batches {self.published[name]} and {index} both wrote {name} to output_dir; "
                "the output holds both, one after the other"
            )
        publish_files(source, self.output_url, names, self.storage_options, move=move, append=shared)
        for name in names:
            self.published.setdefault(name, index)

    def restore(self, index: int, meta: Mapping[str, Any]) -> str | None:
        """Copies the files a reused cache entry holds into the output; why it could not, or None."""
        try:
            self.publish(index, str(meta["files_url"]), [f["name"] for f in meta["files"]], move=False)
        except OSError as exc:
            return f"its files cannot be copied to the output ({type(exc).__name__}: {exc})"
        return None

    def collect_leftovers(self, staging_url: str) -> str | None:
        """Files the entry-script processes wrote outside run() go to the output; a line for the master
        log when there is something to say."""
        try:
            published = set(self.published)
            appended = collect_leftovers(staging_url, self.output_url, self.storage_options, published)
        except OSError as exc:
            return f"could not move the files written outside run(): {type(exc).__name__}: {exc}"
        if appended:
            return (
                "output_dir files written by several entry-script processes were concatenated: "
                f"{', '.join(sorted(set(appended))[:5])}"
            )
        return None

"""A job's view of the reuse cache: the key of each planned mini-batch, what the cache holds for them, why
the others run (the reuse line), and storing each committed attempt at once.

Reused results still join the job's one output schema (a cached part that cannot is run again instead)
and bring back the files their scripts wrote to output_dir: both are the output's business, so `find`
takes them as callbacks (core/output/sink.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ..attempt import AttemptResult, AttemptStatus
from ..config import ParallelRunConfig
from ..inputs.fingerprint import Fingerprinter
from ..inputs.identity import Identity, local_paths, mini_batch_identity
from ..inputs.side_check import SideInput, planned
from ..inputs.source import Dataset
from ..minibatch import MiniBatch
from ..output.schema import schema_from_text, schema_to_text
from ..plan import Plan
from ..plan.store import DigestColumn, FingerprintSpill, KeyColumn, PlanStore
from ..storage import is_local, local_path
from ..worker.messages import PartialRun
from ..worker.rerun_items import sha256_of
from .cache import MiniBatchCache, memo_path
from .components import component_digests, digest32, explain_change, explain_inputs, job_components
from .key import key_fields, mini_batch_key


def _fingerprints_digest(fingerprints: Mapping[str, str], units: Sequence[str]) -> int:
    """A 64-bit digest of the units' fingerprints in order (xxh3: about 0.3 us for ten)."""
    return xxhash.xxh3_64_intdigest(
        "\0".join([fingerprints[unit] for unit in units]).encode("utf-8", "surrogatepass")
    )


def _some(urls: Sequence[str]) -> str:
    """Up to three URLs, and how many more."""
    return ", ".join(urls[:3]) + (f" (+{len(urls) - 3} more)" if len(urls) > 3 else "")


#: Schema admission of reused results: {index: result} -> those that join the job's schema.
Admit = Callable[[Mapping[int, AttemptResult]], dict[int, AttemptResult]]
#: Copies a reused entry's output_dir files into the output: (index, entry metadata) -> why it failed, or None.
Restore = Callable[[int, Mapping[str, Any]], "str | None"]


@dataclass
class ReuseOutcome:
    """What `Reuse.find` found: the reused results, damaged entries (as warnings), and the reuse line."""

    hits: dict[int, AttemptResult]
    warnings: list[str] = field(default_factory=list)
    line: str = ""


class Reuse:
    """The keys of a job's mini-batches in the cache, and the job's record there (its signature's manifest:
    component digests and input fingerprints, for the next run's reuse line)."""

    def __init__(
        self,
        config: ParallelRunConfig,
        inputs: Sequence[Dataset],
        plan: Plan | None,
        code: tuple[Mapping[str, str], str],
        arguments: Sequence[str],
        side_inputs: Sequence[str],
        cache: MiniBatchCache,
        *,
        allow_reuse: bool,
        kind: str | None = None,
        store: PlanStore | None = None,
    ) -> None:
        """`plan` None: the plan comes later, a block at a time (`add`), and `kind` says what it holds.
        `store`: where those mini-batches and their fingerprints are kept (core/plan/store.py), instead
        of in RAM."""
        code_files, entry = code
        self.cache = cache
        self.allow_reuse = allow_reuse
        self.run_again: frozenset[int] = frozenset()  # a re-run's failed mini-batches (core/reuse/rerun.py)
        # those of them whose run() said which items failed: only those items run (core/reuse/rerun.py)
        self.partial: dict[int, PartialRun] = {}
        self.run_whole: dict[int, str] = {}  # the other failed mini-batches, and why they run whole
        # mini-batch -> SHA-256 of the successful results kept for a re-run of its marked items (job record)
        self.kept_items: dict[int, str] = {}
        # entries a re-run verified before it claimed the folder, by key: not read and checked twice
        self.verified: dict[str, dict[str, Any]] = {}
        self.inputs = list(inputs)
        self.plan: list[MiniBatch] | PlanStore = store if store is not None else []
        self.fingerprints: dict[str, str] | FingerprintSpill = store.fingerprints if store is not None else {}
        self.keys = KeyColumn()
        self._memo: Fingerprinter | None = None  # opened by the first `check_inputs` that needs it
        # mini-batch -> a digest of the fingerprints its key was computed from (`check_inputs` compares)
        self._keyed_fingerprints = DigestColumn()
        # mini-batch -> a digest of its local files' identities as fingerprinted (0: not known)
        self._keyed_identities = DigestColumn()
        with Fingerprinter(memo_path(cache.root), cache.storage_options) as memo:
            side: dict[str, str] = {}
            # local side inputs, checked by the entry-script processes after each run() (core/inputs/side_check.py)
            self.side_checks: list[SideInput] = []
            for url in side_inputs:
                if is_local(url):
                    check = planned(local_path(url), memo.path)
                    self.side_checks.append(check)
                    side[url] = check.fingerprint
                else:
                    side[url] = memo.path(url)
            self.side_fingerprints = side
            self.components = job_components(config, code_files, arguments, side, entry)
            self.cache_key = digest32(self.components)
            # each mini-batch's key holds its own input's read options (separator, encoding, ...)
            self.read_options = [key_fields(source) for source in inputs]
            if plan is not None:
                self.add(list(plan), memo)
        kind = plan.kind if plan is not None else kind
        if kind is None:
            raise ValueError("Reuse needs the plan or the kind of input it will hold")
        locations = [list(source.locations()) for source in inputs]
        self.signature = digest32([os.path.abspath(config.entry_script_path), locations, kind])

    def add(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> None:
        """Fingerprints of planned mini-batches' inputs (each input's files in one call) and their keys. A
        mini-batch's key depends only on its own files' fingerprints, so a plan added a block at a time
        while it is listed (core/driver/planning.py) gets the keys the whole plan added at once gets."""
        block: dict[str, str] = {}  # the block's units: after the update, the job's values for them
        identities: dict[str, Identity] = {}  # each local file's (size, mtime_ns, inode), as fingerprinted
        memo.identities = identities
        try:
            for input_index, source in enumerate(self.inputs):
                own = [mb for mb in batches if mb.input_index == input_index]
                if own:
                    block.update(source.fingerprints(own, memo))
        finally:
            memo.identities = None
        self.fingerprints.update(block)
        for mb in batches:
            self.plan.append(mb)
            self.keys[mb.index] = mini_batch_key(self.cache_key, mb, block, self.read_options[mb.input_index])
            paths = local_paths(mb)  # only those are checked as they commit (`check_inputs`)
            self._keyed_fingerprints[mb.index] = _fingerprints_digest(block, mb.units()) if paths else 0
            self._keyed_identities[mb.index] = mini_batch_identity(paths.values(), identities.get)

    # -- looking up ----------------------------------------------------------------------------------
    def find(self, admit: Admit, restore: Restore) -> ReuseOutcome:
        """Verified cache hits that join the output (when allow_reuse), and the reuse line. The job's
        record in the cache is written for the next run."""
        hits: dict[int, AttemptResult] = {}
        damaged: list[str] = []
        if self.allow_reuse:
            hits, with_files, damaged = self._lookup()
            hits = admit(hits)
            for index, meta in sorted(with_files.items()):  # only entries that are really reused
                problem = restore(index, meta) if index in hits else None
                if problem:
                    del hits[index]
                    damaged.append(self.damaged(index, problem))
        return ReuseOutcome(hits, damaged, self.conclude(hits, damaged))

    def conclude(self, hits: Collection[int], damaged: Sequence[str]) -> str:
        """The reuse line once the whole plan is known (`hits`: the mini-batches reused), and the job's
        record in the cache written for the next run (after the line: the line compares with the last)."""
        line = self._line(hits, damaged)
        self.cache.write_manifest(
            self.signature,  # digests only: environment variables may hold secrets
            {"components": self._digests(), "inputs": self.fingerprints},
        )
        return line

    def _lookup(self) -> tuple[dict[int, AttemptResult], dict[int, dict[str, Any]], list[str]]:
        """Every intact entry as a REUSED result; those that hold output_dir files; damaged ones."""
        hits: dict[int, AttemptResult] = {}
        with_files: dict[int, dict[str, Any]] = {}
        damaged: list[str] = []
        for mb in self.plan:
            if mb.index in self.run_again:
                continue
            hit, meta, problem = self.look_up(mb)
            if problem:
                damaged.append(problem)
            if hit is not None:
                hits[mb.index] = hit
            if meta is not None:
                with_files[mb.index] = meta
        return hits, with_files, damaged

    def look_up(self, mb: MiniBatch) -> tuple[AttemptResult | None, dict[str, Any] | None, str | None]:
        """One mini-batch's intact entry as a REUSED result (None: a miss), the entry's metadata when it
        holds output_dir files (to restore), and the warning for a damaged entry (a miss that says so,
        never output)."""
        key = self.keys[mb.index]
        meta, problem = (self.verified[key], None) if key in self.verified else self.cache.verified(key)
        warning = self.damaged(mb.index, problem) if problem else None
        if meta is None:
            return None, None, warning
        hit = AttemptResult(
            mb.index,
            0,
            AttemptStatus.REUSED,
            process="(cache)",
            total=int(meta["total"]),
            succeeded=int(meta["succeeded"]),
            part_url=meta["part_url"],
            columns=list(meta.get("columns", [])),
            schema=schema_from_text(meta.get("schema")),
            reused=True,
            error=f"reused cache entry {key}",
            item_errors=[(int(p), str(e)) for p, e in meta.get("item_errors", [])],
            items_url=meta.get("items_url"),
        )
        return hit, (meta if meta.get("files") else None), warning

    def damaged(self, index: int, problem: str) -> str:
        """The warning for mini-batch `index`'s cache entry that failed verification (or restoring)."""
        return f"cache entry {self.keys[index]} of mini-batch {index} failed verification ({problem}); it runs again"

    def _digests(self) -> dict[str, Any]:
        return component_digests({**self.components, "read_options": self.read_options})

    def component_digests(self) -> dict[str, Any]:
        """The job's component digests as the cache's job manifest keeps them (never a value)."""
        return self._digests()

    def _line(self, hits: Collection[int], damaged: Sequence[str]) -> str:
        """ "Reuse: N of M mini-batches reused from <cache>; K to run: <why>"."""
        numbers = (
            range(len(self.plan)) if isinstance(self.plan, PlanStore) else [mb.index for mb in self.plan]
        )
        to_run = sum(1 for index in numbers if index not in hits)
        misses = (mb for mb in self.plan if mb.index not in hits)  # read only if the line names them
        line = f"Reuse: {len(hits)} of {len(self.plan)} mini-batches reused from {self.cache.root}"
        return line + (f"; {to_run} to run: {self._why(to_run, misses, damaged)}" if to_run else "")

    def _why(self, to_run: int, misses: Iterable[MiniBatch], damaged: Sequence[str]) -> str:
        if not self.allow_reuse:
            return "allow_reuse is False"
        previous = self.cache.read_manifest(self.signature)
        if previous is None:
            return "no earlier run of this job in the cache"
        if damaged and len(damaged) == to_run:
            return f"{len(damaged)} cache entries failed verification"
        return explain_change(previous.get("components", {}), self._digests()) or explain_inputs(
            previous.get("inputs", {}), misses, self.fingerprints
        )

    # -- checking what ran --------------------------------------------------------------------------
    def check_inputs(self, mb: MiniBatch, result: AttemptResult) -> AttemptResult:
        """A successful attempt of `mb` fails if one of its local input files is no longer the file its
        key was computed from: run() (or the read of its slices) may have read other bytes than those the
        key, the cache entry and the job's record name, and a result cached under the old bytes' key would
        be served as theirs once they are back. Not retried: another try would read the changed file under
        the same key; the next run of the job plans the files as they are then. A file that is gone (a
        run() that moves or deletes what it processed) keeps the result, uncached: run() read it before it
        went, and nothing can tell which bytes it read.

        The entry-script process reports a digest of the files' (size, mtime_ns, inode) right after run()
        (core/inputs/identity.py); equal to the digest taken as they were fingerprinted, the attempt passes
        with no system call here. Otherwise the files are fingerprinted again (a stat each, a hash for one
        whose identity moved), so a file touched or copied over with the same bytes passes too. Bytes
        changed and put back during the attempt, with a new identity, are not told. Object-store inputs are
        checked where they are read, before run() (core/inputs/object_check.py); sources of pieces check
        their own as they read them (core/inputs/sql.py)."""
        if not result.ok or result.reused or not (mb.files or mb.slices):
            return result
        if result.inputs_identity and result.inputs_identity == self._keyed_identities[mb.index]:
            return result  # nothing moved since the fingerprints, as run()'s process saw the files after it
        changed, gone = self._changed_files(mb)
        if gone and not changed:
            why = f"input file {_some(gone)} was deleted or moved after the job fingerprinted it"
            return dataclasses.replace(result, uncacheable=result.uncacheable or why)
        if not changed:
            return result
        error = (
            f"DataChangedError: input file {_some(changed)} changed after the job fingerprinted it: run() may "
            "have read other bytes than those the mini-batch's cache key names, so its result is neither output "
            "nor cached, and it is not retried (another try would read the changed file under the same key); "
            "run the job again to process the files as they are now"
        )
        return result.refused(AttemptStatus.LOAD_EXCEPTION, error, retriable=False)

    def _changed_files(self, mb: MiniBatch) -> tuple[list[str], list[str]]:
        """`mb`'s local files whose bytes are not those its key was computed from, and those gone.

        Told by a digest of its units' fingerprints now against the digest of those its key was computed
        from (kept as it was keyed, 8 bytes a mini-batch): that compares with the very fingerprints the key
        used (a tabular file whose slices span two planning blocks, changed between them, has two; the
        job's table keeps the last), and looks nothing up in a spilled plan's table while its listing
        still writes it. Which file changed is looked up only when one did."""
        paths = local_paths(mb)
        if not paths:
            return [], []
        if self._memo is None:
            self._memo = Fingerprinter(memo_path(self.cache.root), self.cache.storage_options)
        memo = self._memo
        try:
            hashes: dict[str, str | None] = dict(memo.local_files(list(paths.values())))
        except OSError:  # one is gone (or unreadable): told apart one by one
            hashes = {}
            for path in paths.values():
                try:
                    hashes[path] = memo.local_file(path)
                except FileNotFoundError:
                    hashes[path] = None
                except OSError as exc:  # there, but not readable now: not the bytes the key names
                    hashes[path] = f"unreadable: {exc}"
        now = {url: hashes[path] for url, path in paths.items()}
        gone = [url for url, value in now.items() if value is None]
        if not gone:
            units = mb.units()
            # the local files' fingerprints now, the job's for any other unit (an object store's)
            fingerprints = {unit: now.get(unit) or self.fingerprints[unit] for unit in units}
            if _fingerprints_digest(fingerprints, units) == self._keyed_fingerprints[mb.index]:
                return [], []
        changed = [
            url for url, value in now.items() if value is not None and value != self.fingerprints.get(url)
        ]
        if not changed and not gone:  # its key used a fingerprint taken before the job's last one
            changed = list(now)
        return changed, gone

    def close(self) -> None:
        """The memo the commit checks opened (if any) is closed."""
        if self._memo is not None:
            self._memo.close()
            self._memo = None

    # -- storing -------------------------------------------------------------------------------------
    def commit(self, result: AttemptResult, files_url: str | None) -> str | None:
        """Stores a committed attempt (its part and output_dir files) at once, so an interrupted run
        resumes from here; its part URL becomes the cached copy's. Returns a line for the master log
        when it is not cached (a result that belongs to no single mini-batch, a full cache disk).

        Synchronous: on a local cache a commit is a link and a small file (well under 1 ms); a commit
        thread would compete for the GIL the driver shares with the client's event loop (and, on the
        embedded cluster, with the workers).
        """
        if result.uncacheable:
            return f"mini-batch {result.index} is not cached: {result.uncacheable}"
        meta = {
            "total": result.total,
            "succeeded": result.succeeded,
            "columns": result.columns,
            "schema": schema_to_text(result.schema),
        }
        if result.item_errors:
            meta["item_errors"] = [[position, error] for position, error in result.item_errors]
        try:
            if result.items_url:  # named in the job's record: a re-run unpickles only these bytes
                self.kept_items[result.index] = sha256_of(result.items_url, self.cache.storage_options)
            cached = self.cache.store(
                self.keys[result.index], result.part_url, meta, files_url, result.files, result.items_url
            )
        except Exception as exc:  # noqa: BLE001 - a full cache disk must not fail the job
            return f"could not cache mini-batch {result.index}: {type(exc).__name__}: {exc}"
        if result.part_url:
            result.part_url = cached
        return None

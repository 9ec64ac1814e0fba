"""The job's output while it runs: which attempt of each mini-batch is in it (the commit log), the one
schema its records form, the files scripts wrote to output_dir, and at the end the assembled file.

Exactly once: every attempt writes its own part file; only the first successful attempt of a mini-batch
is committed, and assembly concatenates committed parts in mini-batch order. A successful attempt whose
records cannot join the schema of those committed before it fails instead (RUN_INVALID_RESULT, at the
commit stage); a reused part that cannot runs again instead of being reused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..attempt import AttemptResult, AttemptStatus
from ..storage import join
from .assemble import assemble
from .commit_log import CommitLog
from .files import FilePublisher
from .schema import JobSchema


class JobOutput:
    def __init__(
        self,
        append_row_format: str,
        output_url: str,
        storage_options: Mapping[str, object],
        files: FilePublisher,
        log: Callable[[str], None],
    ) -> None:
        self.format = append_row_format
        self.output_url = output_url
        self.storage_options = dict(storage_options)
        self.files = files
        self.log = log
        self.schema = JobSchema(append_row_format)  # the output's one schema over committed parts
        self.committed = CommitLog()  # mini-batch -> its committed part, on disk

    def admit(self, index: int, result: AttemptResult) -> AttemptResult:
        """A successful attempt whose records cannot join the job's schema fails (and is not committed)."""
        if not result.ok or result.reused:
            return result
        problem = self.schema.admit(index, result.columns, result.schema)
        if problem is None:
            return result
        return result.refused(AttemptStatus.RUN_INVALID_RESULT, problem)

    def admit_reused(self, hits: Mapping[int, AttemptResult]) -> dict[int, AttemptResult]:
        """Cached parts join the job's schema like fresh ones (in mini-batch order); one that cannot is run
        again instead of reused."""
        admitted = {}
        for index, result in sorted(hits.items()):
            problem = self.schema.admit(index, result.columns, result.schema)
            if problem is None:
                admitted[index] = result
            else:
                self.log(f"mini-batch {index} runs again instead of being reused: {problem}")
        return admitted

    def commit(self, index: int, result: AttemptResult, files_url: str | None) -> None:
        """Mini-batch `index`'s part is this attempt's; the output_dir files it wrote (under `files_url`),
        and no other attempt's, reach the output."""
        self.committed.add(index, result)
        if files_url and result.files:
            self.files.publish(index, files_url, result.files, move=True)

    def assemble(self, file_name: str) -> tuple[str | None, str | None]:
        """The committed parts as the output file: (its URL, None), or (None, why it could not be)."""
        target = join(self.output_url, file_name)
        parts = self.committed.parts()
        try:
            assemble(parts, target, self.format, self.storage_options)
        except Exception as exc:  # noqa: BLE001
            return None, f"could not assemble the output file {target}: {type(exc).__name__}: {exc}"
        self.log(f"assembled {len(parts)} parts into {target}")
        return target, None

    def close(self) -> None:
        """The commit log's spill is removed (the job ended)."""
        self.committed.close()

"""Re-running only the failed items of a job (`run --rerun-failed FOLDER`, `rerun_failed=True`).

The job that wrote an output folder left its record (`logs/sys/job.json`, core/logs/job_record.py) and its
failed items (`logs/sys/job_report/failed_items.jsonl`, core/logs/failed_items.py). `PreviousJob` reads
both before the new job claims the folder (claiming empties `logs/`). The re-run runs the recorded plan
again, with every mini-batch that holds a failed item run, and every other one served from the reuse cache,
where the previous job stored it when it committed; the assembler then concatenates all parts in
mini-batch order, so each input item is in the output exactly once, in the original order.

Refused, before the folder is touched, with a message naming what differs: a folder without a record,
a job where nothing failed, a script, argument, side input, environment variable or setting that differs
from the recorded job's (its cache key), inputs that are not the recorded ones, an input item whose content
changed, or a succeeded mini-batch whose cache entry is gone (the re-run would have to run it too).

A mini-batch whose run() marked some items failed (exceptions or `ItemFailed` in a result with one entry per
item, core/output/results.py) runs only those items: run() gets them alone, and their results take their
places among the previous job's successful results, kept in the mini-batch's cache entry, so its new part
is the one a run of the whole mini-batch writes. A mini-batch whose run() returned fewer results than items
failed some of them without saying which (the Azure contract gives a count): it runs again whole and its
new result replaces its old one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..attempt import AttemptResult
from ..config import ParallelRunConfig
from ..errors import ConfigError
from ..inputs import dataset_from_dict, dataset_to_dict
from ..inputs.source import Dataset
from ..logs.failed_items import FAILED_ITEMS_FILE, read_failed_items
from ..logs.job_record import JOB_RECORD_FILE, read_job_record, variable_digest
from ..minibatch import MiniBatch
from ..plan import Plan
from ..storage import join
from ..worker.messages import PartialRun
from ..worker.rerun_items import sha256_of
from .components import explain_change, explain_inputs

if TYPE_CHECKING:
    from ..driver.loop import JobDriver

FIELD = "rerun_failed"


def _refuse(folder: str, why: str) -> ConfigError:
    return ConfigError(FIELD, folder, why)


def rerun_switch(value: object) -> bool:
    """`rerun_failed` as a boolean: a bool, or (templated) "true"/"false" in any case, "1"/"0", "" (False)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "", "none"):
        return False
    raise ConfigError(FIELD, value, "True or False (a templated value renders to 'true' or 'false')")


@dataclass(frozen=True)
class PreviousJob:
    """The job that wrote an output folder, as its record and failed items say. Picklable (a deferrable
    operator ships it into the cluster with the job's request)."""

    folder: str
    record: Mapping[str, Any]
    failed: tuple[Mapping[str, Any], ...]

    @classmethod
    def load(cls, output_path: str, storage_options: Mapping[str, Any] | None = None) -> PreviousJob:
        """Reads the folder's record and failed items; `ConfigError` (field `rerun_failed`) when there is
        no job to re-run or nothing failed in it."""
        logs = join(str(output_path).rstrip("/"), "logs")
        try:
            record = read_job_record(logs, storage_options)
        except FileNotFoundError:
            raise _refuse(
                output_path,
                f"a folder a finished job wrote; it holds no job record (logs/{JOB_RECORD_FILE}): no job ran "
                "there, it did not finish, or a release without re-runs wrote it",
            ) from None
        except (OSError, ValueError) as exc:
            raise _refuse(
                output_path, f"a folder with a readable job record (logs/{JOB_RECORD_FILE}: {exc})"
            ) from None
        try:
            failed = read_failed_items(logs, storage_options)
        except FileNotFoundError:
            raise _refuse(
                output_path,
                f"a folder whose job recorded its failed items (logs/{FAILED_ITEMS_FILE} is missing)",
            ) from None
        except (OSError, ValueError) as exc:
            raise _refuse(output_path, f"a folder with a readable logs/{FAILED_ITEMS_FILE} ({exc})") from None
        if not failed:
            raise _refuse(
                output_path,
                f"a folder whose job has failed items; nothing failed in job {record.get('job_id')} "
                f"(logs/{FAILED_ITEMS_FILE} is empty)",
            )
        planned = len(record["plan"]["mini_batches"])
        outside = sorted({int(line["mini_batch"]) for line in failed} - set(range(planned)))
        if outside:
            raise _refuse(
                output_path,
                f"a folder whose failed items name mini-batches of its job; logs/{FAILED_ITEMS_FILE} names "
                f"mini-batch {outside[0]}, job {record.get('job_id')} had {planned} (0 to {planned - 1})",
            )
        return cls(str(output_path), record, tuple(failed))

    # -- what the previous job was -------------------------------------------------------------------
    @property
    def job_id(self) -> str:
        return str(self.record.get("job_id"))

    @cached_property
    def plan(self) -> Plan:
        plan = self.record["plan"]
        return Plan(plan["kind"], [MiniBatch.from_dict(mb) for mb in plan["mini_batches"]])

    @cached_property
    def to_run(self) -> frozenset[int]:
        """The mini-batches that hold a failed item."""
        return frozenset(int(line["mini_batch"]) for line in self.failed)

    @property
    def cache_root(self) -> str:
        return str(self.record["cache_root"])

    @property
    def arguments(self) -> list[str]:
        return list(self.record["arguments"])

    @property
    def side_inputs(self) -> list[str]:
        return list(self.record["side_inputs"])

    def config(self, environment_variables: Mapping[str, str]) -> ParallelRunConfig:
        """The recorded config, with the environment variables given again (their values are not
        recorded); a recorded variable that is not given is refused by name."""
        fields = dict(self.record["config"])
        recorded: Mapping[str, str] = fields.pop("environment_variables")
        missing = sorted(set(recorded) - set(environment_variables))
        if missing:
            raise _refuse(
                self.folder,
                f"a re-run given the previous job's environment variables: {', '.join(missing)} "
                "(values are not recorded, they may be secret; give them again with --environment-variables "
                "NAME=VALUE)",
            )
        return ParallelRunConfig(**fields, environment_variables=dict(environment_variables))

    def inputs(self) -> list[Dataset]:
        """The recorded inputs (credentials come from the environment, as for any job)."""
        return [dataset_from_dict(document) for document in self.record["inputs"]]

    # -- checks against the new job (before it claims the folder) -------------------------------------
    def check(self, driver: JobDriver) -> None:
        """Refuses a re-run that would not be the recorded job, or that would have to run more than the
        failed items; then tells the cache to run the failed mini-batches whatever it holds."""
        self._check_inputs(driver.inputs)
        self._check_variables(driver.config.environment_variables)
        if driver.cache_key != self.record["cache_key"]:
            what = explain_change(self.record.get("components", {}), driver.reuse.component_digests())
            raise _refuse(
                self.folder,
                f"a re-run of the job that wrote it; {what or 'the job changed'} since job {self.job_id}",
            )
        keys = list(self.record["keys"])
        changed = [mb for mb in driver.plan if keys[mb.index] != driver.keys[mb.index]]
        if changed:
            what = explain_inputs(self.record.get("fingerprints", {}), changed, driver.reuse.fingerprints)
            raise _refuse(self.folder, f"a re-run of the job that wrote it; since job {self.job_id}: {what}")
        verified: dict[str, dict[str, Any]] = {}
        missing = []
        for mb in driver.plan:
            if mb.index in self.to_run:
                continue
            key = driver.keys[mb.index]
            meta = driver.cache.verified(key)[0]
            if meta is None:
                missing.append(mb.index)
            else:
                verified[key] = meta
        if missing:
            raise self._not_cached(missing, driver.cache.root)
        driver.reuse.run_again, driver.reuse.verified = self.to_run, verified
        driver.reuse.partial, driver.reuse.run_whole = self._partial(driver)

    def _partial(self, driver: JobDriver) -> tuple[dict[int, PartialRun], dict[int, str]]:
        """The failed mini-batches whose run() said which items failed (every line of them has a
        `position`): only those items run, their results join the previous successful ones kept in the
        mini-batch's cache entry. The others run whole, each with the reason (for the master log)."""
        positions: dict[int, set[int]] = {}
        whole: dict[int, str] = {}
        failed_whole: set[int] = set()  # raised, timed out, died, or not finished: nothing to say
        for line in self.failed:
            index = int(line["mini_batch"])
            position = line.get("position")
            if isinstance(position, int) and line.get("certain") is True:
                positions.setdefault(index, set()).add(position)
            elif line.get("certain") is False:
                whole[index] = "its run() returned fewer results than items without saying which failed"
            else:
                failed_whole.add(index)
        for index in set(whole) | failed_whole:
            positions.pop(index, None)
        summary_only = driver.config.output_action != "append_row"
        partial: dict[int, PartialRun] = {}
        for index, chosen in sorted(positions.items()):
            meta = driver.cache.verified(driver.keys[index])[0]
            marked = {int(p) for p, _e in (meta or {}).get("item_errors", [])}
            if meta is None:
                whole[index] = "its cache entry (the previous successful items) is gone"
            elif marked != chosen:
                whole[index] = "its cache entry names other failed items than logs/" + FAILED_ITEMS_FILE
            elif meta.get("files"):
                # the new attempt writes only the re-run items' files: its cache entry would lack the others'
                whole[index] = (
                    "its run() wrote files to output_dir, which a re-run of only its failed items would "
                    "leave out of the new cache entry"
                )
            elif not summary_only and not meta.get("items_url") and int(meta.get("succeeded", 0)):
                whole[index] = "its successful results could not be kept (not picklable)"
            elif summary_only or not meta.get("items_url"):
                partial[index] = PartialRun(tuple(sorted(chosen)))
            else:
                url, recorded = str(meta["items_url"]), self.record.get("kept_items", {}).get(str(index))
                if recorded is None:  # job X took it from the cache: it cannot vouch for those bytes
                    whole[index] = (
                        f"job {self.job_id} reused it from the cache, so its record names no successful "
                        "results to trust"
                    )
                elif sha256_of(url, driver.cache.storage_options) != recorded:
                    whole[index] = (
                        f"its cache entry's successful results are not the ones job {self.job_id} recorded "
                        "(changed since: not loaded)"
                    )
                else:
                    partial[index] = PartialRun(tuple(sorted(chosen)), url, recorded)
        return partial, whole

    def _check_inputs(self, inputs: Sequence[Dataset]) -> None:
        now = [dataset_to_dict(d, credentials=False) for d in inputs]
        before = list(self.record["inputs"])
        if now == before:
            return
        if len(now) != len(before):
            why = f"{len(now)} input(s), the previous job had {len(before)}"
        else:
            index = next(i for i, (a, b) in enumerate(zip(now, before, strict=True)) if a != b)
            first = sorted(
                k for k in set(now[index]) | set(before[index]) if now[index].get(k) != before[index].get(k)
            )[0]
            why = (
                f"input {index} has {first}={now[index].get(first)!r}, job {self.job_id}'s had "
                f"{before[index].get(first)!r}"
            )
        raise _refuse(self.folder, f"a re-run of the job that wrote it, with its inputs; {why}")

    def _check_variables(self, environment: Mapping[str, str]) -> None:
        recorded: Mapping[str, str] = self.record["config"].get("environment_variables", {})
        names = sorted(set(recorded) | set(environment))
        differ = [
            n
            for n in names
            if recorded.get(n) != (variable_digest(environment[n]) if n in environment else None)
        ]
        if differ:
            raise _refuse(
                self.folder,
                f"a re-run with the previous job's environment variables; {', '.join(differ)} differ(s) from "
                f"job {self.job_id}'s (values are compared by digest, never shown)",
            )

    def _not_cached(self, missing: Sequence[int], root: str) -> ConfigError:
        shown = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return _refuse(
            self.folder,
            f"a re-run whose succeeded mini-batches are in the reuse cache; {len(missing)} of job {self.job_id}'s "
            f"(mini-batches {shown}) have no intact entry in {root} (pruned, cleared, another cache, or not "
            "cacheable: see the previous job's logs/sys/master_role.txt): run the whole job again instead",
        )

    # -- after the cache lookup ----------------------------------------------------------------------
    def select(self, driver: JobDriver, hits: Mapping[int, AttemptResult]) -> dict[int, AttemptResult]:
        """The reused mini-batches: every one but the failed ones (refused when one cannot be reused after
        all: an entry damaged since `check`, or a part that does not join the output's schema)."""
        reused = {index: result for index, result in hits.items() if index not in self.to_run}
        missing = [mb.index for mb in driver.plan if mb.index not in self.to_run and mb.index not in reused]
        if missing:
            raise self._not_cached(missing, driver.cache.root)
        items = sum(1 for _ in self.failed)
        partial = driver.reuse.partial
        only = sum(len(p.positions) for p in partial.values())
        driver.reuse_line = (
            f"Re-run of job {self.job_id}: {len(self.to_run)} mini-batches with failed items run again "
            f"({items} failed-item lines in its failed_items.jsonl; {len(partial)} of them run only their "
            f"{only} failed items), {len(reused)} reused from {driver.cache.root}"
        )
        driver.logs.master(driver.reuse_line)
        for index, why in sorted(driver.reuse.run_whole.items()):
            driver.logs.master(f"Re-run: mini-batch {index} runs whole: {why}")
        return reused

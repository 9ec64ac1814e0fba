"""`JobSpec`: everything a worker needs to run mini-batches, scattered to workers once per job."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..inputs.side_check import SideInput
from ..inputs.source import Dataset
from ..output.files import attempt_folder, process_folder
from ..output.formats import get_format
from .messages import PartialRun

if TYPE_CHECKING:
    from ..config import ParallelRunConfig


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    script_bundle: bytes  # zip of source_directory (or the entry script alone)
    bundle_hash: str
    entry_script: str  # path inside the bundle
    arguments: tuple[str, ...]
    side_inputs: tuple[str, ...]
    environment_variables: dict[str, str]
    datasets: tuple[Dataset, ...]
    output_url: str  # the output folder
    staging_url: str  # where part files go
    log_url: str  # output/logs
    output_action: str
    append_row_format: str
    logging_level: str
    run_invocation_timeout: float
    max_concurrency: int = 1  # mini-batches in flight in one entry-script process (async run())
    load_timeout: float = 600.0
    resource_monitor_interval: float = 600.0
    storage_options: dict[str, object] = field(default_factory=dict)  # for output/staging/logs
    batch_format: str = "pandas"  # what run() gets for a tabular mini-batch (core/inputs/batch_format.py)
    # a re-run of failed items: the mini-batches whose run() marked items failed run only those
    partial: Mapping[int, PartialRun] = field(default_factory=dict)
    # local side inputs as keyed: checked after each run() (core/inputs/side_check.py)
    side_checks: tuple[SideInput, ...] = ()
    # every side input's keyed fingerprint, by URL: a worker checks its download of a remote one against it
    side_fingerprints: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_job(
        cls,
        job_id: str,
        config: ParallelRunConfig,
        code: tuple[bytes, str, str],
        *,
        arguments: tuple[str, ...],
        side_inputs: tuple[str, ...],
        datasets: tuple[Dataset, ...],
        output_url: str,
        staging_url: str,
        log_url: str,
        storage_options: Mapping[str, object],
    ) -> JobSpec:
        """What the workers need of a job: its code (bundle, its hash, the entry script's path in it), the
        worker-side settings of `config`, its inputs and where its output, staging area and logs are."""
        bundle, bundle_hash, entry = code
        return cls(
            job_id=job_id,
            script_bundle=bundle,
            bundle_hash=bundle_hash,
            entry_script=entry,
            arguments=arguments,
            side_inputs=side_inputs,
            environment_variables=dict(config.environment_variables),
            datasets=datasets,
            output_url=output_url,
            staging_url=staging_url,
            log_url=log_url,
            output_action=config.output_action,
            append_row_format=config.append_row_format,
            logging_level=config.logging_level,
            run_invocation_timeout=config.run_invocation_timeout,
            max_concurrency=config.max_concurrency_per_process,
            resource_monitor_interval=float(config.resource_monitor_interval),
            storage_options=dict(storage_options),
            batch_format=config.batch_format,
        )

    def files_url(self, index: int, attempt: int, run: str) -> str:
        """The attempt's own `output_dir` (see core/output/files.py). Like the part and items files, named
        by `run` too, a token of one execution of the Dask task: the scheduler runs a task again under the
        same key (so the same attempt number) when its worker is lost, even after the driver has read the
        first run's result, and the run again must not write over what the driver publishes."""
        return attempt_folder(self.staging_url, index, attempt, run)

    def process_files_url(self, node: str, process: str) -> str:
        """An entry-script process's own `output_dir` outside run() (see core/output/files.py)."""
        return process_folder(self.staging_url, node, process)

    def items_url(self, index: int, attempt: int, run: str) -> str:
        """Where an attempt whose run() marked items failed keeps its successful results (for a re-run)."""
        return f"{self.staging_url}/mb{index:08d}-a{attempt}-{run}.items.pickle"

    def part_url(self, index: int, attempt: int, run: str) -> str:
        extension = get_format(self.append_row_format).extension
        return f"{self.staging_url}/mb{index:08d}-a{attempt}-{run}.{extension}"


def bundle_scripts(
    entry_script_path: str, source_directory: str | None
) -> tuple[bytes, str, str, dict[str, str]]:
    """Zips the code the workers run; returns (zip bytes, content hash, entry script path inside the
    zip, per-file content hashes used to say which file changed).

    The hash covers file names and contents only (not timestamps), so it is a stable reuse key.
    """
    if source_directory:
        root = os.path.abspath(source_directory)
        files = []
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", ".git"))
            files += [os.path.join(folder, n) for n in sorted(names) if not n.endswith(".pyc")]
        entry = os.path.relpath(os.path.abspath(entry_script_path), root)
    else:
        root = os.path.dirname(os.path.abspath(entry_script_path))
        files = [os.path.abspath(entry_script_path)]
        entry = os.path.basename(entry_script_path)
    digest = hashlib.sha256()
    file_hashes: dict[str, str] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, "rb") as handle:
                data = handle.read()
            file_hashes[rel] = hashlib.sha256(data).hexdigest()
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue(), digest.hexdigest(), entry.replace(os.sep, "/"), file_hashes

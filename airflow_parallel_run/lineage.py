"""OpenLineage for `ParallelRunOperator`: what a job read, what it wrote, and how it went.

The OpenLineage provider (``apache-airflow-providers-openlineage``) calls an operator's
``get_openlineage_facets_on_complete`` / ``_on_failure`` after the task ends; `LineageMixin` gives the
operator both. Everything OpenLineage is imported inside them, so the operator imports and runs without
the provider installed (the methods are then simply never called).

- **Inputs**: every input path (a folder, a file, or the folder a glob starts in; the files of a sensor's
  manifest as the datasets it planned) and every side input (the model), each as an OpenLineage dataset
  named by its fsspec URL: ``file`` + absolute path for local paths, ``<scheme>://<bucket>`` + key for
  object stores (OpenLineage's naming convention).
- **Output**: the output folder, with the standard ``outputStatistics`` facet (rows = items that
  succeeded, files = the output file).
- **Run facet** ``parallelRun``: the job's counts from its summary (items, mini-batches, reused, cache
  key, status, partition key, duration), and on failure the job's message as ``errorMessage``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from airflow_parallel_run.core.summary import SUMMARY_FIGURE_KEYS

#: The schema URL of the ``parallelRun`` run facet. OpenLineage requires one per custom facet; this one
#: names the facet by the package (its fields are documented in docs/airflow.md, "OpenLineage").
FACET_SCHEMA_URL = "urn:airflow-parallel-run:facets:1-0-0/ParallelRunRunFacet.json#/$defs/ParallelRunRunFacet"
FACET_NAME = "parallelRun"
_GLOB_CHARS = "*?["
#: The facet's fields: the summary's figures, and the partition the run scored (the operator adds it).
_SUMMARY_FIELDS = (*SUMMARY_FIGURE_KEYS, "partition_key")


def dataset_name(url: str) -> tuple[str, str]:
    """(namespace, name) of a path or fsspec URL, by OpenLineage's naming convention.

    ``/data/in`` and ``file:///data/in`` → ``("file", "/data/in")``; ``s3://bucket/a/b`` →
    ``("s3://bucket", "a/b")``; a glob stands for the folder it starts in (``/in/*.png`` → ``/in``).
    """
    text = str(url).strip()
    for char in _GLOB_CHARS:
        if char in text:
            text = text[: text.index(char)]
            text = text if text.endswith("/") else posixpath.dirname(text)
    if "://" not in text or text.startswith(("file://", "local://")):
        path = text.split("://", 1)[1] if "://" in text else text
        path = os.path.abspath(os.path.expanduser(path or "."))
        return "file", path.rstrip("/") or "/"
    parts = urlsplit(text)
    return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/") or "/"


def _input_urls(operator: Any) -> list[str]:
    """The job's input and side-input locations (as rendered; a manifest's planned datasets)."""
    from airflow_parallel_run.core.plan.manifest import is_manifest_reference, load_manifest

    urls: list[str] = []
    try:
        if is_manifest_reference(operator.inputs):
            manifest = load_manifest(operator.inputs["manifest"], operator.resolve_storage_options())
            datasets = manifest.datasets
        else:
            datasets = operator.resolve_inputs()
        urls += [path for dataset in datasets for path in dataset.locations()]
    except Exception:  # noqa: BLE001 - a failed task may have failed on its inputs: report the rest
        pass
    from airflow_parallel_run.core.inputs.normalise import as_strings

    with contextlib.suppress(Exception):  # reported as far as it is valid
        urls += as_strings("side_inputs", operator.side_inputs)
    return urls


@cache
def _run_facet_class() -> type:
    """The ``parallelRun`` facet class (built on first use: openlineage is an optional dependency)."""
    import attrs
    from openlineage.client.facet_v2 import RunFacet

    @attrs.define
    class ParallelRunRunFacet(RunFacet):  # type: ignore[misc]
        """The job's summary counts (see docs/airflow.md, OpenLineage)."""

        status: str | None = attrs.field(default=None)
        totalItems: int | None = attrs.field(default=None)  # noqa: N815 - OpenLineage's camelCase
        succeededItems: int | None = attrs.field(default=None)  # noqa: N815
        failedItems: int | None = attrs.field(default=None)  # noqa: N815
        totalMiniBatches: int | None = attrs.field(default=None)  # noqa: N815
        succeededMiniBatches: int | None = attrs.field(default=None)  # noqa: N815
        failedMiniBatches: int | None = attrs.field(default=None)  # noqa: N815
        reusedMiniBatches: int | None = attrs.field(default=None)  # noqa: N815
        cacheKey: str | None = attrs.field(default=None)  # noqa: N815
        durationSeconds: float | None = attrs.field(default=None)  # noqa: N815
        partitionKey: str | None = attrs.field(default=None)  # noqa: N815

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return ParallelRunRunFacet


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    text = head + "".join(part.title() for part in rest)
    return "durationSeconds" if text == "durationS" else text


def run_facet(summary: Mapping[str, Any]) -> Any:
    """The ``parallelRun`` facet of a summary."""
    values = {_camel(name): summary.get(name) for name in _SUMMARY_FIELDS if summary.get(name) is not None}
    return _run_facet_class()(**values)


def operator_lineage(operator: Any, summary: Mapping[str, Any] | None, failed: bool) -> Any:
    """The `OperatorLineage` of a finished `ParallelRunOperator` task."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.facet_v2 import error_message_run, output_statistics_output_dataset

    seen: set[tuple[str, str]] = set()
    inputs = []
    for url in _input_urls(operator):
        ident = dataset_name(url)
        if ident not in seen:
            seen.add(ident)
            inputs.append(InputDataset(namespace=ident[0], name=ident[1]))
    outputs = []
    output = (summary or {}).get("output") or _rendered(operator.output_path)
    if output:
        facets: dict[str, Any] = {}
        if summary and summary.get("status") == "succeeded":
            facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=int(summary.get("succeeded_items") or 0),
                fileCount=1 if summary.get("append_row_file") else None,
            )
        namespace, name = dataset_name(str(output))
        outputs.append(OutputDataset(namespace=namespace, name=name, outputFacets=facets))
    run_facets: dict[str, Any] = {}
    if summary:
        run_facets[FACET_NAME] = run_facet(summary)
    if failed:
        message = (summary or {}).get("message") or "the task failed before the job produced a summary"
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=str(message), programmingLanguage="python"
        )
    return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)


def _rendered(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, os.PathLike)) and str(value).strip() else None


class LineageMixin:
    """``get_openlineage_facets_on_complete`` / ``_on_failure`` for `ParallelRunOperator`.

    Reads the operator's rendered ``inputs``/``side_inputs``/``output_path`` and the summary it kept
    (``job_summary``, set when the job's summary reached the operator).
    """

    job_summary: Mapping[str, Any] | None = None

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return operator_lineage(self, self.job_summary, failed=False)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return operator_lineage(self, self.job_summary, failed=True)


__all__: Sequence[str] = ("LineageMixin", "dataset_name", "operator_lineage", "run_facet")

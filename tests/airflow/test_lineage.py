"""OpenLineage facets of ParallelRunOperator (airflow_parallel_run/lineage.py).

The facets are checked directly, and then as the OpenLineage provider emits them: a real `dag.test()` run
in a child process whose Airflow has the provider's file transport configured (the provider reads its
configuration once per process, so the rest of the session stays without lineage).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from test_partitions import FakeTI

from airflow_parallel_run.core import ParallelRunConfig, TabularDataset
from airflow_parallel_run.lineage import dataset_name
from airflow_parallel_run.operators import ParallelRunOperator

SUMMARY = {
    "status": "succeeded",
    "total_items": 10,
    "succeeded_items": 9,
    "failed_items": 1,
    "total_mini_batches": 4,
    "succeeded_mini_batches": 4,
    "failed_mini_batches": 0,
    "reused_mini_batches": 3,
    "output": "/data/out",
    "append_row_file": "/data/out/parallel_run_step.txt",
    "logs_dir": "/data/out/logs",
    "cache_key": "abc",
    "duration_s": 1.5,
    "partition_key": "2024-01-01",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/data/in", ("file", "/data/in")),
        ("file:///data/in/", ("file", "/data/in")),
        ("/data/in/*.png", ("file", "/data/in")),
        ("/data/in/2024-*/x.csv", ("file", "/data/in")),
        ("s3://bucket/landing/day=1/*.parquet", ("s3://bucket", "landing/day=1")),
        ("gs://bucket/model.pkl", ("gs://bucket", "model.pkl")),
        ("abfs://container/scores", ("abfs://container", "scores")),
    ],
)
def test_dataset_names_follow_openlineage_naming(url: str, expected: tuple[str, str]) -> None:
    assert dataset_name(url) == expected


def _operator(tmp_path: Path) -> ParallelRunOperator:
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    return ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=str(script)),
        inputs=[
            TabularDataset.from_parquet_files("s3://bucket/landing/day=1/*.parquet"),
            TabularDataset.from_parquet_files("s3://bucket/landing/day=2/*.parquet"),
        ],
        output_path="/data/out",
        side_inputs=["gs://models/digits.pkl"],
    )


def test_facets_on_complete_name_inputs_output_and_counts(tmp_path: Path) -> None:
    op = _operator(tmp_path)
    op.job_summary = SUMMARY
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [
        ("s3://bucket", "landing/day=1"),
        ("s3://bucket", "landing/day=2"),
        ("gs://models", "digits.pkl"),
    ]
    ((output),) = lineage.outputs
    assert (output.namespace, output.name) == ("file", "/data/out")
    assert output.outputFacets["outputStatistics"].rowCount == 9
    facet = lineage.run_facets["parallelRun"]
    assert (facet.status, facet.totalItems, facet.succeededItems, facet.failedItems) == (
        "succeeded",
        10,
        9,
        1,
    )
    assert (facet.totalMiniBatches, facet.reusedMiniBatches, facet.cacheKey) == (4, 3, "abc")
    assert (facet.durationSeconds, facet.partitionKey) == (1.5, "2024-01-01")
    assert "errorMessage" not in lineage.run_facets


def test_facets_on_failure_carry_the_jobs_message(tmp_path: Path) -> None:
    op = _operator(tmp_path)
    op.job_summary = {**SUMMARY, "status": "failed", "message": "Job failed: error_threshold exceeded"}
    lineage = op.get_openlineage_facets_on_failure(None)
    assert lineage.run_facets["errorMessage"].message == "Job failed: error_threshold exceeded"
    assert lineage.run_facets["parallelRun"].status == "failed"
    assert "outputStatistics" not in lineage.outputs[0].outputFacets, "no rows were presented"
    op.job_summary = None  # failed before the job existed (bad input): what is known is still reported
    lineage = op.get_openlineage_facets_on_failure(None)
    assert len(lineage.inputs) == 3 and lineage.outputs[0].name == "/data/out"
    assert "parallelRun" not in lineage.run_facets


def test_the_operator_imports_and_runs_without_the_openlineage_client(tmp_path: Path) -> None:
    """A deployment without apache-airflow-providers-openlineage (and so without the `openlineage`
    client): importing and building the operator imports nothing of either."""
    code = textwrap.dedent(
        """
        import sys
        import airflow.sdk
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "openlineage" or name.startswith(("openlineage.", "airflow.providers.openlineage.")):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, Block())
        from airflow_parallel_run import ParallelRunConfig, ParallelRunOperator
        from airflow_parallel_run import partitions, watchers
        op = ParallelRunOperator(task_id="t", parallel_run_config=ParallelRunConfig(entry_script=sys.argv[1]),
                                 inputs="/in", output_path="/out")
        print("ok", [m for m in sys.modules if m == "openlineage" or m.startswith("openlineage.")])
        """
    )
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    result = subprocess.run(
        [sys.executable, "-c", code, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok []")


def test_the_provider_extracts_and_its_file_transport_writes_a_real_runs_facets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real job, then the provider's own extraction (`ExtractorManager`, what its listener calls after
    the task) and its file transport. (The listener itself runs on the real stack: tests/e2e.)"""
    import logging

    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.sdk.execution_time.context import OutletEventAccessors
    from airflow.utils.state import TaskInstanceState
    from distributed import LocalCluster
    from openlineage.client import OpenLineageClient
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.uuid import generate_new_uuid

    landing = tmp_path / "landing"
    landing.mkdir()
    for i in range(6):
        (landing / f"f{i}.txt").write_text(f"{i}\n")
    model = tmp_path / "model.bin"
    model.write_bytes(b"m")
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        conn = {"conn_type": "dask", "extra": {"address": cluster.scheduler_address}}
        monkeypatch.setenv("AIRFLOW_CONN_APR_LINEAGE", json.dumps(conn))
        op = ParallelRunOperator(
            task_id="score",
            parallel_run_config=ParallelRunConfig(entry_script=str(script), mini_batch_size=4),
            inputs=str(landing / "*.txt"),
            output_path=str(tmp_path / "out"),
            side_inputs=[str(model)],
            dask_conn_id="apr_lineage",
        )
        op.execute({"ti": FakeTI(), "outlet_events": OutletEventAccessors()})  # type: ignore[arg-type]
    lineage = ExtractorManager().extract_metadata(
        dagrun=type("Run", (), {"run_id": "r"})(),
        task=op,
        task_instance_state=TaskInstanceState.SUCCESS,
        task_instance=None,
    )
    events_file = tmp_path / "lineage.jsonl"
    client = OpenLineageClient(
        transport=FileTransport(FileConfig(log_file_path=str(events_file), append=True))
    )
    client.emit(
        RunEvent(
            eventType=RunState.COMPLETE,
            eventTime="2024-01-01T00:00:00Z",
            run=Run(runId=str(generate_new_uuid()), facets=lineage.run_facets),
            job=Job(namespace="apr-test", name="dag.score"),
            inputs=lineage.inputs,
            outputs=lineage.outputs,
            producer="test",
        )
    )
    (event,) = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
        ("file", str(landing)),
        ("file", str(model)),
    ]
    ((output),) = event["outputs"]
    assert (output["namespace"], output["name"]) == ("file", str(tmp_path / "out"))
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 6
    facet: dict[str, Any] = event["run"]["facets"]["parallelRun"]
    assert (facet["status"], facet["succeededItems"], facet["totalMiniBatches"]) == ("succeeded", 6, 2)
    assert facet["_schemaURL"].endswith("#/$defs/ParallelRunRunFacet")


def test_the_facet_and_the_view_list_carry_every_summary_figure() -> None:
    """Both take the summary's figures from `SUMMARY_KEYS`: a key added there reaches them, and the facet's
    documented schema must name it (run_facet would refuse an unknown field)."""
    import attrs

    from airflow_parallel_run.core.summary import SUMMARY_FIGURE_KEYS, SUMMARY_KEYS, SUMMARY_LOCATION_KEYS
    from airflow_parallel_run.lineage import _SUMMARY_FIELDS, _camel, _run_facet_class
    from airflow_parallel_run.ui.queries import SUMMARY_FIELDS

    assert set(SUMMARY_FIGURE_KEYS) | set(SUMMARY_LOCATION_KEYS) == set(SUMMARY_KEYS)
    assert set(SUMMARY_FIGURE_KEYS) <= set(_SUMMARY_FIELDS)
    assert set(SUMMARY_FIGURE_KEYS) - {"cache_key"} == set(SUMMARY_FIELDS)
    facet_fields = {f.name for f in attrs.fields(_run_facet_class())}
    assert {_camel(name) for name in _SUMMARY_FIELDS} <= facet_fields

"""An Airflow DAG run with `dag.test()` against the external TLS cluster, with S3 inputs and outputs.

Airflow runs in a subprocess with its own AIRFLOW_HOME (a migrated SQLite DB and a DAGs folder that
links tests/cluster/dags); the connections come from AIRFLOW_CONN_* variables: `apr_cluster_dask`
(the TLS scheduler, DaskHook) and `apr_cluster_s3` (type `aws` with key, secret and endpoint_url:
the Amazon provider is not needed). The reuse cache is on S3 too ([parallel_run] cache_root).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from typing import Any

import pytest
from cluster_support import SECRET, Bucket, ExternalCluster, S3Server

RUN_DAG = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
assert not bag.import_errors, bag.import_errors
run = bag.get_dag("apr_cluster_s3_tls").test(run_conf=json.loads(sys.argv[1]))
with create_session() as session:
    query = XComModel.get_many(run_id=run.run_id, key="return_value", task_ids="score", dag_ids=run.dag_id)
    row = session.scalars(query).first()
    summary = None if row is None else XComModel.deserialize_value(row)
print("APR-RESULT " + json.dumps({"state": str(run.state), "summary": summary}))
"""
#: One `dag.test()` subprocess (Airflow's imports, a DagBag, a job on the TLS cluster): 105-170 s for the
#: test's two on a busy 2-core machine, half again as much on a slower one.
DAG_TEST_TIMEOUT_S = 240
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _dag_test(env: dict[str, str], conf: dict[str, Any]) -> tuple[dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-c", RUN_DAG, json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=DAG_TEST_TIMEOUT_S,
        check=False,
    )
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("APR-RESULT ")]
    assert done.returncode == 0 and lines, output[-6000:]
    return json.loads(lines[-1].removeprefix("APR-RESULT ")), output


# pytest-timeout's guard is above the two runs' own timeouts plus the module's fixtures (a TLS cluster, an
# S3 server, a migrated AIRFLOW_HOME: 21-28 s), which the project-wide 300 s counted against this test too.
@pytest.mark.timeout(2 * DAG_TEST_TIMEOUT_S + 120)
def test_dag_runs_on_the_tls_cluster_with_s3(
    airflow_home_env: dict[str, str], tls_cluster: ExternalCluster, s3_server: S3Server, s3: Bucket
) -> None:
    for i in range(10):
        s3.put(f"in/d{i:02d}.txt", f"{i}\n")
    s3.put("side/labels.txt", "\n".join(f"{i}={w}" for i, w in enumerate(WORDS)) + "\n")
    env = {
        **airflow_home_env,
        "APR_CLUSTER_BUCKET": s3.name,
        "AIRFLOW_CONN_APR_CLUSTER_DASK": json.dumps(tls_cluster.connection()),
        "AIRFLOW_CONN_APR_CLUSTER_S3": json.dumps(s3_server.aws_connection()),
        "AIRFLOW__PARALLEL_RUN__CACHE_ROOT": s3.url("cache"),
    }

    result, log = _dag_test(env, {"node_count": 2, "output": "two-hosts"})
    assert result["state"] == "success", log[-6000:]
    summary = result["summary"]
    assert summary["status"] == "succeeded" and summary["succeeded_items"] == 10, summary
    assert summary["append_row_file"] == s3.url("out", "two-hosts", "labels.txt")
    assert s3.read("out/two-hosts/labels.txt").splitlines() == [f"d{i:02d}.txt {WORDS[i]}" for i in range(10)]
    keys = s3.ls("out/two-hosts/logs")
    for host in tls_cluster.worker_hosts:
        assert [k for k in keys if k.startswith(f"out/two-hosts/logs/sys/node/{host}/process")], (host, keys)
    report = s3.read("out/two-hosts/logs/sys/job_report/processed_mini-batches.csv")
    assert {row["Node"] for row in csv.DictReader(io.StringIO(report))} == set(tls_cluster.worker_hosts)
    assert f"Dask cluster {tls_cluster.address}: 2 host(s); running on 127.0.0.2, 127.0.0.3" in log
    assert "Processed 5 of 5 mini-batches (100%)" in log
    assert [k for k in s3.ls("cache") if k.endswith("meta.json")], "the reuse cache is on S3"

    # node_count=1 from the trigger form: one host only; everything is reused from the S3 cache anyway,
    # so change one input to make exactly one mini-batch run.
    s3.put("in/d03.txt", "7\n")
    result, log_one = _dag_test(env, {"node_count": 1, "output": "one-host"})
    summary = result["summary"]
    assert result["state"] == "success" and summary["reused_mini_batches"] == 4, log_one[-6000:]
    assert s3.read("out/one-host/labels.txt").splitlines()[3] == "d03.txt seven"
    nodes = {k.split("/")[5] for k in s3.ls("out/one-host/logs/sys/node")}
    assert nodes == {"127.0.0.2"}, nodes
    assert "running on 127.0.0.2 (1 entry-script processes at once)" in log_one

    for text in (log, log_one, tls_cluster.procs.all_output()):
        assert SECRET not in text, "the secret access key reached a log"

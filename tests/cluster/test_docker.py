"""docker/: the compose file (Airflow 3 + Postgres + a Dask scheduler and two workers), the images'
Dockerfiles and the compose-only DAG. No Docker engine is needed: `docker compose config` only
resolves and validates the file (skipped when neither `docker compose` nor `docker-compose` exists).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
DASK_SERVICES = {"dask-scheduler", "dask-worker-1", "dask-worker-2"}
SERVICES = AIRFLOW_SERVICES | DASK_SERVICES | {"postgres"}
SHARED = "/opt/airflow/shared"


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    if docker:
        pytest.skip(
            "the docker CLI has no compose plugin (`docker compose`) and docker-compose is not installed"
        )
    pytest.skip("the docker CLI is not installed")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _check_services(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        assert env["AIRFLOW_CONN_DASK_DEFAULT"] == "dask://dask-scheduler:8786", name
        assert env["AIRFLOW__PARALLEL_RUN__CACHE_ROOT"] == f"{SHARED}/cache", "the cache is on shared storage"
        mounts = [str(v) for v in services[name]["volumes"]]
        assert any(m.endswith(":/opt/airflow/dags/examples:ro") and "dags" in m for m in mounts), mounts
        assert any(m.endswith(":/opt/airflow/dags/cluster:ro") for m in mounts), mounts
        assert any(m.startswith("shared:") and m.split(":")[1] == SHARED for m in mounts), mounts
    for name in DASK_SERVICES:
        mounts = [str(v) for v in services[name]["volumes"]]
        assert any(m.startswith("shared:") and m.split(":")[1] == SHARED for m in mounts), (
            "same path as Airflow"
        )
    for name in ("dask-worker-1", "dask-worker-2"):
        assert services[name]["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert services["airflow-scheduler"]["command"] in ("scheduler", ["scheduler"])
    for name, service in services.items():  # nothing is published beyond 127.0.0.1
        for port in service.get("ports") or []:
            text = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
            assert text.startswith("127.0.0.1:"), (name, port)


def test_compose_file_structure() -> None:
    """The file itself, with every `${VAR:-default}` at its default (what compose does without .env)."""
    text = (DOCKER / "compose.yaml").read_text()
    compose = yaml.safe_load(re.sub(r"(?<!\$)\$\{[A-Z_]+(?::-([^}]*))?\}", lambda m: m.group(1) or "", text))
    _check_services(compose["services"])
    assert compose["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    assert set(compose["volumes"]) == {"postgres-db", "airflow-logs", "shared"}


def test_docker_compose_config(tmp_path: Path) -> None:
    command = _compose_command()
    done = subprocess.run(
        [*command, "-f", str(DOCKER / "compose.yaml"), "--env-file", str(DOCKER / ".env.example"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    _check_services(resolved["services"])
    api = resolved["services"]["airflow-apiserver"]
    assert (
        _env(api)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == "postgresql+psycopg2://airflow:airflow@postgres/airflow"
    )
    assert api["image"] == "airflow-parallel-run/airflow:local"
    assert resolved["services"]["dask-worker-1"]["image"] == "airflow-parallel-run/dask:local"


def test_worker_image_has_no_airflow_and_matches_the_docs() -> None:
    worker = (DOCKER / "worker.Dockerfile").read_text()
    assert "apache-airflow" not in worker and "ARG APR_EXTRAS=s3,demo" in worker
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", worker, re.M) and "python:3.12-slim" in worker
    airflow = (DOCKER / "airflow.Dockerfile").read_text()
    assert "apache/airflow:3.3.2" in airflow and "ARG APR_EXTRAS=airflow,s3,demo" in airflow
    assert '"dask==${DASK_VERSION}" "distributed==${DASK_VERSION}"' in worker and "[airflow" not in worker
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert 'pip install "dask==2026.8.0" "distributed==2026.8.0" "airflow-parallel-run[s3]"' in deploy
    assert "dask==2026.8.0" in (REPO / "constraints.txt").read_text(), "the docs' pin is the tested version"


def test_compose_dag_parses_and_uses_the_dask_connection(
    tmp_path: Path, airflow_home_env: dict[str, str]
) -> None:
    """The compose stack's DAGs folder: dags/ at examples/, docker/dags at cluster/."""
    dags = tmp_path / "dags"
    dags.mkdir()
    for folder, source in (("examples", REPO / "dags"), ("cluster", DOCKER / "dags")):
        (dags / folder).mkdir()
        for path in source.iterdir():
            if path.suffix == ".py" or path.name == "scripts":
                (dags / folder / path.name).symlink_to(path)
    code = (
        "import json, os\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=os.environ['AIRFLOW__CORE__DAGS_FOLDER'])\n"
        "dag = bag.get_dag('cluster_digits_scoring')\n"
        "op = dag.get_task('score_digits_on_dask')\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, "
        "'dags': sorted(bag.dag_ids), 'conn': op.dask_conn_id, 'script': op.parallel_run_config.entry_script}))\n"
    )
    env = {
        **airflow_home_env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_PARALLEL_RUN_DEMO_ROOT": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["errors"], result["errors"]
    assert {"cluster_digits_scoring", "digits_file_scoring"} <= set(result["dags"])
    assert result["conn"] == "dask_default"
    assert os.path.isfile(result["script"]) and result["script"].endswith("examples/scripts/score_digits.py")

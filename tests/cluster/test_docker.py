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
        bundles = {
            b["name"]: b["kwargs"]["path"]
            for b in json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
        }
        assert bundles == {
            "examples": "/opt/airflow/dags/examples",
            "cluster": "/opt/airflow/dags/cluster",
        }, (
            name,
            "one DAG bundle per mounted DAG folder",
        )
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


def test_images_get_what_builds_the_native_record_scan() -> None:
    """setup.py builds the CSV record scan (airflow_parallel_run/core/inputs/_record_scan.c): both images copy
    it, their build contexts let it in, and no module built on the host gets into an image."""
    for image in ("airflow", "worker"):
        dockerfile = (DOCKER / f"{image}.Dockerfile").read_text()
        assert re.search(r"^COPY .*pyproject\.toml setup\.py README\.md ", dockerfile, re.M), image
        ignore = (DOCKER / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
        assert "!setup.py" in ignore and "**/*.so" in ignore, image


def _compose_airflow() -> tuple[dict[str, str], list[str]]:
    """The environment and the volumes every Airflow container gets, at their defaults."""
    text = (DOCKER / "compose.yaml").read_text()
    compose = yaml.safe_load(re.sub(r"(?<!\$)\$\{[A-Z_]+(?::-([^}]*))?\}", lambda m: m.group(1) or "", text))
    common = compose["x-airflow-common"]
    return {k: str(v) for k, v in common["environment"].items()}, [str(v) for v in common["volumes"]]


def test_compose_dag_parses_and_uses_the_dask_connection(
    tmp_path: Path, airflow_home_env: dict[str, str]
) -> None:
    """The compose stack's DAGs, laid out as its volumes mount them and parsed bundle by bundle as its
    DAG bundle settings say (Airflow's own bundle manager and `BundleDagBag`, one process per bundle,
    as the dag-processor does): every DAG file imports (the examples import partition_assets.py)."""
    env, volumes = _compose_airflow()
    root = tmp_path / "container"  # container path /opt/airflow/dags is root/opt/airflow/dags

    def here(container_path: str) -> Path:
        return root / container_path.lstrip("/")

    for volume in volumes:
        source, target = volume.split(":")[:2]
        if target.startswith(env["AIRFLOW__CORE__DAGS_FOLDER"]):
            here(target).parent.mkdir(parents=True, exist_ok=True)
            here(target).symlink_to((DOCKER / source).resolve(), target_is_directory=True)
    settings = {
        **airflow_home_env,
        "AIRFLOW__CORE__DAGS_FOLDER": str(here(env["AIRFLOW__CORE__DAGS_FOLDER"])),
        "AIRFLOW_PARALLEL_RUN_DEMO_ROOT": str(tmp_path),
    }
    bundles = env.get("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST")
    if bundles is not None:
        config = json.loads(bundles)
        for bundle in config:
            bundle["kwargs"]["path"] = str(here(bundle["kwargs"]["path"]))
        settings["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps(config)
    names_code = (
        "from airflow.dag_processing.bundles.manager import DagBundlesManager\n"
        "import json\n"
        "print(json.dumps([b.name for b in DagBundlesManager().get_all_dag_bundles()]))\n"
    )
    names = json.loads(_run_python(names_code, settings).splitlines()[-1])
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.bundles.manager import DagBundlesManager\n"
        "from airflow.dag_processing.dagbag import BundleDagBag\n"
        "bundle = DagBundlesManager().get_bundle(sys.argv[1])\n"
        "bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)\n"
        "found = {'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': sorted(bag.dag_ids)}\n"
        "if 'cluster_digits_scoring' in bag.dag_ids:\n"
        "    op = bag.get_dag('cluster_digits_scoring').get_task('score_digits_on_dask')\n"
        "    found.update(conn=op.dask_conn_id, script=op.parallel_run_config.entry_script)\n"
        "print(json.dumps(found))\n"
    )
    errors: dict[str, str] = {}
    dags: set[str] = set()
    result: dict[str, Any] = {}
    for name in names:
        found = json.loads(_run_python(code, settings, name).splitlines()[-1])
        errors.update(found.pop("errors"))
        dags.update(found.pop("dags"))
        result.update(found)
    assert not errors, errors
    assert {"cluster_digits_scoring", "digits_file_scoring", "partitioned_daily_scoring"} <= dags, dags
    assert result["conn"] == "dask_default"
    assert os.path.isfile(result["script"]) and result["script"].endswith("examples/scripts/score_digits.py")


def _run_python(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout

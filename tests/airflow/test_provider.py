"""Provider packaging: the `apache_airflow_provider` entry point, as Airflow itself reads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema

from airflow_parallel_run.provider_info import get_provider_info


def test_provider_info_does_not_import_airflow() -> None:
    code = (
        "import sys, airflow_parallel_run.provider_info as p; p.get_provider_info(); "
        "assert not any(m == 'airflow' or m.startswith('airflow.') for m in sys.modules), 'airflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_entry_point_is_declared() -> None:
    (entry,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_parallel_run")
    ]
    assert entry.load() is get_provider_info


def test_provider_info_matches_airflow_runtime_schema() -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-parallel-run"
    assert info["versions"] == [import_module("airflow_parallel_run").__version__]


def test_connection_type_declares_fields_and_behaviour() -> None:
    (conn,) = get_provider_info()["connection-types"]
    assert conn["connection-type"] == "dask"
    assert conn["hook-class-name"] == "airflow_parallel_run.hooks.DaskHook"
    fields = conn["conn-fields"]
    assert {
        "address",
        "tls_ca_file",
        "tls_client_cert",
        "tls_client_key",
        "require_encryption",
        "dashboard_url",
    } <= set(fields)
    for name, field in fields.items():
        assert field["label"] and "type" in field["schema"], name
    assert fields["require_encryption"]["schema"]["type"] == ["boolean", "null"]
    behaviour = conn["ui-field-behaviour"]
    assert {"login", "password"} <= set(behaviour["hidden-fields"])
    assert behaviour["relabeling"]["host"] == "Scheduler host"


def test_declared_classes_import() -> None:
    info = get_provider_info()
    hook = info["connection-types"][0]["hook-class-name"]
    module, name = hook.rsplit(".", 1)
    hook_class = getattr(import_module(module), name)
    assert hook_class.conn_type == "dask" and hook_class.conn_name_attr == "dask_conn_id"
    assert hook_class.default_conn_name == "dask_default"
    for link in info["extra-links"]:
        module, name = link.rsplit(".", 1)
        assert getattr(import_module(module), name)().name == "Dask dashboard"
    for group in ("operators", "hooks"):
        for module in info[group][0]["python-modules"]:
            import_module(module)


def test_airflow_providers_cli_lists_the_provider_hook_and_link() -> None:
    env = os.environ.copy()

    def cli(*args: str) -> list[dict[str, str]]:
        out = subprocess.run(
            [sys.executable, "-m", "airflow", "providers", *args, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        return json.loads(out[out.index("[") :])

    providers = {p["package_name"]: p for p in cli("list")}
    assert providers["airflow-parallel-run"]["version"] == "0.1.0"
    hooks = {h["connection_type"]: h for h in cli("hooks")}
    assert hooks["dask"]["class"] == "airflow_parallel_run.hooks.DaskHook"
    links = [link["extra_link_class_name"] for link in cli("links")]
    assert "airflow_parallel_run.links.DaskDashboardLink" in links

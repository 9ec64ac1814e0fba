"""Airflow provider metadata (entry point `apache_airflow_provider`). Must not import Airflow.

Airflow reads this at start-up (``airflow providers list``, the connection form, extra links) without
importing the hook or operator modules, so everything the UI needs is declared here: the ``dask``
connection type with its fields (the declarative ``conn-fields`` / ``ui-field-behaviour`` form of
Airflow 3.2+), the hook and operator modules, and the "Dask dashboard" extra link.
"""

from __future__ import annotations

from typing import Any

from airflow_parallel_run import __version__  # the package face imports nothing of Airflow

PACKAGE_NAME = "airflow-parallel-run"
INTEGRATION = "Dask (Parallel Run)"
CONN_TYPE = "dask"

_STRING = {"type": ["string", "null"]}

DASK_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "address": {
        "label": "Scheduler address",
        "schema": _STRING,
        "description": "Full scheduler address, e.g. tls://dask-scheduler:8786. Wins over Host/Port.",
    },
    "protocol": {
        "label": "Protocol",
        "schema": _STRING,
        "description": "tcp or tls, used with Host/Port (default: tls when TLS files are set, else tcp).",
    },
    "tls_ca_file": {
        "label": "TLS CA file",
        "schema": _STRING,
        "description": "Path (on the Airflow worker) of the CA certificate that signed the scheduler's cert.",
    },
    "tls_client_cert": {
        "label": "TLS client certificate",
        "schema": _STRING,
        "description": "Path of the client certificate (PEM) presented to the scheduler.",
    },
    "tls_client_key": {
        "label": "TLS client key",
        "schema": _STRING,
        "description": "Path of the client private key (PEM); may be omitted when the cert file holds it.",
    },
    "require_encryption": {
        "label": "Require encryption",
        "schema": {"type": ["boolean", "null"], "default": False},
        "description": "Refuse unencrypted (tcp://) communication.",
    },
    "dashboard_url": {
        "label": "Dashboard URL",
        "schema": _STRING,
        "description": "Dask dashboard URL shown as the task's extra link, e.g. http://dask-scheduler:8787/status.",
    },
    "connect_timeout": {
        "label": "Connect timeout (s)",
        "schema": {"type": ["integer", "null"], "default": 30},
        "description": "Seconds to wait for the scheduler when connecting.",
    },
}


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow's ProvidersManager validates and loads."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Parallel Run (Dask)",
        "description": "ParallelRunStep-style batch inference: fan mini-batches out to a Dask cluster.",
        "versions": [__version__],
        "state": "ready",
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://distributed.dask.org/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_parallel_run.operators"]}
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_parallel_run.hooks"]}],
        "sensors": [{"integration-name": INTEGRATION, "python-modules": ["airflow_parallel_run.sensors"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["airflow_parallel_run.triggers"]}],
        "connection-types": [
            {
                "hook-class-name": "airflow_parallel_run.hooks.DaskHook",
                "hook-name": "Dask",
                "connection-type": CONN_TYPE,
                "conn-fields": DASK_CONN_FIELDS,
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "password"],
                    "relabeling": {"host": "Scheduler host", "port": "Scheduler port"},
                    "placeholders": {
                        "host": "dask-scheduler (or tls://dask-scheduler)",
                        "port": "8786",
                        "address": "tls://dask-scheduler:8786",
                        "tls_ca_file": "/etc/dask/ca.pem",
                        "tls_client_cert": "/etc/dask/client.pem",
                        "tls_client_key": "/etc/dask/client.key",
                        "dashboard_url": "http://dask-scheduler:8787/status",
                    },
                },
            }
        ],
        "extra-links": ["airflow_parallel_run.links.DaskDashboardLink"],
    }

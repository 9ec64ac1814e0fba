"""DaskHook: connection parsing (URI and JSON forms) and real connections to tcp:// and tls:// clusters.

Connections come from `AIRFLOW_CONN_<ID>` environment variables: no metadata DB is needed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster
from distributed.security import Security

from airflow_parallel_run.hooks import DaskHook, security_from_options


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: str | dict[str, Any]) -> DaskHook:
    text = value if isinstance(value, str) else json.dumps(value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", text)
    return DaskHook(conn_id)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ({"conn_type": "dask", "host": "sched"}, "tcp://sched:8786"),
        ({"conn_type": "dask", "host": "sched", "port": 9000}, "tcp://sched:9000"),
        ({"conn_type": "dask", "host": "tls://sched", "port": 9000}, "tls://sched:9000"),
        ({"conn_type": "dask", "host": "sched", "extra": {"protocol": "tls"}}, "tls://sched:8786"),
        (
            {"conn_type": "dask", "host": "x", "extra": {"address": "tls://10.0.0.5:8786"}},
            "tls://10.0.0.5:8786",
        ),
        ({"conn_type": "dask", "extra": {"extra__dask__address": "tcp://a:1"}}, "tcp://a:1"),
        ({"conn_type": "dask", "extra": {"address": "b:2"}}, "tcp://b:2"),
        ("dask://sched:8786", "tcp://sched:8786"),
        ("dask://tls://sched:8786", "tls://sched:8786"),
        ("dask://sched?address=tls%3A%2F%2Fother%3A9999", "tls://other:9999"),
    ],
)
def test_scheduler_address(
    monkeypatch: pytest.MonkeyPatch, value: str | dict[str, Any], address: str
) -> None:
    assert _conn(monkeypatch, "dask_addr", value).scheduler_address == address


def test_tls_files_default_to_tls_and_build_a_security(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("tls_ca_file", "tls_client_cert", "tls_client_key")}
    for path in files.values():
        path.write_text("pem")
    extra = {name: str(path) for name, path in files.items()} | {
        "require_encryption": "true",
        "dashboard_url": "https://dask.example/status",
    }
    hook = _conn(monkeypatch, "dask_tls", {"conn_type": "dask", "host": "sched", "extra": extra})
    assert hook.scheduler_address == "tls://sched:8786"
    assert hook.require_encryption is True
    assert hook.dashboard_url == "https://dask.example/status"
    security = hook.get_security()
    assert isinstance(security, Security)
    assert security.require_encryption is True
    assert security.tls_ca_file == str(files["tls_ca_file"])
    assert security.tls_client_key == str(files["tls_client_key"])
    # what a trigger gets instead of the connection id: JSON, no secrets, the same Security
    options = json.loads(json.dumps(hook.cluster_options()))
    assert options["address"] == "tls://sched:8786" and options["timeout"] == 30.0
    again = security_from_options(options)
    assert isinstance(again, Security) and again.require_encryption is True
    assert (again.tls_ca_file, again.tls_client_key) == (security.tls_ca_file, security.tls_client_key)


def test_no_tls_means_no_security(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _conn(monkeypatch, "dask_plain", {"conn_type": "dask", "host": "sched"})
    assert hook.get_security() is None
    assert hook.dashboard_url is None
    assert security_from_options(hook.cluster_options()) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"conn_type": "dask"}, "no scheduler address"),
        (
            {"conn_type": "dask", "host": "sched", "extra": {"protocol": "udp"}},
            "protocol 'udp' is not allowed",
        ),
        (
            {"conn_type": "dask", "host": "s", "extra": {"tls_ca_file": "/missing/ca.pem"}},
            "is not an existing file",
        ),
        ({"conn_type": "dask", "host": "s", "extra": {"connect_timeout": "soon"}}, "connect_timeout"),
    ],
)
def test_bad_connections_name_the_problem(
    monkeypatch: pytest.MonkeyPatch, value: dict[str, Any], message: str
) -> None:
    hook = _conn(monkeypatch, "dask_bad", value)
    ok, text = hook.test_connection()
    assert not ok
    assert message in text
    assert "dask_bad" in text


def test_unreachable_scheduler_fails_test_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _conn(monkeypatch, "dask_down", {"conn_type": "dask", "host": "127.0.0.1", "port": 1})
    hook_fast = DaskHook("dask_down", timeout=1)
    assert hook.timeout == 30
    ok, text = hook_fast.test_connection()
    assert not ok and "tcp://127.0.0.1:1" in text


@pytest.fixture(scope="module")
def tcp_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster


def test_get_client_and_test_connection_on_a_real_cluster(
    monkeypatch: pytest.MonkeyPatch, tcp_cluster: LocalCluster
) -> None:
    host, port = tcp_cluster.scheduler_address.removeprefix("tcp://").rsplit(":", 1)
    hook = _conn(monkeypatch, "dask_real", f"dask://{host}:{port}")
    ok, text = hook.test_connection()
    assert ok, text
    assert "1 workers, 2 threads" in text
    with hook.get_client() as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6


def test_tls_cluster_with_certificate_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A tls:// scheduler that requires encryption, reached with the CA/cert/key files of the connection."""
    security = Security.temporary()
    files = {}
    for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(getattr(security, name))
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tls://",
        host="127.0.0.1",
        security=security,
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    ) as cluster:
        extra = {name: str(path) for name, path in files.items()} | {"require_encryption": True}
        port = cluster.scheduler_address.rsplit(":", 1)[1]
        hook = _conn(
            monkeypatch,
            "dask_tls_real",
            {"conn_type": "dask", "host": "127.0.0.1", "port": int(port), "extra": extra},
        )
        assert hook.scheduler_address == cluster.scheduler_address
        ok, text = hook.test_connection()
        assert ok, text
        with hook.get_client() as client:
            assert client.submit(lambda: 41 + 1).result() == 42

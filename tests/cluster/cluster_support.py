"""Helpers for the cluster tests: processes started with the `dask` CLIs, test TLS files, moto S3.

Imported by tests/cluster/conftest.py (fixtures) and the test modules.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
SECRET = "apr-TEST-secret-" + uuid.uuid4().hex  # must never appear in any log
ACCESS_KEY = "AKIAAPRTESTKEY"
#: Addresses the namespace test gives its hosts (a /29 that exists only inside its namespaces).
NETNS_ADDRESSES = ("10.213.117.1", "10.213.117.2", "10.213.117.3")


def need(module: str, why: str) -> None:
    """Skips when an optional test dependency is missing, except in CI, where it must be installed."""
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed but CI must run {why}: install the dev extra")
        pytest.skip(f"{module} is not installed ({why} needs the dev extra)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- processes ---------------------------------------------------------------------------------------
@dataclass
class Procs:
    """Processes started by a fixture; `stop()` (the finalizer) kills each one's whole session."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env=env or dict(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.log_dir,
            )
        self.started.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.started:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.output(name)[-3000:]}")

    def output(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_output(self) -> str:
        return "\n".join(self.output(name) for name, _ in self.started)

    def stop(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        for _name, proc in reversed(self.started):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # nanny children, entry-script processes
            proc.wait()


def worker_env(blocker: Path) -> dict[str, str]:
    """The Dask workers' environment: no Airflow, no AWS credentials, no instance-metadata lookups."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))}
    env.update(
        {
            "PYTHONPATH": str(blocker),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# -- TLS -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def security(self) -> Any:
        from distributed.security import Security

        return Security(
            tls_ca_file=str(self.ca),
            tls_client_cert=str(self.cert),
            tls_client_key=str(self.key),
            require_encryption=True,
        )

    def cli_args(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def make_tls_files(folder: Path) -> TlsFiles:
    """A test CA and one certificate signed by it (for the scheduler, the workers and the client)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airflow-parallel-run test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3", *NETNS_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files.key.chmod(0o600)
    return files


# -- Dask clusters -------------------------------------------------------------------------------------
@dataclass
class ExternalCluster:
    """A scheduler and workers started with the `dask` CLIs."""

    address: str
    procs: Procs
    tls: TlsFiles | None
    worker_hosts: tuple[str, ...]
    temp: Path | None = None  # the workers' temp folder (TMPDIR), when the fixture gave them one

    def scratch_left(self) -> dict[str, list[str]]:
        """What the workers left in their scratch root (core/worker/scratch.py), by kind: a job that
        ended leaves no code, side input, working folder or copy of its logs behind."""
        assert self.temp is not None, "this cluster's workers use the machine's temp folder"
        root = self.temp / f"airflow-parallel-run-{os.getuid()}"
        return {
            kind: sorted(os.listdir(root / kind)) if (root / kind).is_dir() else []
            for kind in ("code", "side", "work", "logs")
        }

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, security=self.tls.security() if self.tls else None, timeout="30s")

    def connection(self, **extra: Any) -> dict[str, Any]:
        """The `dask` Airflow connection (JSON form) for this cluster."""
        fields: dict[str, Any] = {"address": self.address, **extra}
        if self.tls is not None:
            fields.update(
                tls_ca_file=str(self.tls.ca),
                tls_client_cert=str(self.tls.cert),
                tls_client_key=str(self.tls.key),
                require_encryption=True,
            )
        return {"conn_type": "dask", "extra": fields}


def start_scheduler(
    procs: Procs, host: str, tls: TlsFiles | None, prefix: Sequence[str] = (), name: str = "scheduler"
) -> str:
    """Starts `dask scheduler` on `host` (port chosen by the OS); returns its address."""
    scheduler_file = procs.log_dir / f"{name}.json"
    argv = [
        *prefix,
        str(BIN / "dask"),
        "scheduler",
        "--host",
        host,
        "--port",
        "0",
        "--no-dashboard",
        "--scheduler-file",
        str(scheduler_file),
    ]
    if tls is not None:
        argv += ["--protocol", "tls", *tls.cli_args()]
    procs.start(name, argv)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        procs.check_alive()
        if scheduler_file.exists():
            try:
                return str(json.loads(scheduler_file.read_text())["address"])
            except (ValueError, KeyError):
                pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not start:\n{procs.output(name)[-3000:]}")


def start_worker(
    procs: Procs,
    address: str,
    host: str,
    env: dict[str, str],
    tls: TlsFiles | None,
    nthreads: int = 2,
    prefix: Sequence[str] = (),
    name: str = "worker",
) -> None:
    argv = [
        *prefix,
        str(BIN / "dask"),
        "worker",
        address,
        "--host",
        host,
        "--nthreads",
        str(nthreads),
        "--nworkers",
        "1",
        "--name",
        name,
        "--memory-limit",
        "0",
        "--no-dashboard",
        "--death-timeout",
        "60",
        "--local-directory",
        str(procs.log_dir / name),
    ]
    if tls is not None:
        argv += tls.cli_args()
    procs.start(name, argv, env)


def wait_for_workers(cluster: ExternalCluster, count: int, timeout: float = 90) -> None:
    with cluster.client() as client:
        deadline = time.monotonic() + timeout
        while True:
            cluster.procs.check_alive()
            if len(client.scheduler_info(n_workers=-1)["workers"]) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} workers did not join:\n{cluster.procs.all_output()[-4000:]}")
            time.sleep(0.2)


# -- S3 (moto server) ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def storage_options(self) -> dict[str, Any]:
        return {
            "key": ACCESS_KEY,
            "secret": SECRET,
            "endpoint_url": self.endpoint,
        }

    def aws_connection(self) -> dict[str, Any]:
        """An Airflow `aws` connection (JSON form) for this server."""
        return {
            "conn_type": "aws",
            "login": ACCESS_KEY,
            "password": SECRET,
            "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }


@dataclass(frozen=True)
class Bucket:
    name: str
    storage_options: dict[str, Any]
    fs: Any

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *parts])

    def put(self, key: str, data: bytes | str) -> str:
        self.fs.pipe_file(f"{self.name}/{key}", data.encode() if isinstance(data, str) else data)
        return self.url(key)

    def read(self, key: str) -> str:
        self.fs.invalidate_cache()
        return str(self.fs.cat_file(f"{self.name}/{key}").decode())

    def ls(self, prefix: str = "") -> list[str]:
        self.fs.invalidate_cache()
        root = f"{self.name}/{prefix}".rstrip("/")
        return sorted(p[len(self.name) + 1 :] for p in self.fs.find(root))

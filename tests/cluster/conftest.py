"""External Dask clusters and an S3 server for the cluster tests, all real OS processes on this machine.

- `tls_files`: a CA and one certificate/key (SANs: localhost, 127.0.0.1-3 and the namespace test's
  addresses) made with `cryptography` for this session.
- `tls_cluster`: `dask scheduler` + two `dask worker` CLI processes from the venv, TLS only
  (`require_encryption`), the scheduler on 127.0.0.1 and the workers on 127.0.0.2 and 127.0.0.3, so
  the engine sees two hosts with distinct IPs. The workers run with Airflow made unimportable (a
  `sitecustomize` import blocker): they get `airflow_parallel_run.core` and its dependencies only.
  Their temp folder (TMPDIR) is one of the session's, so a test can see what a job left in it.
- `s3_server`: moto's S3 server on 127.0.0.1 (`python -m moto.server`); `s3` gives a fresh bucket,
  its `storage_options` (credentials + endpoint) and an `S3FileSystem`.

Every process is started in its own session and killed in the fixture's finalizer. The workers get
no AWS credentials from the environment (and the instance-metadata lookup is off), so a job that
reaches S3 from a worker proves the credentials travelled in `storage_options`.

Airflow: when this folder is collected without tests/airflow, AIRFLOW_HOME points at a temp folder
(as tests/airflow/conftest.py does), so nothing touches ~/airflow. The `dag.test()` run uses its own
AIRFLOW_HOME in a subprocess (`airflow_home_env`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import (
    Bucket,
    ExternalCluster,
    Procs,
    S3Server,
    TlsFiles,
    free_port,
    make_tls_files,
    need,
    start_scheduler,
    start_worker,
    wait_for_workers,
    worker_env,
)

HERE = Path(__file__).resolve().parent

# No test may reach a real AWS endpoint or the instance-metadata address: credentials come only from
# storage_options, and botocore's metadata lookup (169.254.169.254) is switched off in every process.
for _name in [n for n in os.environ if n.startswith("AWS_")]:
    del os.environ[_name]
os.environ.update(
    {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
)

if not Path(os.environ.get("AIRFLOW_HOME", "")).name.startswith("apr-") and "airflow" not in sys.modules:
    _HOME = Path(tempfile.mkdtemp(prefix="apr-cluster-airflow-home-"))
    atexit.register(shutil.rmtree, _HOME, True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(_HOME),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_HOME / 'airflow.db'}",
        }
    )


@pytest.fixture(scope="session")
def airflow_blocker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PYTHONPATH folder whose sitecustomize makes `import airflow` fail (workers must not need it)."""
    guard = tmp_path_factory.mktemp("no-airflow")
    (guard / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "airflow" or name.startswith("airflow."):
                    raise ImportError("airflow is blocked on this Dask worker (test)")
        sys.meta_path.insert(0, _Block())
    """)
    )
    return guard


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA and one certificate signed by it, for the scheduler, the workers and the client."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles, airflow_blocker: Path
) -> Iterator[ExternalCluster]:
    """TLS-only scheduler on 127.0.0.1 and one worker (2 threads) on each of 127.0.0.2 and 127.0.0.3."""
    procs = Procs(tmp_path_factory.mktemp("tls-cluster"))
    try:
        address = start_scheduler(procs, "127.0.0.1", tls_files)
        assert address.startswith("tls://127.0.0.1:"), address
        hosts = ("127.0.0.2", "127.0.0.3")
        temp = tmp_path_factory.mktemp("tls-workers-temp")
        env = {**worker_env(airflow_blocker), "TMPDIR": str(temp)}
        for index, host in enumerate(hosts):
            start_worker(procs, address, host, env, tls_files, name=f"worker-{index + 1}")
        cluster = ExternalCluster(address, procs, tls_files, hosts, temp)
        wait_for_workers(cluster, len(hosts))
        yield cluster
    finally:
        procs.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    need("moto", "the S3 tests (moto server)")
    need("s3fs", "the S3 tests")
    procs = Procs(tmp_path_factory.mktemp("moto"))
    port = free_port()
    try:
        procs.start("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
        deadline = time.monotonic() + 60
        while True:
            procs.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start:\n{procs.output('moto')}") from None
                time.sleep(0.2)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        procs.stop()


@pytest.fixture
def s3(s3_server: S3Server) -> Bucket:
    """A fresh bucket on the moto server."""
    import s3fs

    options = s3_server.storage_options()
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    name = f"apr-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return Bucket(name, options, fs)


# -- Airflow for the subprocess dag.test() -----------------------------------------------
@pytest.fixture(scope="session")
def airflow_home_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for an Airflow subprocess: its own AIRFLOW_HOME, a DAGs folder built like
    tests/airflow/conftest.py does (symlinks to tests/cluster/dags), a migrated SQLite DB."""
    home = tmp_path_factory.mktemp("airflow-home")
    dags = home / "dags"
    dags.mkdir()
    for source in [*sorted((HERE / "dags").glob("*.py")), HERE / "dags" / "scripts"]:
        (dags / source.name).symlink_to(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return env

"""`DaskHook`: a Dask distributed scheduler described by an Airflow connection of type ``dask``.

Connection fields: Host (may carry the scheme, ``tls://dask-scheduler``) and Port (default 8786), or
the ``address`` extra (``tls://dask-scheduler:8786``, wins over Host/Port); extras ``protocol``
(``tcp``/``tls``), ``tls_ca_file``, ``tls_client_cert``, ``tls_client_key``, ``require_encryption``,
``dashboard_url`` and ``connect_timeout``. Extras may also be stored with the ``extra__dask__`` prefix.

Without a connection id the operator uses an embedded ``LocalCluster`` on 127.0.0.1 instead.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from distributed import Client
    from distributed.security import Security

    from airflow_parallel_run.core.inputs.source import ConnectionInfo

DEFAULT_PORT = 8786
PROTOCOLS = ("tcp", "tls", "ws", "wss")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


class DaskHook(BaseHook):
    """Scheduler address, TLS security and dashboard URL of a Dask cluster; `get_client()` connects."""

    conn_name_attr = "dask_conn_id"
    default_conn_name = "dask_default"
    conn_type = "dask"
    hook_name = "Dask"

    def __init__(self, dask_conn_id: str = default_conn_name, timeout: float | None = None) -> None:
        super().__init__()
        self.dask_conn_id = dask_conn_id
        self._timeout = timeout
        self._extra: dict[str, Any] | None = None
        self._conn: Any = None

    # -- connection fields ----------------------------------------------------------------------
    @property
    def connection(self) -> Any:
        """The Airflow connection (fetched once)."""
        if self._conn is None:
            self._conn = self.get_connection(self.dask_conn_id)
        return self._conn

    def _extras(self) -> dict[str, Any]:
        if self._extra is None:
            self._extra = dict(self.connection.extra_dejson or {})
        return self._extra

    def _field(self, name: str) -> Any:
        """An extra by plain name or by its ``extra__dask__`` form; empty strings count as unset."""
        extras = self._extras()
        for key in (name, f"extra__{self.conn_type}__{name}"):
            value = extras.get(key)
            if value not in (None, ""):
                return value
        return None

    def _fail(self, problem: str) -> AirflowException:
        return AirflowException(f"Dask connection {self.dask_conn_id!r}: {problem}")

    @property
    def tls_files(self) -> dict[str, str]:
        """The TLS file extras that are set, by distributed.Security argument name."""
        files = {}
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            value = self._field(name)
            if value is not None:
                files[name] = os.path.expanduser(str(value))
        return files

    @property
    def require_encryption(self) -> bool:
        return _as_bool(self._field("require_encryption") or False)

    @property
    def timeout(self) -> float:
        """Seconds to wait for the scheduler (argument, then the ``connect_timeout`` extra, then 30)."""
        if self._timeout is not None:
            return float(self._timeout)
        value = self._field("connect_timeout")
        try:
            return float(value) if value is not None else 30.0
        except (TypeError, ValueError):
            raise self._fail(f"connect_timeout={value!r} is not a number of seconds") from None

    @property
    def scheduler_address(self) -> str:
        """``tcp://host:port`` or ``tls://host:port`` from the ``address`` extra or Host/Port."""
        address = self._field("address")
        if address is not None:
            address = str(address).strip()
            if "://" not in address:
                address = f"{self._default_protocol()}://{address}"
            self._check_protocol(address.split("://", 1)[0])
            return address
        host = (self.connection.host or "").strip()
        if not host:
            raise self._fail("no scheduler address: set Host (and Port) or the 'address' extra")
        if "://" in host:
            protocol, host = host.split("://", 1)
        else:
            protocol = str(self._field("protocol") or self._default_protocol())
        self._check_protocol(protocol)
        host = host.rstrip("/")
        if ":" in host.rsplit("]", 1)[-1]:  # host already carries a port
            return f"{protocol}://{host}"
        return f"{protocol}://{host}:{self.connection.port or DEFAULT_PORT}"

    def _default_protocol(self) -> str:
        protocol = self._field("protocol")
        if protocol is not None:
            return str(protocol).strip().lower()
        return "tls" if self.tls_files else "tcp"

    def _check_protocol(self, protocol: str) -> None:
        if protocol.lower() not in PROTOCOLS:
            raise self._fail(f"protocol {protocol!r} is not allowed: use one of {', '.join(PROTOCOLS)}")

    @property
    def dashboard_url(self) -> str | None:
        """The ``dashboard_url`` extra (None when unset)."""
        value = self._field("dashboard_url")
        return str(value) if value is not None else None

    # -- Dask objects ---------------------------------------------------------------------------
    def get_security(self) -> Security | None:
        """A `distributed.security.Security` for the TLS files / require_encryption, else None."""
        files = self.tls_files
        if not files and not self.require_encryption:
            return None
        for name, path in files.items():
            if not os.path.isfile(path):
                raise self._fail(f"{name}={path!r} is not an existing file on this worker")
        from distributed.security import Security

        return Security(require_encryption=self.require_encryption, **files)

    def cluster_options(self) -> dict[str, Any]:
        """The scheduler address, TLS file paths, encryption flag and timeout: what a trigger needs to
        reach the cluster without asking Airflow for the connection again (no secrets, only paths)."""
        return {
            "address": self.scheduler_address,
            "tls_files": self.tls_files,
            "require_encryption": self.require_encryption,
            "timeout": self.timeout,
        }

    def get_client(self) -> Client:
        """A `distributed.Client` connected to the scheduler (the caller closes it)."""
        from distributed import Client

        address = self.scheduler_address
        try:
            return Client(address, security=self.get_security(), timeout=f"{self.timeout}s")
        except OSError as exc:
            raise self._fail(f"cannot connect to {address}: {exc}") from exc

    def get_conn(self) -> Client:
        """Alias of `get_client()` (the Airflow hook convention)."""
        return self.get_client()

    def test_connection(self) -> tuple[bool, str]:
        """Connects, counts workers and disconnects (the UI's "Test" button)."""
        try:
            with self.get_client() as client:
                workers = client.scheduler_info(n_workers=-1).get("workers", {})
                threads = sum(int(w.get("nthreads", 0)) for w in workers.values())
                return (
                    True,
                    f"Connected to {self.scheduler_address}: {len(workers)} workers, {threads} threads",
                )
        except Exception as exc:  # noqa: BLE001 - the message is the result
            return False, str(exc)


def security_from_options(options: dict[str, Any]) -> Security | None:
    """`distributed.security.Security` from `DaskHook.cluster_options()` (None without TLS)."""
    files = dict(options.get("tls_files") or {})
    if not files and not options.get("require_encryption"):
        return None
    from distributed.security import Security

    return Security(require_encryption=bool(options.get("require_encryption")), **files)


def storage_options_from_connection(conn_id: str) -> dict[str, Any]:
    """fsspec ``storage_options`` (credentials, endpoint) from an Airflow connection.

    An ``aws`` connection (no Amazon provider needed) gives s3fs options: Login = access key id,
    Password = secret access key, extras ``aws_session_token``, ``region_name`` and ``endpoint_url``
    (or ``service_config.s3.endpoint_url``). Any connection may also hold a ``storage_options`` extra
    (a JSON object of fsspec options, e.g. for ``abfs://`` or ``gs://``); it is applied last. The
    secrets are registered with Airflow's secrets masker, so they never show in task logs.
    """
    from airflow.sdk.log import mask_secret

    options = connection_storage_options(BaseHook.get_connection(conn_id))
    for name in SECRET_OPTIONS:
        if options.get(name):
            mask_secret(str(options[name]))
    return options


def connection_info(conn_id: str) -> ConnectionInfo:
    """An Airflow connection as the engine takes it (`core.inputs.source.ConnectionResolver`): a source
    that names a `conn_id` (a database) gets its URI and extras from here. The password is registered
    with Airflow's secrets masker, so it never shows in task logs."""
    from airflow.sdk.log import mask_secret

    from airflow_parallel_run.core.inputs.source import ConnectionInfo

    conn = BaseHook.get_connection(conn_id)
    if conn.password:
        mask_secret(str(conn.password))
    return ConnectionInfo(uri=conn.get_uri(), extras=dict(conn.extra_dejson or {}))


#: fsspec options that hold secrets (masked in logs, never shown).
SECRET_OPTIONS = ("secret", "token", "password", "account_key", "sas_token", "client_secret")


def connection_storage_options(conn: Any) -> dict[str, Any]:
    """The fsspec options of a connection object (the task SDK's or the metadata DB's `Connection`):
    the mapping `storage_options_from_connection` documents, without the masking."""
    extra = dict(conn.extra_dejson or {})
    options: dict[str, Any] = {}
    if conn.conn_type in ("aws", "s3"):
        if conn.login:
            options["key"] = conn.login
        if conn.password:
            options["secret"] = conn.password
        if extra.get("aws_session_token"):
            options["token"] = extra["aws_session_token"]
        s3_config = (extra.get("service_config") or {}).get("s3") or {}
        endpoint = extra.get("endpoint_url") or s3_config.get("endpoint_url")
        if endpoint:
            options["endpoint_url"] = endpoint
        if extra.get("region_name"):
            options.setdefault("client_kwargs", {})["region_name"] = extra["region_name"]
    custom = extra.get("storage_options") or {}
    if isinstance(custom, str):
        import json

        custom = json.loads(custom)
    if not isinstance(custom, dict):
        raise AirflowException(
            f"Connection {conn.conn_id!r}: the storage_options extra must be a JSON object"
        )
    options.update(custom)
    return options

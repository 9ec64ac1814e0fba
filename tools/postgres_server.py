"""A private PostgreSQL server for the local Airflow stack: `initdb` + `pg_ctl`, on 127.0.0.1 only.

Airflow 3 runs its scheduler, dag-processor, triggerer and api-server as separate processes that all
write the metadata database; SQLite serialises them with a file lock and loses races under load
(a CLI command that commits half its work, a scheduler that dies of `ObjectDeletedError`). Every
real deployment uses PostgreSQL (docker/compose.yaml too), with row-level locks that also let two
schedulers share the work. This module gives the stack its own cluster in a folder of its home:

- the binaries come from PATH or Debian's `/usr/lib/postgresql/<version>/bin` (`make postgres`
  installs the package when they are missing);
- PostgreSQL refuses to run as root, so as root the server runs as the unprivileged `postgres`
  account the Debian package creates (`AIRFLOW_STACK_POSTGRES_USER` names another one) and the
  data folder belongs to it; otherwise it runs as the calling user;
- it listens on 127.0.0.1 only, on a free port, with no Unix socket, and the one role (`airflow`)
  needs a password (scram-sha-256): other users of the machine cannot get in;
- `pg_ctl` starts the postmaster in a session of its own, so no signal meant for the caller's
  terminal or process group reaches it; `stop()` shuts it down (fast, then immediate, then
  SIGKILL) and, for a throw-away cluster, deletes the folder.

Nothing here imports Airflow or a database driver: it drives the PostgreSQL programs.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

BIN_GLOB = "/usr/lib/postgresql/*/bin"
ACCOUNT_ENV = "AIRFLOW_STACK_POSTGRES_USER"
DEFAULT_ACCOUNT = "postgres"
SERVER_LOG = "server.log"
# Settings for every start (`-c` options): TCP on loopback only, no Unix socket (its path would be
# limited to 107 bytes and land in a folder other users may read), and room for the connection pools
# of five Airflow processes plus CLI calls.
BASE_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": "200",
}
# For a throw-away cluster (the e2e tests): nothing is worth an fsync there.
THROWAWAY_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
# PostgreSQL's own defaults: what a deployment runs, for a throw-away cluster that must behave like one
# (the Airflow benchmark).
DURABLE_SETTINGS: Mapping[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}


class PostgresError(RuntimeError):
    """The server could not be found, created, started or stopped (the message says what to do)."""


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/", path)
    return tuple(int(part) for part in match.groups() if part) if match else (0,)


def find_bin_dir() -> Path:
    """The folder with `initdb`, `pg_ctl` and `postgres`: the one of `pg_ctl` on PATH, else the newest
    `/usr/lib/postgresql/<version>/bin` (Debian keeps the server programs off PATH)."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob(BIN_GLOB), key=_version_key, reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresError(
        "the PostgreSQL server programs (initdb, pg_ctl, postgres) are not on PATH nor in "
        f"{BIN_GLOB}: run `make postgres` (it runs `apt-get install -y postgresql`)"
    )


def server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None (the calling user) unless we are root."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(ACCOUNT_ENV) or DEFAULT_ACCOUNT
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no '{name}' account to run it as: "
            f"run `make postgres` (it creates one), or set {ACCOUNT_ENV} to an unprivileged user"
        ) from None
    if account.pw_uid == 0:
        raise PostgresError(f"{ACCOUNT_ENV}={name} is root; PostgreSQL needs an unprivileged account")
    return account


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in `postmaster.pid` when that process is alive, else None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by the server account
    return pid


def kill_server(pid: int, grace: float = 10.0) -> None:
    """Immediate shutdown of the postmaster `pid` (SIGQUIT: it stops its backends and exits without a
    checkpoint), then SIGKILL to it and to every backend still alive after `grace` seconds.

    Backends run in sessions of their own, so a process-group signal would miss them: they are found
    as the postmaster's children first.
    """
    try:
        import psutil

        children = psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - gone already, or psutil is missing
        children = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()


def _alive(pid: int) -> bool:
    try:
        import psutil

        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess
        return False


@dataclass
class PostgresServer:
    """One cluster at `location` (created by `initdb` on the first start), served on 127.0.0.1.

    `location` is a folder of the stack's home. When we are root and the server account cannot
    reach it (a home inside a root-only folder such as a `mktemp -d` clone), the cluster lives in a
    private temp folder instead and `location` is a symlink to it. `keep=False` makes the cluster
    throw-away: `stop()` deletes it, and `start()` replaces one left by a process that was killed.
    """

    location: Path
    password: str
    role: str = "airflow"
    database: str = "airflow"
    keep: bool = False
    settings: Mapping[str, str] = field(default_factory=dict)
    port: int = 0  # 0: a free one at each start
    start_timeout: float = 120.0
    bin_dir: Path | None = None

    def __post_init__(self) -> None:
        self.location = Path(self.location).absolute()
        self.account = server_account()
        self.pid: int | None = None
        self._started_port = 0

    # -- where and who ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        """The cluster folder (`location`, or the folder its symlink points to)."""
        return self.location.resolve() if self.location.is_symlink() else self.location

    @property
    def log_file(self) -> Path:
        return self.data_dir / SERVER_LOG

    def _bin(self, name: str) -> str:
        if self.bin_dir is None:
            self.bin_dir = find_bin_dir()
        return str(self.bin_dir / name)

    def _run(self, args: list[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
        """Runs a PostgreSQL program as the server account; returns its output, raises on failure."""
        kwargs: dict[str, object] = {}
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        base = {"PATH": f"{Path(args[0]).parent}:/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}
        if self.account is not None:
            base["HOME"] = self.account.pw_dir
        result = subprocess.run(
            args,
            env={**base, **(env or {})},
            cwd="/",  # the caller's folder may be unreadable to the server account
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise PostgresError(
                f"`{Path(args[0]).name} {' '.join(args[1:4])} ...` exited {result.returncode}:\n"
                f"{(result.stdout + result.stderr)[-3000:]}"
            )
        return str(result.stdout + result.stderr)

    def _give_to_account(self, path: Path) -> None:
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _reachable(self, folder: Path) -> bool:
        """Whether the server account can enter `folder` (every parent searchable; ACLs included)."""
        if self.account is None:
            return True
        result = subprocess.run(
            ["test", "-x", str(folder)],
            user=self.account.pw_uid,
            group=self.account.pw_gid,
            extra_groups=[],
            cwd="/",
            check=False,
        )
        return result.returncode == 0

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """E.g. `PostgreSQL 15.18`."""
        output = self._run([self._bin("postgres"), "--version"], timeout=30)
        match = re.search(r"\(PostgreSQL\)\s+(\S+)", output)
        return f"PostgreSQL {match.group(1) if match else output.strip()}"

    @property
    def listen_port(self) -> int:
        """The port it listens on (0 before `start()`)."""
        return self._started_port

    def url(self, driver: str = "psycopg2") -> str:
        """The SQLAlchemy URL, with the password."""
        return (
            f"postgresql+{driver}://{quote(self.role, safe='')}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self._started_port}/{quote(self.database, safe='')}"
        )

    @property
    def display_url(self) -> str:
        """Where it listens, without the password (for logs and the start-up lines)."""
        return f"postgresql://{self.role}@127.0.0.1:{self._started_port}/{self.database}"

    def start(self) -> None:
        """Creates the cluster when there is none, starts the server and creates the database."""
        if self.pid is not None:
            return
        stale = postmaster_pid(self.data_dir) if self._initialised() else None
        if stale is not None:
            # The caller holds the home's lock (see airflow_stack.Stack), so a server still running on
            # this folder was left by a stack that was killed before it could stop it.
            kill_server(stale)
        if self._initialised() and not self.keep:
            self.remove()
        created = not self._initialised()
        if created:
            self._create()
        for attempt in range(3):  # a free port can be taken between the check and the bind
            port = self.port or free_port()
            try:
                self._pg_ctl_start(port)
                break
            except PostgresError as exc:
                in_use = "could not bind" in self.log_tail(20) or "already in use" in str(exc)
                if not in_use or self.port or attempt == 2:
                    raise
        self._started_port = port
        self.pid = postmaster_pid(self.data_dir)
        if self.pid is None:
            raise PostgresError(
                f"the server started but {self.data_dir}/postmaster.pid names no live process"
            )
        if created or not self._database_exists():
            self._run(
                [self._bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", self.role, self.database],
                timeout=60,
                env={"PGPASSWORD": self.password},
            )

    def _initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def _create(self) -> None:
        if self.location.is_symlink() or self.location.exists():
            self.remove()
        self.location.parent.mkdir(parents=True, exist_ok=True)
        if self._reachable(self.location.parent):
            self.location.mkdir(mode=0o700)
            self._give_to_account(self.location)
        else:  # root-only parents: a private folder of the account's own, linked from the home
            target = Path(tempfile.mkdtemp(prefix="airflow-stack-postgres-"))
            self._give_to_account(target)
            if not self._reachable(target):
                target.rmdir()
                raise PostgresError(
                    f"the '{self.account.pw_name if self.account else '?'}' account can reach neither "
                    f"{self.location.parent} nor the temp folder {target.parent}: pass a --home it can reach"
                )
            self.location.symlink_to(target, target_is_directory=True)
        descriptor, pwfile = tempfile.mkstemp(prefix="airflow-stack-pw-")
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(self.password + "\n")
            self._give_to_account(Path(pwfile))
            args = [self._bin("initdb"), "-D", str(self.data_dir), "-U", self.role, f"--pwfile={pwfile}"]
            args += ["--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-instructions"]
            if not self.keep:
                args.append("--no-sync")
            self._run(args, timeout=300)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(pwfile)

    def _pg_ctl_start(self, port: int) -> None:
        settings = {**BASE_SETTINGS, **({} if self.keep else THROWAWAY_SETTINGS), **self.settings}
        settings["port"] = str(port)
        options = " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())
        # -l: the server's log; -w: wait until it accepts connections.
        args = [self._bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w"]
        args += ["-t", str(int(self.start_timeout)), "-o", options, "start"]
        try:
            self._run(args, timeout=self.start_timeout + 30)
        except PostgresError as exc:
            raise PostgresError(f"{exc}\n{self.log_file} ends with:\n{self.log_tail()}") from None

    def _database_exists(self) -> bool:
        where = ["-h", "127.0.0.1", "-p", str(self._started_port), "-U", self.role, "-d", "postgres"]
        output = self._run(
            [
                self._bin("psql"),
                *where,
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
            ],
            timeout=60,
            env={"PGPASSWORD": self.password},
        )
        return output.strip() == "1"

    def stop(self) -> None:
        """Stops the server (fast shutdown; immediate, then SIGKILL when that hangs) and, when it is
        throw-away, deletes the cluster. Idempotent."""
        pid = self.pid or (postmaster_pid(self.data_dir) if self._initialised() else None)
        self.pid = None
        if pid is not None:
            try:
                self._run(
                    [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
                    timeout=60,
                )
            except (PostgresError, subprocess.TimeoutExpired):
                kill_server(pid)
            if _alive(pid):
                kill_server(pid, grace=5.0)
        if not self.keep:
            self.remove()

    def remove(self) -> None:
        """Deletes the cluster folder (and the symlink to it)."""
        target = self.data_dir
        if self.location.is_symlink():
            self.location.unlink()
        shutil.rmtree(target, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

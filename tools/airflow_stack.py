#!/usr/bin/env python
"""A local Apache Airflow 3 stack for the example DAGs: `make airflow`, the e2e tests' fixture, the bench.

    python tools/airflow_stack.py [--home DIR] [--port N] [--password PW] [--demo-root DIR] [--schedulers N]

Creates AIRFLOW_HOME (default `<repo>/.airflow`), starts a private PostgreSQL server for the metadata
database (tools/postgres_server.py: `initdb` + `pg_ctl` on 127.0.0.1, its cluster in
`AIRFLOW_HOME/postgres`), runs `airflow db migrate`, writes the simple auth manager's passwords file,
then starts the api-server, the scheduler(s), the dag-processor and the triggerer (LocalExecutor,
127.0.0.1 only), each in its own process group with its output in `AIRFLOW_HOME/logs/<component>.out`.
Once `/api/v2/monitor/health` reports every component healthy it prints the UI address, the database
and the admin credentials; Ctrl-C (SIGINT) or SIGTERM stops everything, the database server included.

Like a process supervisor (systemd, `restart: unless-stopped` in docker/compose.yaml), it restarts a
component that exits on its own, up to `max_restarts` times, and says so with the end of its log.
As systemd does for a service's control group, it first kills what the dead component left running
(its process group and every process started under it, found by an environment tag): a task whose
scheduler died is then re-run by a live scheduler, never run twice at once. The e2e tests treat a
restart they did not cause (`Stack.expect_restart`) as a failure.

A watchdog process (tools/stack_watchdog.py) stops the components and the database server when the
process that started them dies without stopping them (a SIGKILLed test run), and a lock on the home
keeps a second stack off it.

The tests import `Stack` (a context manager) and start the same stack on free ports.
This module never imports Airflow: it drives the `airflow` CLI and the REST API.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postgres_server import PostgresError, PostgresServer  # noqa: E402
from stack_watchdog import kill_all  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO / ".airflow"
EXAMPLE_DAG_IDS = (
    "daily_backfill_scoring",
    "digits_file_scoring",
    "iris_tabular_scoring",
    "side_inputs_scoring",
)
# The components of a one-scheduler stack; `Stack.components` adds `scheduler-2`, ... for more.
COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
WATCHDOG = Path(__file__).resolve().parent / "stack_watchdog.py"
# Every process a stack starts, and everything those start (task processes, Dask workers, entry-script
# processes), inherits these: the stack's id, and which component (and which start of it) it runs under.
STACK_ID_ENV = "AIRFLOW_STACK_ID"
COMPONENT_ENV = "AIRFLOW_STACK_COMPONENT"


def component_tag(stack_id: str, component: str, generation: int) -> str:
    """The value of COMPONENT_ENV in every process a component starts. A restart kills what carries the
    dead component's tag, so the stack's id is part of it: a second stack on the host (a test starting
    `make airflow` beside the session's stack) has components of the same names."""
    return f"{stack_id}/{component}#{generation}"


class StackError(RuntimeError):
    """The stack could not start, or broke (the message says which component and where its log is)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _descendants(pid: int) -> list[Any]:
    """psutil handles of every live descendant of `pid` (empty when psutil or the process is gone)."""
    try:
        import psutil

        return list(psutil.Process(pid).children(recursive=True))
    except Exception:  # noqa: BLE001 - the process is already gone, or psutil is missing
        return []


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _command(component: str) -> str:
    """`scheduler-2` runs `airflow scheduler`."""
    return "scheduler" if component.startswith("scheduler") else component


@dataclass
class Stack:
    """api-server + scheduler(s) + dag-processor + triggerer on 127.0.0.1 and a PostgreSQL server, sharing
    one AIRFLOW_HOME.

    `start()` (or `with Stack(...) as stack:`) prepares the home and waits until the stack is healthy;
    `stop()` terminates every process group (and any process they left behind), stops the database
    server and is idempotent.
    """

    home: Path = DEFAULT_HOME
    port: int = 8080
    username: str = "admin"
    password: str | None = None  # None: the one in the passwords file, else a new random one
    dags_folder: Path = REPO / "dags"
    demo_root: Path | None = None  # AIRFLOW_PARALLEL_RUN_DEMO_ROOT; None keeps the DAGs' default
    cache_root: Path | None = None  # [parallel_run] cache_root; None: <home>/parallel_run_cache
    parallelism: int = 2  # LocalExecutor slots of each scheduler
    demo_data: bool = False  # write the example DAGs' demo data before starting, when it is missing
    extra_env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    startup_timeout: float = 240.0
    quiet: bool = False
    max_restarts: int = 3  # per component, after start-up; then `restart_exited()` raises
    schedulers: int = 1  # Airflow runs several schedulers side by side on PostgreSQL (row locks)
    keep_database: bool = False  # False: the cluster in <home>/postgres is deleted by stop()
    database_settings: Mapping[str, str] = field(default_factory=dict)  # PostgreSQL `-c` settings
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    restarts: list[str] = field(default_factory=list, init=False)  # one line per restart, for reports
    unexpected_restarts: list[str] = field(default_factory=list, init=False)  # not `expect_restart`ed

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()
        if self.schedulers < 1:
            raise StackError(f"schedulers={self.schedulers}: a stack needs at least one scheduler")
        self.worker_log_port = free_port()  # the first scheduler's; the others get their own
        self.trigger_log_port = free_port()
        self._log_ports = {name: free_port() for name in self.components if name.startswith("scheduler-")}
        self.stack_id = secrets.token_hex(8)
        self.database: PostgresServer | None = None
        self.acknowledged_restarts = 0  # unexpected restarts already reported (see raise_if_broken)
        self._env: dict[str, str] | None = None
        self._lock = threading.RLock()  # start/stop vs. a supervising thread's restarts
        self._generation: dict[str, int] = {}
        self._allowed_restarts: dict[str, int] = {}
        self._home_lock: IO[str] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- paths and environment ---------------------------------------------------------------------
    @property
    def components(self) -> tuple[str, ...]:
        """`api-server`, `scheduler` (and `scheduler-2`, ... when `schedulers` > 1), `dag-processor`,
        `triggerer`."""
        extra = tuple(f"scheduler-{n}" for n in range(2, self.schedulers + 1))
        return ("api-server", "scheduler", *extra, "dag-processor", "triggerer")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json"

    @property
    def env_file(self) -> Path:
        """`source` it to point the `airflow` CLI of a shell at this stack."""
        return self.home / "env.sh"

    @property
    def database_dir(self) -> Path:
        """The PostgreSQL cluster (or a symlink to it, see tools/postgres_server.py)."""
        return self.home / "postgres"

    def log_file(self, component: str) -> Path:
        if component == "postgres" and self.database is not None:
            return self.database.log_file
        return self.logs_dir / f"{component}.out"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every component and CLI call (the caller's, with the stack's settings)."""
        if self._env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
            env.pop(COMPONENT_ENV, None)
            env.update(self._settings())
            env.update(self.extra_env)
            self._env = env
        return dict(self._env)

    def _secrets(self) -> dict[str, str]:
        secrets_file = self.home / "stack_secrets.json"
        keys: dict[str, str] = {}
        if secrets_file.is_file():
            with contextlib.suppress(ValueError):
                keys = dict(json.loads(secrets_file.read_text()))
        wanted = ("jwt_secret", "secret_key", "db_password")
        if not all(keys.get(name) for name in wanted):
            for name in wanted:
                keys.setdefault(name, secrets.token_urlsafe(32))
            self.home.mkdir(parents=True, exist_ok=True)
            secrets_file.write_text(json.dumps(keys))
            secrets_file.chmod(0o600)
        return keys

    def _settings(self) -> dict[str, str]:
        keys = self._secrets()
        if self.database is None:
            raise StackError("the database server is not started yet: call start() (or prepare()) first")
        cache_root = self.cache_root or self.home / "parallel_run_cache"
        settings = {
            "AIRFLOW_HOME": str(self.home),
            STACK_ID_ENV: self.stack_id,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # psycopg2 for the sync engine (as docker/compose.yaml); Airflow derives the async one
            # (asyncpg) from it.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database.url("psycopg2"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"{self.url}/",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": keys["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            # New DAG files show up within 30 s instead of 5 min.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__PARALLEL_RUN__CACHE_ROOT": str(cache_root),
            "AIRFLOW_PARALLEL_RUN_CACHE": str(cache_root),
        }
        if self.demo_root is not None:
            settings["AIRFLOW_PARALLEL_RUN_DEMO_ROOT"] = str(Path(self.demo_root).resolve())
        return settings

    def _component_env(self, component: str, generation: int) -> dict[str, str]:
        env = self.env
        env[COMPONENT_ENV] = component_tag(self.stack_id, component, generation)
        if component in self._log_ports:  # two schedulers on one host: one log-server port each
            env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(self._log_ports[component])
        if component.startswith("scheduler-"):
            # Only the first scheduler sweeps assets (`parsing_cleanup_interval`, 60 s): the sweep
            # activates an asset an alias materialised with a plain INSERT, and two schedulers sweeping
            # at the same moment (their timers start together) both insert it; the loser dies on the
            # unique key of `asset_active` (seen on Airflow 3.3.2 with PostgreSQL). The same setting
            # also paces the removal of unreferenced triggers: one scheduler doing it is enough.
            env["AIRFLOW__SCHEDULER__PARSING_CLEANUP_INTERVAL"] = str(10**9)
        return env

    # -- CLI -------------------------------------------------------------------------------------
    def airflow(
        self, *args: str, check: bool = True, timeout: float = 300.0, locked_retries: int = 0
    ) -> subprocess.CompletedProcess[str]:
        """Runs `airflow <args>` against this stack's home and DB; raises StackError when it fails.

        `locked_retries`: run the command again when it failed with "database is locked". Kept for
        callers written for the SQLite stack; PostgreSQL never answers that.
        """
        for attempt in range(locked_retries + 1):
            result = subprocess.run(
                [self.python, "-m", "airflow", *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            locked = "database is locked" in result.stdout + result.stderr
            if result.returncode == 0 or not locked or attempt == locked_retries:
                break
            time.sleep(1.0 + attempt)
        if check and result.returncode != 0:
            raise StackError(
                f"`airflow {' '.join(args)}` exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    # -- lifecycle -------------------------------------------------------------------------------
    def _lock_home(self) -> None:
        """Takes `<home>/stack.lock` (released by the kernel however this process ends) and kills what a
        stack that died on this home without stopping left running."""
        if self._home_lock is not None:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        handle = open(self.home / "stack.lock", "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().split()[:1] or ["?"]
            handle.close()
            raise StackError(
                f"another stack (pid {owner[0]}) is running on {self.home}: stop it, or pass another --home"
            ) from None
        handle.seek(0)
        previous = handle.read().split()
        if len(previous) == 2:  # "<pid> <stack id>" of a stack that was killed
            kill_all([], [(STACK_ID_ENV, previous[1])], rounds=2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {self.stack_id}\n")
        handle.flush()
        self._home_lock = handle

    def _unlock_home(self) -> None:
        if self._home_lock is not None:
            with contextlib.suppress(OSError):
                self._home_lock.seek(0)
                self._home_lock.truncate()
            self._home_lock.close()
            self._home_lock = None

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        with open(self.logs_dir / "watchdog.out", "ab") as out:
            self._watchdog = subprocess.Popen(
                [self.python, str(WATCHDOG), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no terminal signal reaches it
            )
        self._tell_watchdog({"tag": [STACK_ID_ENV, self.stack_id]})

    def _tell_watchdog(self, message: Mapping[str, Any]) -> None:
        if self._watchdog is None or self._watchdog.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self._watchdog.stdin.write((json.dumps(message) + "\n").encode())
            self._watchdog.stdin.flush()

    def _stop_watchdog(self) -> None:
        if self._watchdog is None:
            return
        self._tell_watchdog({"done": True})
        with contextlib.suppress(OSError, ValueError):
            if self._watchdog.stdin is not None:
                self._watchdog.stdin.close()
        try:
            self._watchdog.wait(10)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()
            self._watchdog.wait()
        self._watchdog = None

    def start_database(self) -> PostgresServer:
        """Starts the PostgreSQL server (creating its cluster on the first start); idempotent."""
        if self.database is not None and self.database.pid is not None:
            return self.database
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._lock_home()
        self._start_watchdog()
        server = PostgresServer(
            location=self.database_dir,
            password=self._secrets()["db_password"],
            keep=self.keep_database,
            settings=self.database_settings,
        )
        try:
            server.start()
        except PostgresError as exc:
            raise StackError(f"the PostgreSQL server did not start: {exc}") from None
        self.database = server
        self._env = None
        remove = [] if self.keep_database else [str(server.location)]
        self._tell_watchdog({"postgres": server.pid, "remove": remove})
        return server

    def prepare(self) -> None:
        """AIRFLOW_HOME, the database server, the passwords file and a migrated metadata DB (idempotent)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if not (self.dags_folder / "").is_dir():
            raise StackError(f"DAGs folder {self.dags_folder} does not exist")
        self.start_database()
        passwords: dict[str, str] = {}
        if self.passwords_file.is_file():
            with contextlib.suppress(ValueError):
                passwords = dict(json.loads(self.passwords_file.read_text()))
        if self.password is None:
            self.password = passwords.get(self.username) or secrets.token_urlsafe(12)
        if passwords.get(self.username) != self.password:
            passwords[self.username] = self.password
            self.passwords_file.write_text(json.dumps(passwords))
            self.passwords_file.chmod(0o600)
        self.write_env_file()
        migrate = subprocess.Popen(
            [self.python, "-m", "airflow", "db", "migrate"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            if self.demo_data:  # meanwhile
                self.prepare_demo_data()
            output, _ = migrate.communicate(timeout=600)
        finally:
            if migrate.poll() is None:
                migrate.kill()
                migrate.wait()
        if migrate.returncode != 0:
            tail = output.decode(errors="replace")[-3000:]
            raise StackError(f"`airflow db migrate` exited {migrate.returncode}:\n{tail}")

    def prepare_demo_data(self) -> None:
        """Writes the demo data once, up front: otherwise the first runs of two example DAGs (the daily
        one starts at once) would both write it at the same time."""
        root = Path(self.demo_root) if self.demo_root is not None else REPO / "demo_output"
        wanted = ("models/digits.pkl", "models/iris.pkl", "data/iris/iris.csv", "data/labels.csv")
        if all((root / name).is_file() for name in wanted) and any((root / "data" / "digits").glob("*.png")):
            return
        if not self.quiet:
            print(f"Writing the demo data to {root} ...", flush=True)
        from airflow_parallel_run.demo import prepare  # the engine side: never imports Airflow

        prepare(str(root))

    def write_env_file(self) -> None:
        """Writes `env.sh`: the stack's settings (and the venv on PATH) for an interactive shell."""
        settings = {**self._settings(), **self.extra_env}
        settings.pop(STACK_ID_ENV, None)  # processes of a shell are not the stack's to kill
        lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(settings.items())]
        lines.append(f'export PATH={shlex.quote(str(Path(self.python).parent))}:"$PATH"')
        self.env_file.write_text("# Written by tools/airflow_stack.py\n" + "\n".join(lines) + "\n")
        self.env_file.chmod(0o600)

    def start(self) -> Stack:
        """Starts the database, prepares the home, starts the components and waits until they are
        healthy."""
        if self.processes:
            return self
        if port_in_use(self.port):
            raise StackError(f"port {self.port} on 127.0.0.1 is in use: stop what uses it or pass --port N")
        try:
            self.prepare()
            for component in self.components:
                self._spawn(component)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, component: str) -> None:
        args = [self.python, "-m", "airflow", _command(component)]
        if component == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        elif _command(component) in ("scheduler", "triggerer"):
            # Task and trigger logs are local files that the api-server reads itself; Airflow's log
            # servers would listen on every interface, which this stack never does.
            args += ["--skip-serve-logs"]
        generation = self._generation.get(component, 0) + 1
        self._generation[component] = generation
        with open(self.log_file(component), "ab") as out:
            process = subprocess.Popen(
                args,
                env=self._component_env(component, generation),
                cwd=str(self.home),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the whole group
            )
        self.processes[component] = process
        self._tell_watchdog({"group": process.pid})

    def component_of(self, pid: int) -> str | None:
        """The component a process runs under (`scheduler-2` for a task its executor started), from the
        environment tag every process of the stack inherits; None when it is not the stack's."""
        try:
            import psutil

            env = psutil.Process(pid).environ()
        except Exception:  # noqa: BLE001 - gone, or not readable
            return None
        if env.get(STACK_ID_ENV) != self.stack_id or COMPONENT_ENV not in env:
            return None
        return env[COMPONENT_ENV].split("/", 1)[-1].rsplit("#", 1)[0]

    @contextlib.contextmanager
    def expect_restart(self, component: str, timeout: float = 90.0) -> Iterator[None]:
        """Declares that the code inside makes `component` exit (e.g. a test SIGKILLs it): its restart
        is then not an unexpected one. On leaving, waits until it was restarted; raises StackError
        when it was not."""
        if component not in self.components:
            raise StackError(f"no component {component!r}: the stack has {', '.join(self.components)}")
        with self._lock:
            before = self._generation.get(component, 0)
            self._allowed_restarts[component] = self._allowed_restarts.get(component, 0) + 1
        try:
            yield
            deadline = time.monotonic() + timeout
            while self._generation.get(component, 0) == before:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{component} was expected to exit and be restarted within {timeout:.0f} s"
                    )
                time.sleep(0.2)
        finally:
            with self._lock:
                if self._generation.get(component, 0) == before:
                    self._allowed_restarts[component] = max(0, self._allowed_restarts.get(component, 0) - 1)

    def restart_exited(self) -> list[str]:
        """Restarts every component that exited on its own; returns what it did (one line each).

        Before the restart, what the dead component left running is killed (its process group, and
        every process started under it: task processes, Dask workers, entry-script processes), as
        systemd does with a service's control group: a task of a dead scheduler then ends, and a
        live scheduler runs it again after Airflow's orphan check, instead of two copies at once.

        A restart not declared with `expect_restart` is also recorded in `unexpected_restarts`.
        Raises StackError once a component has exited more than `max_restarts` times. A no-op after
        `stop()`. Call it periodically (the CLI does every second; the e2e fixture from a thread).
        """
        done: list[str] = []
        with self._lock:
            for component, process in list(self.processes.items()):
                if process.poll() is None:
                    continue
                count = sum(1 for line in self.restarts if line.startswith(f"{component} "))
                tail = self.log_tail(component, 15)
                if count >= self.max_restarts:
                    raise StackError(
                        f"{component} exited with {process.returncode} again after {count} restarts; "
                        f"{self.log_file(component)} ends with:\n{tail}"
                    )
                last = next((line for line in reversed(tail.splitlines()) if line.strip()), "(no output)")
                line = f"{component} exited with {process.returncode} and was restarted (last line: {last.strip()})"
                tag = component_tag(self.stack_id, component, self._generation.get(component, 1))
                left = kill_all([process.pid], [(COMPONENT_ENV, tag)])
                if left:
                    line += f"; killed {left} process(es) it left running"
                if self._allowed_restarts.get(component, 0) > 0:
                    self._allowed_restarts[component] -= 1
                else:
                    self.unexpected_restarts.append(line)
                self.restarts.append(line)
                done.append(line)
                self._spawn(component)
        return done

    def raise_if_broken(self) -> None:
        """Raises StackError when a component restarted unexpectedly since the last report (see
        `acknowledged_restarts`), or is dead right now without a declared restart."""
        with self._lock:
            fresh = self.unexpected_restarts[self.acknowledged_restarts :]
            dead = [
                f"{name} exited with {process.returncode}"
                for name, process in self.processes.items()
                if process.poll() is not None and not self._allowed_restarts.get(name)
            ]
        if fresh or dead:
            raise StackError(
                "an Airflow component died without the test causing it: "
                + "; ".join([*fresh, *dead])
                + "\n"
                + self.status_report()
            )

    def _check_alive(self) -> None:
        for component, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log_tail(component)
                raise StackError(
                    f"{component} exited with {process.returncode} during start-up; "
                    f"{self.log_file(component)} ends with:\n{tail}"
                )

    def log_tail(self, component: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file(component).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def status_report(self, lines: int = 25) -> str:
        """Each component (pid, alive or its exit code), the restarts and the end of every log."""
        parts = []
        for name in self.components:
            process = self.processes.get(name)
            if process is None:
                state = "not started"
            elif process.poll() is None:
                state = f"pid {process.pid}, running"
            else:
                state = f"exited {process.returncode}"
            parts.append(f"--- {name} ({state}) ---\n{self.log_tail(name, lines)}")
        if self.database is not None:
            parts.append(f"--- postgres ({self.database.display_url}) ---\n{self.database.log_tail(lines)}")
        restarts = "".join(f"restarted: {line}\n" for line in self.restarts)
        return restarts + "\n".join(parts)

    def health(self) -> dict[str, Any] | None:
        """The `/api/v2/monitor/health` document, or None while the api-server does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as response:
                return dict(json.load(response))
        except (OSError, ValueError):
            return None

    def is_healthy(self) -> bool:
        doc = self.health() or {}
        return all((doc.get(name) or {}).get("status") == "healthy" for name in HEALTH_COMPONENTS)

    def alive_schedulers(self, token: str | None = None) -> int:
        """How many scheduler jobs heartbeat (GET /api/v2/jobs?job_type=SchedulerJob&is_alive=true)."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/jobs?job_type=SchedulerJob&is_alive=true&limit=100",
            headers={"Authorization": f"Bearer {token or self.token()}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return len(json.load(response)["jobs"])

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Waits until the health endpoint reports every component healthy and, with more than one
        scheduler, as many scheduler jobs heartbeat."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        token: str | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            if self.is_healthy():
                if self.schedulers == 1:
                    return
                with contextlib.suppress(OSError, ValueError, KeyError):
                    token = token or self.token()
                    if self.alive_schedulers(token) >= self.schedulers:
                        return
            time.sleep(1.0)
        raise StackError(
            f"the stack was not healthy after {timeout or self.startup_timeout:.0f} s: {self.health()}; "
            f"component logs in {self.logs_dir}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to each component, then SIGKILL to its whole process group (and to any process that
        left the group) once it exited or after `timeout` s; then the database server. Idempotent.

        Only the component itself gets SIGTERM: it stops its own children (the scheduler's
        LocalExecutor workers); a SIGTERM to the whole group kills those workers under the scheduler,
        whose shutdown then hangs.
        """
        with self._lock:
            try:
                self._stop(timeout)
            finally:
                if self.database is not None:
                    with contextlib.suppress(PostgresError, OSError):
                        self.database.stop()
                self._stop_watchdog()
                self._unlock_home()

    def _stop(self, timeout: float) -> None:
        if not self.processes:
            return
        leftovers = [p for process in self.processes.values() for p in _descendants(process.pid)]
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        groups = [process.pid for process in self.processes.values()]
        kill_all(groups, [(STACK_ID_ENV, self.stack_id)])  # also what left its group
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        for proc in leftovers:  # a process whose environment this user may not read
            with contextlib.suppress(Exception):
                proc.kill()
        self.processes.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- REST ------------------------------------------------------------------------------------
    def token(self) -> str:
        """A JWT for the admin user (POST /auth/token)."""
        body = json.dumps({"username": self.username, "password": self.password}).encode()
        request = urllib.request.Request(
            f"{self.url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(json.load(response)["access_token"])

    def loaded_dags(self, token: str | None = None) -> dict[str, bool]:
        """dag_id → is_paused, for every DAG the dag-processor has stored."""
        request = urllib.request.Request(
            f"{self.url}/api/v2/dags?limit=100", headers={"Authorization": f"Bearer {token or self.token()}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return {d["dag_id"]: bool(d["is_paused"]) for d in json.load(response)["dags"]}

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180.0) -> dict[str, bool]:
        """Waits until the dag-processor has stored every DAG in `dag_ids`; returns `loaded_dags()`."""
        wanted = set(dag_ids)
        token = self.token()
        deadline = time.monotonic() + timeout
        loaded: dict[str, bool] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError, ValueError, KeyError):
                loaded = self.loaded_dags(token)
                if wanted <= set(loaded):
                    return loaded
            time.sleep(1.0)
        raise StackError(
            f"DAGs {sorted(wanted - set(loaded))} were not loaded after {timeout:.0f} s; "
            f"see {self.log_file('dag-processor')} and `airflow dags list-import-errors`"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--home", type=Path, default=DEFAULT_HOME, help=f"AIRFLOW_HOME (default {DEFAULT_HOME})"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="api-server / UI port on 127.0.0.1 (default 8080)"
    )
    parser.add_argument(
        "--password", default=None, help="admin password (default: kept in the home, else random)"
    )
    parser.add_argument("--dags-folder", type=Path, default=REPO / "dags", help="default: the repo's dags/")
    parser.add_argument(
        "--demo-root",
        type=Path,
        default=None,
        help="AIRFLOW_PARALLEL_RUN_DEMO_ROOT: demo data and outputs (default: the DAGs' <repo>/demo_output)",
    )
    parser.add_argument("--schedulers", type=int, default=1, help="how many schedulers (default 1)")
    args = parser.parse_args(argv)

    stack = Stack(
        home=args.home,
        port=args.port,
        password=args.password,
        dags_folder=args.dags_folder,
        demo_root=args.demo_root,
        demo_data=args.dags_folder.resolve() == (REPO / "dags").resolve(),
        schedulers=args.schedulers,
        keep_database=True,  # runs and their history survive a restart, like Airflow's own DB would
    )
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    if port_in_use(stack.port):
        print(
            f"error: port {stack.port} on 127.0.0.1 is in use: stop what uses it or pass --port N",
            file=sys.stderr,
        )
        return 1
    print(f"Starting Airflow in {stack.home} (logs: {stack.logs_dir}/*.out) ...", flush=True)
    try:
        database = stack.start_database()
        print(
            f"Database: {database.version} at {database.display_url} (cluster {stack.database_dir})",
            flush=True,
        )
        stack.start()
        dags = stack.wait_for_dags(EXAMPLE_DAG_IDS) if stack.demo_data else stack.loaded_dags()
        listed = ", ".join(
            dag_id + (" (paused)" if paused else "") for dag_id, paused in sorted(dags.items())
        )
        print(
            f"\nAirflow is up: {stack.url}\n"
            f"  user:     {stack.username}\n"
            f"  password: {stack.password}\n"
            f"  DAGs:     {listed or '(see the UI)'}\n"
            f"  database: {database.version}, {database.display_url}\n"
            f"  CLI:      source {stack.env_file} && airflow dags list\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while True:
            for line in stack.restart_exited():
                print(f"warning: {line}", flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nStopping Airflow ...", flush=True)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("Stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())

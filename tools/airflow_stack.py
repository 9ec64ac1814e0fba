#!/usr/bin/env python
"""A local Apache Airflow 3 stack for the example DAGs: `make airflow`, and the e2e tests' fixture.

    python tools/airflow_stack.py [--home DIR] [--port N] [--password PW] [--demo-root DIR]

Creates AIRFLOW_HOME (default `<repo>/.airflow`), runs `airflow db migrate`, writes the simple
auth manager's passwords file, then starts the api-server, scheduler, dag-processor and triggerer
(LocalExecutor, SQLite, 127.0.0.1 only), each in its own process group with its output in
`AIRFLOW_HOME/logs/<component>.out`. Once `/api/v2/monitor/health` reports every component healthy
it prints the UI address and the admin credentials; Ctrl-C (SIGINT) or SIGTERM stops everything.
Like a process supervisor (systemd, `restart: unless-stopped` in docker/compose.yaml), it restarts a
component that exits on its own, up to `max_restarts` times, and says so with the end of its log: on
SQLite the scheduler can die of a lock race under load (e.g. `ObjectDeletedError` on a DagRun).

The tests import `Stack` (a context manager) and start the same stack on free ports.
This module never imports Airflow: it drives the `airflow` CLI and the REST API.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_HOME = REPO / ".airflow"
EXAMPLE_DAG_IDS = (
    "daily_backfill_scoring",
    "digits_file_scoring",
    "iris_tabular_scoring",
    "side_inputs_scoring",
)
COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


class StackError(RuntimeError):
    """The stack could not start (the message says which component and where its log is)."""


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


@dataclass
class Stack:
    """api-server + scheduler + dag-processor + triggerer on 127.0.0.1, sharing one AIRFLOW_HOME.

    `start()` (or `with Stack(...) as stack:`) prepares the home and waits until the stack is healthy;
    `stop()` terminates every process group (and any process they left behind) and is idempotent.
    """

    home: Path = DEFAULT_HOME
    port: int = 8080
    username: str = "admin"
    password: str | None = None  # None: the one in the passwords file, else a new random one
    dags_folder: Path = REPO / "dags"
    demo_root: Path | None = None  # AIRFLOW_PARALLEL_RUN_DEMO_ROOT; None keeps the DAGs' default
    cache_root: Path | None = None  # [parallel_run] cache_root; None: <home>/parallel_run_cache
    parallelism: int = 2
    demo_data: bool = False  # write the example DAGs' demo data before starting, when it is missing
    extra_env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    startup_timeout: float = 240.0
    quiet: bool = False
    max_restarts: int = 3  # per component, after start-up; then `restart_exited()` raises
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    restarts: list[str] = field(default_factory=list, init=False)  # one line per restart, for reports

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()
        self.worker_log_port = free_port()
        self.trigger_log_port = free_port()
        self._env: dict[str, str] | None = None
        self._lock = threading.Lock()  # start/stop vs. a supervising thread's restarts

    # -- paths and environment ---------------------------------------------------------------------
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

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.out"

    @property
    def env(self) -> dict[str, str]:
        """The environment of every component and CLI call (the caller's, with the stack's settings)."""
        if self._env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
            env.update(self._settings())
            env.update(self.extra_env)
            self._env = env
        return dict(self._env)

    def _settings(self) -> dict[str, str]:
        secrets_file = self.home / "stack_secrets.json"
        if secrets_file.is_file():
            keys = json.loads(secrets_file.read_text())
        else:
            keys = {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)}
            self.home.mkdir(parents=True, exist_ok=True)
            secrets_file.write_text(json.dumps(keys))
            secrets_file.chmod(0o600)
        cache_root = self.cache_root or self.home / "parallel_run_cache"
        settings = {
            "AIRFLOW_HOME": str(self.home),
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
            # Four components write to one SQLite file: wait up to 60 s for a lock (default 5 s).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}?timeout=60",
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

    # -- CLI -------------------------------------------------------------------------------------
    def airflow(
        self, *args: str, check: bool = True, timeout: float = 300.0, locked_retries: int = 0
    ) -> subprocess.CompletedProcess[str]:
        """Runs `airflow <args>` against this stack's home and DB; raises StackError when it fails.

        `locked_retries`: run an atomic command again when SQLite said "database is locked" (the
        running components write to the same file; a command's transaction is rolled back then).
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
    def prepare(self) -> None:
        """AIRFLOW_HOME, the passwords file and a migrated metadata DB (idempotent)."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if not (self.dags_folder / "").is_dir():
            raise StackError(f"DAGs folder {self.dags_folder} does not exist")
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
        lines = [f"export {key}={shlex.quote(value)}" for key, value in sorted(settings.items())]
        lines.append(f'export PATH={shlex.quote(str(Path(self.python).parent))}:"$PATH"')
        self.env_file.write_text("# Written by tools/airflow_stack.py\n" + "\n".join(lines) + "\n")
        self.env_file.chmod(0o600)

    def start(self) -> Stack:
        """Prepares the home, starts the four components and waits until they are healthy."""
        if self.processes:
            return self
        for port, what in ((self.port, "--port"),):
            if port_in_use(port):
                raise StackError(f"port {port} on 127.0.0.1 is in use: stop what uses it or pass {what} N")
        self.prepare()
        try:
            for component in COMPONENTS:
                self._spawn(component)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, component: str) -> None:
        args = [self.python, "-m", "airflow", component]
        if component == "api-server":
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        elif component in ("scheduler", "triggerer"):
            # Task and trigger logs are local files that the api-server reads itself; Airflow's log
            # servers would listen on every interface, which this stack never does.
            args += ["--skip-serve-logs"]
        with open(self.log_file(component), "ab") as out:
            self.processes[component] = subprocess.Popen(
                args,
                env=self.env,
                cwd=str(self.home),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the whole group
            )

    def restart_exited(self) -> list[str]:
        """Restarts every component that exited on its own; returns what it did (one line each).

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
                self.restarts.append(line)
                done.append(line)
                _signal_group(process.pid, signal.SIGKILL)  # its LocalExecutor workers and the like
                self._spawn(component)
        return done

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

    def wait_healthy(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while time.monotonic() < deadline:
            self._check_alive()
            if self.is_healthy():
                return
            time.sleep(1.0)
        raise StackError(
            f"the stack was not healthy after {timeout or self.startup_timeout:.0f} s: {self.health()}; "
            f"component logs in {self.logs_dir}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to each component, then SIGKILL to its whole process group (and to any process that
        left the group) once it exited or after `timeout` s. Idempotent.

        Only the component itself gets SIGTERM: it stops its own children (the scheduler's
        LocalExecutor workers); a SIGTERM to the whole group kills those workers under the scheduler,
        whose shutdown then hangs.
        """
        with self._lock:
            self._stop(timeout)

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
        for process in self.processes.values():
            _signal_group(process.pid, signal.SIGKILL)  # the group may outlive its leader
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        leftovers += [p for process in self.processes.values() for p in _descendants(process.pid)]
        for proc in leftovers:  # processes that left the group (e.g. entry-script process groups)
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
    args = parser.parse_args(argv)

    stack = Stack(
        home=args.home,
        port=args.port,
        password=args.password,
        dags_folder=args.dags_folder,
        demo_root=args.demo_root,
        demo_data=args.dags_folder.resolve() == (REPO / "dags").resolve(),
    )
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(f"Starting Airflow in {stack.home} (logs: {stack.logs_dir}/*.out) ...", flush=True)
    try:
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

"""Helpers for the fault-injection tests: the exactly-once check, the CLI, external Dask clusters, mounts.

Imported by tests/faults/conftest.py (fixtures) and the test modules (`from faults_support import ...`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "airflow_parallel_run.cli"]
ENTRY_MODULE = "airflow_parallel_run.core.worker.child"
SUMMARY_COUNTS = ("total_items", "succeeded_items", "failed_items")

#: The entry script most fault tests use: one output line `fNNN.txt N` per input file of `files(N)`.
ECHO_LINE = 'f"{os.path.basename(p)} {open(p).read().strip()}"'


def expected_line(index: int) -> str:
    return f"f{index:03d}.txt {index}"


_LINE_RE = re.compile(r"^f(\d{3})\.txt (\d+)$")


# -- the invariant every fault test checks ------------------------------------------------------------
def check_accounting(
    summary: dict[str, Any],
    total: int,
    *,
    expected_lines: Sequence[str] | None = None,
    line_re: re.Pattern[str] = _LINE_RE,
) -> list[str]:
    """Every input item is exactly once in succeeded or failed; the output holds the succeeded items.

    - the counts add up (items and mini-batches) and match the number of inputs;
    - a succeeded job has an output file whose lines are well formed (no torn line), unique, in input
      order, one per succeeded item (and equal to `expected_lines` when given);
    - a failed job presents no output file (`append_row_file` is None).
    Returns the output lines ([] when there is no output file).
    """
    assert summary["total_items"] == total, summary
    assert summary["succeeded_items"] + summary["failed_items"] == summary["total_items"], summary
    assert (
        summary["succeeded_mini_batches"] + summary["failed_mini_batches"] == summary["total_mini_batches"]
    ), summary
    assert 0 <= summary["reused_mini_batches"] <= summary["succeeded_mini_batches"], summary
    if summary["status"] == "failed":
        assert summary.get("message", "").startswith("Job failed: "), summary
        assert summary["append_row_file"] is None, summary
        return []
    assert "message" not in summary, summary
    if summary["append_row_file"] is None:  # output_action=summary_only
        return []
    data = Path(summary["append_row_file"]).read_bytes()
    assert not data or data.endswith(b"\n"), "the output ends in a torn line"
    lines = data.decode("utf-8").splitlines()
    torn = [line for line in lines if not line_re.match(line)]
    assert not torn, f"torn or foreign lines in the output: {torn[:5]}"
    assert len(lines) == len(set(lines)), "duplicate lines in the output"
    assert len(lines) == summary["succeeded_items"], (len(lines), summary)
    keys = [tuple(int(g) for g in line_re.match(line).groups()) for line in lines]  # type: ignore[union-attr]
    assert keys == sorted(keys), "the output is not in input order"
    if expected_lines is not None:
        assert lines == list(expected_lines), (lines, expected_lines)
    return lines


def attempts(out: Path) -> list[dict[str, str]]:
    """Rows of logs/sys/job_report/processed_mini-batches.csv (one per attempt)."""
    path = out / "logs" / "sys" / "job_report" / "processed_mini-batches.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def statuses(out: Path) -> list[str]:
    return [row["Status"] for row in attempts(out)]


def read_logs(out: Path) -> str:
    """Every text file under out/logs, concatenated (to search for messages or leaked secrets)."""
    texts = []
    for path in sorted((out / "logs").rglob("*")):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


# -- the CLI ------------------------------------------------------------------------------------------
def cli_run_argv(root: Path | str, out: Path | str, script: str, *extra: str) -> list[str]:
    return [
        *CLI,
        "run",
        "--input",
        str(root),
        "--output",
        str(out),
        "--entry-script",
        script,
        "--json",
        *extra,
    ]


def run_cli(argv: Sequence[str], timeout: float = 240, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- processes ----------------------------------------------------------------------------------------
def entry_processes(output: Path | str, root_pid: int | None = None) -> list[psutil.Process]:
    """Running entry-script processes (`python -m airflow_parallel_run.core.worker.child`) of the job
    that writes to `output`, found among the descendants of `root_pid` (default: this process).

    With `root_pid=0` every process on the machine is searched (orphans are no one's descendants).
    """
    output = os.path.abspath(output)
    # the descendants of a root that has ended: none (rather than psutil.NoSuchProcess)
    candidates = list(psutil.process_iter()) if root_pid == 0 else process_tree(root_pid or os.getpid())[1:]
    found = []
    for proc in candidates:
        try:
            if ENTRY_MODULE not in proc.cmdline():
                continue
            if proc.environ().get("AZUREML_BI_OUTPUT_PATH", "").rstrip("/") != output.rstrip("/"):
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found.append(proc)
    return found


def process_tree(root_pid: int) -> list[psutil.Process]:
    """`root_pid` and its descendants; empty once it has ended (or is a zombie, whose children psutil
    cannot list)."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:  # ZombieProcess is one
        return []


def listening_sockets(procs: Iterable[psutil.Process]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening inet socket owned by one of `procs`."""
    found = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                found.append((proc.pid, str(conn.laddr.ip), int(conn.laddr.port)))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    return free_port()


@dataclass
class ExternalCluster:
    """A `dask scheduler` and `dask worker` processes started with the venv's CLIs on 127.0.0.1.

    Every process runs in its own session; `stop()` (the fixtures' finalizer) kills each session.
    Workers run with a nanny unless `nanny=False`, so a killed worker process is restarted.
    """

    folder: Path
    address: str = ""
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.folder,
            )

    def start_scheduler(self) -> str:
        scheduler_file = self.folder / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        self.scheduler = self._start(
            "scheduler",
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
        )

        def ready() -> bool:
            assert self.scheduler is not None
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited:\n{self.log('scheduler')[-3000:]}")
            try:
                self.address = str(json.loads(scheduler_file.read_text())["address"])
            except (OSError, ValueError, KeyError):
                return False
            return True

        wait_for(ready, 60, "the dask scheduler to start", interval=0.1)
        return self.address

    def start_worker(self, nthreads: int = 1, nanny: bool = True, death_timeout: float = 20) -> None:
        name = f"worker{len(self.workers)}"
        argv = [
            str(BIN / "dask"),
            "worker",
            self.address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            str(nthreads),
            "--memory-limit",
            "0",
            "--no-dashboard",
            "--death-timeout",
            str(death_timeout),
            "--local-directory",
            str(self.folder / name),
        ]
        if not nanny:
            argv.append("--no-nanny")
        self.workers.append(self._start(name, argv))

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, timeout="30s")

    def wait_for_workers(self, count: int, timeout: float = 90) -> None:
        with self.client() as client:
            client.wait_for_workers(count, timeout=timeout)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        os.kill(self.scheduler.pid, signal.SIGKILL)
        self.scheduler.wait()

    def stop(self) -> None:
        for proc in [*self.workers, *([self.scheduler] if self.scheduler else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the nanny, its worker, and nothing else
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


# -- mounts (root only) ---------------------------------------------------------------------------------
def mount_tmpfs(target: Path, options: str) -> None:
    """Mounts a tmpfs at `target`, or skips the test (not root, no mount permission in this container)."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def unmount(target: Path) -> None:
    for _ in range(50):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)  # still busy: an entry-script process may hold a file for a moment
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


# -- memory cgroup (for a real kernel OOM kill of one process) ------------------------------------------
def make_memory_cgroup(name: str, limit_bytes: int) -> Path | None:
    """A memory cgroup (v1 or v2) below this process's own, limited to `limit_bytes`; None if impossible.

    A process joins it by writing its pid to `<cgroup>/cgroup.procs`; the kernel's OOM killer then
    SIGKILLs it when it uses more than the limit, and nothing else on the machine is touched.
    """
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in own:  # v1: "4:memory:/path"
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            group = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / name
            try:
                group.mkdir()
                (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
                swap = group / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    with contextlib.suppress(OSError):
                        swap.write_text(str(limit_bytes))
                return group
            except OSError:
                with contextlib.suppress(OSError):
                    group.rmdir()
    for line in own:  # v2: "0::/path"
        if line.startswith("0::"):
            base = Path("/sys/fs/cgroup")
            if not (base / "cgroup.controllers").exists():
                base = base / "unified"
            group = base / line[3:].lstrip("/") / name
            try:
                group.mkdir()
                (group / "memory.max").write_text(str(limit_bytes))
                with contextlib.suppress(OSError):
                    (group / "memory.swap.max").write_text("0")
                return group
            except OSError:
                with contextlib.suppress(OSError):
                    group.rmdir()
    return None


def remove_cgroup(group: Path) -> None:
    procs = group / "cgroup.procs"
    for _ in range(50):
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


# -- TLS ------------------------------------------------------------------------------------------------
def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throwaway CA and one certificate it signed (SANs localhost and 127.0.0.1), as PEM files:
    {"ca": ..., "cert": ..., "key": ...}."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(hours=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apr faults test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .not_valid_before(start)
        .not_valid_after(end)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask")]))
        .issuer_name(ca_name)
        .not_valid_before(start)
        .not_valid_after(end)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files["key"].chmod(0o600)
    return files


# -- docs/errors.md ----------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def matches(template: str, actual: str) -> bool:
    """`actual` equals `template` where each <placeholder> stands for any text."""
    pattern = "".join(
        ".+?" if part.startswith("<") and part.endswith(">") and part[1:-1].isalpha() else re.escape(part)
        for part in re.split(r"(<[a-z]+>)", template)
    )
    return re.fullmatch(pattern, actual) is not None


def check_documented(template: str, actual: str) -> None:
    assert template in doc_text(), f"docs/errors.md does not list:\n{template}"
    assert matches(template, actual), f"the message changed:\n  doc:    {template}\n  actual: {actual}"

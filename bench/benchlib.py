"""Shared helpers of the benchmarks: arguments, interleaved timing, ratios, and the results JSON.

Every figure a benchmark reports is a ratio of two things measured in the same run, interleaved
(A, B, A, B, ...) and compared by their medians, so a shared or throttled machine slows both sides
alike. Absolute seconds are recorded for context only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass
class Ratio:
    """One reported figure: `value` compared with `target` (`op` is ">=" or "<=")."""

    name: str
    value: float
    target: float | None
    op: str
    what: str
    unit: str = "x"

    @property
    def meets(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    def line(self) -> str:
        goal = "" if self.target is None else f"  (target {self.op} {self.target:g}{self.unit})"
        verdict = {True: "  MEETS", False: "  MISSES", None: ""}[self.meets]
        return f"{self.name}: {self.value:.3g}{self.unit}{goal}{verdict} - {self.what}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "meets": self.meets}


def parse_args(
    doc: str | None, add: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The flags every benchmark takes (--quick, --repeats, --results-dir, --tmp-dir) plus its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repetitions of each side")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where <name>.json goes (default {RESULTS_DIR})",
    )
    parser.add_argument(
        "--tmp-dir", default=None, help="parent of the generated data (default: the system temp)"
    )
    if add is not None:
        add(parser)
    return parser.parse_args()


def repeats(args: argparse.Namespace, full: int, quick: int = 1) -> int:
    return max(1, int(args.repeats if args.repeats is not None else (quick if args.quick else full)))


@contextlib.contextmanager
def workdir(args: argparse.Namespace, name: str) -> Iterator[Path]:
    """A temp folder for generated data, removed at the end (also on failure). `--tmp-dir` is made when
    missing, as `--results-dir` is."""
    if args.tmp_dir is not None:
        Path(args.tmp_dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"apr-bench-{name}-", dir=args.tmp_dir))
    try:
        yield root
    finally:
        fast_rmtree(root)


def fast_rmtree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def log(text: str) -> None:
    print(text, flush=True)


def interleaved(
    cases: Mapping[str, Callable[[], float]], rounds: int, *, label: str = ""
) -> dict[str, list[float]]:
    """Runs the cases A, B, A, B, ... `rounds` times; each call returns the seconds it measured itself
    (so per-sample setup such as a fresh cache folder stays outside the timing)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds):
        for name, case in cases.items():
            seconds = float(case())
            samples[name].append(seconds)
            log(f"  {label}round {round_ + 1}/{rounds} {name}: {seconds:.3f} s")
    return samples


def medians(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items() if values}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the JSON carries it next to every ratio)."""
    try:
        import psutil

        ram = int(psutil.virtual_memory().total)
    except ImportError:  # pragma: no cover - psutil is an engine dependency
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(ram / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in (
                "dask",
                "distributed",
                "pandas",
                "pyarrow",
                "numpy",
                "apache-airflow",
                "airflow-parallel-run",
            )
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "engine_modified": bool(_git("status", "--porcelain", "airflow_parallel_run")),
    }


def write_result(
    args: argparse.Namespace,
    name: str,
    *,
    started: float,
    params: Mapping[str, Any],
    ratios: Sequence[Ratio],
    samples: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Prints the ratios and writes `<results-dir>/<name>.json` (machine description included)."""
    doc = {
        "name": name,
        "command": " ".join([Path(sys.executable).name, *[_rel(a) for a in sys.argv]]),
        "quick": bool(args.quick),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": {**machine(), "load_average_at_start": getattr(args, "load_at_start", None)},
        "params": dict(params),
        "samples_s": {k: [round(v, 4) for v in vs] for k, vs in (samples or {}).items()},
        "medians_s": {k: round(v, 4) for k, v in medians(samples or {}).items()},
        "ratios": [r.as_dict() for r in ratios],
        **dict(extra or {}),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    log("")
    for ratio in ratios:
        log(ratio.line())
    log(f"wrote {path} ({doc['elapsed_s']} s)")
    return path


def _rel(arg: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(arg).resolve().relative_to(REPO)) if os.path.exists(arg) else arg
    return arg


def start(args: argparse.Namespace) -> float:
    """Marks the start of a benchmark (wall clock and load average)."""
    args.load_at_start = [round(x, 2) for x in os.getloadavg()]
    return time.perf_counter()


@contextlib.contextmanager
def local_cluster(workers: int = 2, threads: int = 1) -> Iterator[Any]:
    """A Dask LocalCluster on 127.0.0.1: `workers` worker processes with `threads` threads each (one
    unless the job runs an async run() with max_concurrency_per_process), and its Client."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            protocol="tcp://",
            dashboard_address="127.0.0.1:0",  # never on all interfaces, never a fixed port
            memory_limit=0,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers, timeout=60)
        yield client


def make_empty_files(folder: Path, count: int, per_dir: int = 10_000, content: bytes = b"") -> list[str]:
    """`count` files in sub-folders of `per_dir` files (os.open/close in a tight loop); sorted paths."""
    paths: list[str] = []
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    for first in range(0, count, per_dir):
        sub = folder / f"d{first // per_dir:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        base = str(sub)
        for i in range(first, min(first + per_dir, count)):
            path = f"{base}/{i:07d}.txt"
            fd = os.open(path, flags, 0o644)
            if content:
                os.write(fd, content)
            os.close(fd)
            paths.append(path)
    return paths


# -- another checkout's engine, measured in the same rounds --------------------------------------------


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """--compare-with DIR (and the hidden --serve of its child process)."""
    parser.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        help="another checkout (e.g. a git worktree of an older commit): its engine is measured too, "
        "interleaved with this one, in a child process with its own cluster",
    )
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the child of --compare-with


def engine_path() -> str:
    """The checkout whose `airflow_parallel_run` this process imports."""
    import airflow_parallel_run

    return os.path.dirname(os.path.dirname(os.path.abspath(airflow_parallel_run.__file__)))


def serve(run: Callable[[str], tuple[float, float]]) -> None:
    """The --compare-with child's loop: one case name per stdin line, one JSON answer per stdout line
    (``{"seconds": ..., "setup": ...}``); the first line names the engine it imported."""
    print(json.dumps({"engine_path": engine_path()}), flush=True)
    for line in sys.stdin:
        seconds, setup = run(line.strip())
        print(json.dumps({"seconds": seconds, "setup": setup}), flush=True)


class OtherEngine:
    """The engine of another checkout, in a child process: the same bench script with ``--serve REQUEST``
    and PYTHONPATH=<checkout>, so `import airflow_parallel_run` finds that checkout's package first (the
    entry-script processes it starts inherit the path). The child only calls `run_job`, the one entry point
    every version has. `run(case)` returns the child's own measurement of one job."""

    def __init__(
        self,
        checkout: Path,
        script: str,
        request: Mapping[str, Any],
        args: argparse.Namespace,
        environ: Mapping[str, str],
    ) -> None:
        # `environ` is this process's environment from before its LocalCluster started: starting a cluster
        # adds Dask's pre-spawn-environ (MALLOC_TRIM_THRESHOLD_=65536, OMP_NUM_THREADS=1, ...) to
        # os.environ, and a child started with those allocates (and so plans) measurably slower.
        pythonpath = os.pathsep.join(p for p in (str(checkout.resolve()), environ.get("PYTHONPATH", "")) if p)
        env = {**environ, "PYTHONPATH": pythonpath}
        command = [sys.executable, os.path.abspath(script), "--serve", json.dumps(dict(request))]
        if args.tmp_dir:
            command += ["--tmp-dir", args.tmp_dir]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.engine_path = json.loads(self._line())["engine_path"]
        self.setup: dict[str, list[float]] = {}

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the --compare-with engine process ended (exit code {self.proc.wait()})")
        return line

    def run(self, case: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(case + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self._line())
        self.setup.setdefault(case, []).append(float(answer["setup"]))
        return float(answer["seconds"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def alternating(
    cases: Mapping[str, Callable[[], float]], rounds: int, swap: Sequence[tuple[str, str]] = ()
) -> dict[str, list[float]]:
    """`interleaved`, except that each (a, b) pair of `swap` trades places every other round, so neither
    side always runs first (right after the same other case)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds):
        order = list(cases)
        if round_ % 2:
            for a, b in swap:
                if a in order and b in order:
                    i, j = order.index(a), order.index(b)
                    order[i], order[j] = order[j], order[i]
        for name in order:
            seconds = float(cases[name]())
            samples[name].append(seconds)
            log(f"  round {round_ + 1}/{rounds} {name}: {seconds:.3f} s")
    return samples

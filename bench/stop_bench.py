"""How long a stop takes: from the cancel (or SIGTERM) to a complete `logs/job_result.txt`.

Airflow 3 sends SIGTERM to a task's process group when it is marked failed or cleared, and SIGKILL 5 s
later: what the job must do (write its result, release the output folder's lock, remove `.staging`)
has to fit in those 5 s. Each run: the embedded LocalCluster, 2 entry-script processes, 16 one-file
mini-batches, a slow `init()` (it also starts a helper process) and a slow `run()`; the stop comes

- `cancel-run`: `JobDriver.cancel()` (what `on_kill` does) while both processes are in `run()`;
- `cancel-init`: the same while both are in `init()`;
- `cancel-window`: as `cancel-run`, after 4 quick successes (then up to 4 x 2 + 16 attempts are in flight);
- `sigterm`: SIGTERM to the CLI's process group while both are in `run()` (SIGKILL 5 s later, as Airflow).

Printed per run (seconds after the stop): `result` (job_result.txt complete), `lock` (lock file gone),
`staging` (.staging gone), `returned` (run_job returned / the CLI exited, "-" when SIGKILLed), `late`
(entry-script processes started after the stop: must be 0). Usage:

    .venv/bin/python bench/stop_bench.py [--repeat 3] [--mode cancel-run cancel-init sigterm]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCRIPT = """
import os, subprocess, sys, time

def init():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    open({marks!r}, "a").write("init\\n")
    time.sleep({init_s})

def run(mini_batch):
    if os.path.basename(mini_batch[0]) < {fast_below!r}:  # a few quick successes open the full window
        return [os.path.basename(p) for p in mini_batch]
    open({marks!r}, "a").write("run\\n")
    time.sleep({run_s})
    return [os.path.basename(p) for p in mini_batch]
"""


def _lines(path: Path, word: str) -> int:
    try:
        return path.read_text().split().count(word)
    except OSError:
        return 0


def _result_complete(out: Path) -> bool:
    try:
        text = (out / "logs" / "job_result.txt").read_text()
        json.loads(text[text.index("\n{") :])
    except (OSError, ValueError):
        return False
    return True


def _late_starts(out: Path, stopped: float) -> int:
    late = 0
    for path in (out / "logs" / "sys" / "node").glob("*/*.txt"):
        for line in path.read_text().splitlines():
            if "|started pid " in line:
                when = datetime.strptime(line.split("|", 1)[0], "%Y-%m-%d %H:%M:%S.%f")
                late += when.replace(tzinfo=timezone.utc).timestamp() > stopped
    return late


def _watch(out: Path, stopped: float, done: threading.Event, limit: float = 60) -> dict[str, float | None]:
    seen: dict[str, float | None] = {"result": None, "lock": None, "staging": None}
    while time.time() - stopped < limit:
        now = time.time() - stopped
        if seen["result"] is None and _result_complete(out):
            seen["result"] = now
        if seen["lock"] is None and not (out / ".airflow-parallel-run.lock").exists():
            seen["lock"] = now
        if seen["staging"] is None and not (out / ".staging").exists():
            seen["staging"] = now
        if all(v is not None for v in seen.values()) and done.is_set():
            break
        time.sleep(0.01)
    return seen


def one_run(mode: str, root: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="stop-bench-", dir=root))
    inputs = work / "in"
    inputs.mkdir()
    for i in range(40 if mode == "cancel-window" else 16):
        (inputs / f"f{i:03d}.txt").write_text(f"{i}\n")
    marks, out = work / "marks.txt", work / "out"
    init_s, run_s = (30, 1) if mode == "cancel-init" else (1, 30)
    script = work / "slow.py"
    fast_below = "f004.txt" if mode == "cancel-window" else "f000.txt"
    script.write_text(SCRIPT.format(marks=str(marks), init_s=init_s, run_s=run_s, fast_below=fast_below))
    word = "init" if mode == "cancel-init" else "run"
    env = {**os.environ, "AIRFLOW_PARALLEL_RUN_CACHE": str(work / "cache")}
    done = threading.Event()
    returned: list[float] = []
    if mode == "sigterm":
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "airflow_parallel_run.cli",
                "run",
                "--input",
                str(inputs),
                "--output",
                str(out),
            ]
            + ["--entry-script", str(script), "--mini-batch-size", "1", "--process-count-per-node", "2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        while _lines(marks, word) < 2:
            time.sleep(0.05)
        stopped = time.time()
        os.killpg(cli.pid, signal.SIGTERM)

        def reap() -> None:
            try:
                cli.wait(5.0)
                returned.append(time.time() - stopped)
            except subprocess.TimeoutExpired:
                os.killpg(cli.pid, signal.SIGKILL)
                cli.wait()
            done.set()

        threading.Thread(target=reap, daemon=True).start()
    else:
        os.environ["AIRFLOW_PARALLEL_RUN_CACHE"] = str(work / "cache")
        from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

        drivers: list[Any] = []

        def job() -> None:
            run_job(
                ParallelRunConfig(entry_script=str(script), mini_batch_size=1, process_count_per_node=2),
                [FileDataset.from_files(str(inputs))],
                str(out),
                on_driver=drivers.append,
            )
            returned.append(time.time() - stopped)
            done.set()

        stopped = float("inf")
        threading.Thread(target=job, daemon=True).start()
        while _lines(marks, word) < 2:
            time.sleep(0.05)
        stopped = time.time()
        drivers[0].cancel("stopped by stop_bench")
    seen = _watch(out, stopped, done)
    done.wait(60)
    return {**seen, "returned": returned[0] if returned else None, "late": _late_starts(out, stopped)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--mode", nargs="+", default=["cancel-run", "cancel-init", "cancel-window", "sigterm"]
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stop-bench-"))
    for mode in args.mode:
        runs = [one_run(mode, root) for _ in range(args.repeat)]
        for run in runs:
            print(
                mode,
                " ".join(f"{k}={v if v is None or k == 'late' else round(v, 2)}" for k, v in run.items()),
            )
        results = [r["result"] for r in runs if r["result"] is not None]
        if results:
            print(
                f"{mode}: result after {statistics.median(results):.2f} s (median), max {max(results):.2f} s"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()

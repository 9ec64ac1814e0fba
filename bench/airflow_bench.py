"""Versus Airflow dynamic task mapping: the same tiny mini-batches as `.expand()`-mapped tasks vs one
`ParallelRunOperator` task, on one real Airflow stack (api-server, scheduler, dag-processor,
triggerer; LocalExecutor with parallelism 2, 127.0.0.1; `tools/airflow_stack.py`) on PostgreSQL, as
Airflow is deployed: the stack's own throw-away server with PostgreSQL's durable defaults (fsync on).

DAGs: `bench/dags/apr_bench_expand.py` (a task lists the files and returns them in mini-batches; a
mapped task per mini-batch) and `bench/dags/apr_bench_operator.py` (one operator task, no-op entry
script, `process_count_per_node=2`, embedded LocalCluster, `allow_reuse=False`). Both get the input
folder and `mini_batch_size=1` in the trigger's `conf`. Wall time runs from the REST trigger
(POST /api/v2/dags/{id}/dagRuns) until the run is seen finished (polled every 0.25 s). One warm-up
run of each DAG comes first; then operator, expand, ..., operator: each expand sample (about 3 s
per mapped task on 2 cores, so 200 of them take minutes) is bracketed by operator samples, and
medians are compared. `--repeats N` gives N expand samples (default 1).

Then at scale: `--large` mini-batches (default 10,000) through the operator (target under 2
minutes), and the same through `.expand()`, which `[core] max_map_length` (default 1024) refuses:
the bench records how that run ends and the error.

Targets: expand time / operator time >= 10x (200 mini-batches); 10,000 through the operator < 120 s.
Usage: .venv/bin/python bench/airflow_bench.py [--quick] [--mini-batches 200] [--large 10000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Ratio

DAG_EXPAND, DAG_OPERATOR = "apr_bench_expand", "apr_bench_operator"
POLL_S = 0.25


class Rest:
    """The few REST v2 calls the bench needs (JWT from POST /auth/token)."""

    def __init__(self, stack: Any) -> None:
        import requests

        self.url = stack.url
        self.stack = stack
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.token()}"

    def _get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}/api/v2{path}", params=params or None, timeout=60)
        response.raise_for_status()
        return response.json()

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        response = self.session.post(
            f"{self.url}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}, timeout=60
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"trigger {dag_id}: {response.status_code} {response.text[:500]}")
        return str(response.json()["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self._get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = self._get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=100, offset=len(found))
            found.extend(page["task_instances"])
            if not page["task_instances"] or len(found) >= int(page["total_entries"]):
                return found

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        doc = self._get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}", full_content="true"
        )
        lines = []
        for record in doc.get("content", []):
            lines.append(
                record
                if isinstance(record, str)
                else f"{record.get('event', '')} {record.get('error_detail', '')}"
            )
        return "\n".join(lines)

    def trigger_and_wait(
        self, dag_id: str, conf: dict[str, Any], timeout: float
    ) -> tuple[float, dict[str, Any]]:
        """Seconds from the trigger until the run is seen finished, and the run document."""
        t0 = time.perf_counter()
        run_id = self.trigger(dag_id, conf)
        deadline = t0 + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return time.perf_counter() - t0, run
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(POLL_S)


def _iso_seconds(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _refusal(log_text: str) -> str:
    """The reason the upstream's XCom push was refused, from its task log."""
    match = re.search(r"reason\W+([A-Za-z_]+)\W+message\W+(.+?)[\"}]", log_text)
    if match:
        message = match.group(2).replace("\\'", "'").rstrip("\\'")
        return f"API server refused the XCom push (HTTP 400 {match.group(1)}): {message}"
    lines = [line for line in log_text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no log)"


def _add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mini-batches", type=int, default=None, help="default 200 (--quick 20)")
    parser.add_argument("--large", type=int, default=None, help="default 10,000 (--quick 2,000)")
    parser.add_argument("--skip-large", action="store_true", help="only the small comparison")


def main() -> None:
    args = benchlib.parse_args(__doc__, _add)
    started = benchlib.start(args)
    small = args.mini_batches or (20 if args.quick else 200)
    large = 0 if args.skip_large else (args.large or (2_000 if args.quick else 10_000))
    rounds = benchlib.repeats(args, full=1, quick=1)

    sys.path.insert(0, str(benchlib.REPO / "tools"))
    try:
        from airflow_stack import Stack, free_port
        from postgres_server import DURABLE_SETTINGS
    except ImportError as exc:  # pragma: no cover - the stack helper ships with the repo
        raise SystemExit(f"tools/airflow_stack.py is needed for this bench: {exc}") from exc

    extra: dict[str, Any] = {}
    with benchlib.workdir(args, "airflow") as root:
        small_dir, large_dir, warm_dir = root / "small", root / "large", root / "warm"
        benchlib.make_empty_files(small_dir, small, content=b"x")
        benchlib.make_empty_files(warm_dir, 4, content=b"x")
        if large:
            benchlib.make_empty_files(large_dir, large, content=b"x")
        stack = Stack(
            home=root / "home",
            port=free_port(),
            password="bench-admin",
            dags_folder=benchlib.BENCH_DIR / "dags",
            cache_root=root / "cache",
            quiet=True,
            database_settings=DURABLE_SETTINGS,
        )
        t0 = time.perf_counter()
        with stack:
            stack.wait_for_dags((DAG_EXPAND, DAG_OPERATOR))
            extra["stack_start_s"] = round(time.perf_counter() - t0, 1)
            assert stack.database is not None
            extra["database"] = stack.database.version
            benchlib.log(f"Airflow stack up at {stack.url} in {extra['stack_start_s']} s")
            rest = Rest(stack)

            def conf(folder: Path) -> dict[str, Any]:
                return {"input": str(folder), "output_root": str(root / "out"), "mini_batch_size": 1}

            runs: dict[str, list[dict[str, Any]]] = {"operator": [], "expand": []}

            def case(name: str, dag_id: str, folder: Path, timeout: float = 1800) -> float:
                seconds, run = rest.trigger_and_wait(dag_id, conf(folder), timeout)
                if run["state"] != "success":
                    raise RuntimeError(
                        f"{dag_id} run {run['dag_run_id']} {run['state']}; see {stack.logs_dir}"
                    )
                runs.setdefault(name, []).append(run)
                return seconds

            for name, dag_id in (("operator", DAG_OPERATOR), ("expand", DAG_EXPAND)):
                seconds = case(f"warm-up {name}", dag_id, warm_dir)
                benchlib.log(f"  warm-up {name} (4 mini-batches): {seconds:.1f} s")
            operator = lambda: case("operator", DAG_OPERATOR, small_dir)  # noqa: E731
            samples = benchlib.interleaved(
                {"operator": operator, "expand": lambda: case("expand", DAG_EXPAND, small_dir)},
                rounds,
                label=f"{small} mini-batches ",
            )
            # The expand side is the slow one: a closing operator sample brackets every expand sample.
            samples["operator"].append(operator())
            benchlib.log(f"  {small} mini-batches closing operator: {samples['operator'][-1]:.3f} s")
            last_expand = runs["expand"][-1]
            durations = [
                d
                for ti in rest.task_instances(DAG_EXPAND, last_expand["dag_run_id"])
                if ti["task_id"] == "score"
                and (d := _iso_seconds(ti.get("start_date"), ti.get("end_date"))) is not None
            ]
            if durations:
                extra["expand_mapped_task_seconds_median"] = round(statistics.median(durations), 3)
                extra["expand_mapped_task_count"] = len(durations)

            if large:
                seconds, run = rest.trigger_and_wait(DAG_OPERATOR, conf(large_dir), 1800)
                extra["large_operator"] = {
                    "mini_batches": large,
                    "seconds": round(seconds, 2),
                    "state": run["state"],
                }
                benchlib.log(f"  operator, {large:,} mini-batches: {seconds:.1f} s, {run['state']}")
                seconds, run = rest.trigger_and_wait(DAG_EXPAND, conf(large_dir), 1800)
                outcome: dict[str, Any] = {
                    "mini_batches": large,
                    "seconds": round(seconds, 2),
                    "state": run["state"],
                }
                with contextlib.suppress(Exception):
                    tis = rest.task_instances(DAG_EXPAND, run["dag_run_id"])
                    outcome["task_states"] = {
                        ti["task_id"]: ti["state"] for ti in tis if ti["map_index"] in (-1, None)
                    }
                    outcome["error"] = _refusal(
                        rest.task_log(DAG_EXPAND, run["dag_run_id"], "list_mini_batches")
                    )
                extra["large_expand"] = outcome
                benchlib.log(
                    f"  expand, {large:,} mini-batches: {seconds:.1f} s, {run['state']}: {outcome.get('error')}"
                )

    med = benchlib.medians(samples)
    ratios = [
        Ratio(
            "expand / ParallelRunOperator",
            med["expand"] / med["operator"],
            10.0,
            ">=",
            f"{small} tiny mini-batches, trigger to run success: {small} mapped tasks {med['expand']:.1f} s vs "
            f"one operator task {med['operator']:.1f} s (LocalExecutor, parallelism 2)",
        )
    ]
    if large and "large_operator" in extra:
        lo = extra["large_operator"]
        ratios.append(
            Ratio(
                f"operator {large:,} mini-batches / 120 s budget",
                lo["seconds"] / 120.0,
                1.0,
                "<=",
                f"{lo['seconds']:.0f} s from trigger to run {lo['state']} for {large:,} mini-batches; "
                f".expand at that size: run {extra['large_expand']['state']} after "
                f"{extra['large_expand']['seconds']:.0f} s (max_map_length 1024)",
            )
        )
        if lo["state"] != "success":
            ratios[-1].value = float("inf")
    benchlib.write_result(
        args,
        "airflow",
        started=started,
        params={
            "mini_batches": small,
            "large": large,
            "mini_batch_size": 1,
            "rounds": rounds,
            "parallelism": 2,
        },
        ratios=ratios,
        samples=samples,
        extra=extra,
    )


if __name__ == "__main__":
    main()

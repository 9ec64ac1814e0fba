"""The benchmarks still run: `bench/run_all.py --quick` over every cheap bench, then each JSON is checked.

The quick modes are smoke runs (small sizes, one interleaved round): their ratios are not claims and
are not asserted against the targets, only that they were measured and written with the machine
description. The Airflow bench is skipped here: its quick mode starts a whole Airflow stack and takes
about 100 s on 2 cores. Set APR_BENCH_AIRFLOW=1 to include it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

from run_all import BENCHES, summary_table  # noqa: E402

WITH_AIRFLOW = os.environ.get("APR_BENCH_AIRFLOW") == "1"
CHEAP = [name for name in BENCHES if name != "airflow"]
CHOSEN = [*CHEAP, "airflow"] if WITH_AIRFLOW else CHEAP
#: A hang detector, not a speed target: the cheap quick benches take about 50 s on a quiet 2-core machine
#: and took 210 s inside `make test` (load 15, three lanes at once), 70 % of the former 300 s.
QUICK_RUN_TIMEOUT_S = 900 if WITH_AIRFLOW else 600
#: pytest-timeout counts the module fixture's run in the first test that uses it.
pytestmark = pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 60)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    results = tmp_path_factory.mktemp("bench-results")
    scratch = tmp_path_factory.mktemp("bench-tmp")
    process = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_all.py"),
            "--quick",
            "--only",
            *CHOSEN,
            "--results-dir",
            str(results),
            "--tmp-dir",
            str(scratch),
        ],
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
        cwd=REPO,
    )
    return results, process


def test_run_all_quick_succeeds(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, process = quick_run
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    assert "| bench | figure | value | target | outcome |" in process.stdout
    assert "FAILED" not in process.stdout


@pytest.mark.parametrize("bench", CHOSEN)
def test_bench_writes_its_json(bench: str, quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    results, process = quick_run
    script, name = BENCHES[bench]
    path = results / f"{name}.json"
    assert path.is_file(), f"{script} wrote no {path.name}:\n{process.stdout[-3000:]}{process.stderr[-3000:]}"
    doc: dict[str, Any] = json.loads(path.read_text())
    assert doc["name"] == name and doc["quick"] is True
    machine = doc["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1 and machine["ram_gb"] > 0
    assert machine["python"] and machine["versions"]["dask"] and machine["versions"]["distributed"]
    assert doc["medians_s"] and all(v > 0 for v in doc["medians_s"].values())
    assert doc["ratios"], "a bench reports at least one ratio"
    for ratio in doc["ratios"]:
        assert ratio["name"] and ratio["what"]
        assert isinstance(ratio["value"], float) and not math.isnan(ratio["value"]) and ratio["value"] > 0
        assert ratio["meets"] in (True, False, None)


def test_summary_table_marks_missing_results() -> None:
    table = summary_table(
        {
            "reuse": {
                "ratios": [
                    {
                        "name": "r",
                        "value": 0.02,
                        "target": 0.05,
                        "op": "<=",
                        "unit": "x",
                        "meets": True,
                        "what": "",
                    }
                ]
            },
            "tabular": None,
        }
    )
    assert "| reuse | r | 0.02x | <= 0.05 | meets |" in table
    assert "| tabular | (no result) | - | - | FAILED |" in table


@pytest.mark.skipif(WITH_AIRFLOW, reason="the Airflow bench runs above")
def test_airflow_bench_is_skipped_in_quick_tests() -> None:
    pytest.skip(
        "bench/airflow_bench.py --quick starts a whole Airflow stack (about 100 s on 2 cores); "
        "set APR_BENCH_AIRFLOW=1 to run it here"
    )


def test_a_missing_tmp_dir_is_made_not_a_traceback(tmp_path: Path) -> None:
    """`--tmp-dir` that does not exist yet is made, as `--results-dir` is (it was a FileNotFoundError in
    every bench); the generated data's folder inside it still goes at the end."""
    import argparse

    import benchlib

    parent = tmp_path / "not" / "yet"
    with benchlib.workdir(argparse.Namespace(tmp_dir=str(parent)), "probe") as root:
        assert root.parent == parent and root.is_dir()
    assert parent.is_dir() and not root.exists()

"""The planning bench's peak RSS must be its planning subprocess's own, not the bench's: Linux carries
`ru_maxrss` over exec from the forking process, so a bench that had just created a million paths made every
child look at least that big (the 10x growth ratio and the small run's bytes per file were the parent's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "planning_bench.py"


def test_child_peak_is_not_the_parents(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"f{i}").write_bytes(b"")
    ballast = bytearray(400 * 2**20)  # the parent at 400 MiB more, every page touched
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    out = subprocess.run(
        [sys.executable, str(BENCH), "--child", "walk", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=BENCH.parent,
    )
    del ballast
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["count"] == 10
    assert doc["peak_kib"] < 200 * 1024, doc  # a bare walk of 10 files: tens of MiB, never the parent's 400+
    assert doc["peak_kib"] >= doc["baseline_kib"], doc

"""e2e entry script: one line per file, `<file name> <text>`, 2 s per file.

Slower than slow_echo.py, so a deferrable job outlasts everything a test waits for before it stops the job
(a fresh triggerer's first answer took up to 23 s on 2 shared CPUs) by a wide margin.
"""

from __future__ import annotations

import os
import time


def run(mini_batch: list[str]) -> list[str]:
    lines = []
    for path in mini_batch:
        time.sleep(2.0)
        with open(path, encoding="utf-8") as handle:
            lines.append(f"{os.path.basename(path)} {handle.read().strip()}")
    return lines

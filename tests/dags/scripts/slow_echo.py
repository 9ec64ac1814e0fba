"""e2e entry script: one line per file, `<file name> <text>`, slowly (0.5 s per file).

Slow on purpose, so that a deferrable job is still running while the test looks at its task instance.
"""

from __future__ import annotations

import os
import time


def run(mini_batch: list[str]) -> list[str]:
    lines = []
    for path in mini_batch:
        time.sleep(0.5)
        with open(path, encoding="utf-8") as handle:
            lines.append(f"{os.path.basename(path)} {handle.read().strip()}")
    return lines

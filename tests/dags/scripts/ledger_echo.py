"""e2e entry script: one line per file, `<file name> <text>`, 1 s per file, with a ledger.

Each run() appends `begin <pid> <time> <files>` and `end <pid> <time> <files>` to `ledger.txt` in the
folder above the input folder (one `write` each, O_APPEND: lines from several processes never mix).
"""

from __future__ import annotations

import os
import time


def _record(ledger: str, event: str, names: list[str]) -> None:
    line = f"{event} {os.getpid()} {time.time():.6f} {','.join(names)}\n"
    descriptor = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def run(mini_batch: list[str]) -> list[str]:
    ledger = os.path.join(os.path.dirname(os.path.dirname(mini_batch[0])), "ledger.txt")
    names = [os.path.basename(path) for path in mini_batch]
    _record(ledger, "begin", names)
    lines = []
    for path in mini_batch:
        time.sleep(1.0)
        with open(path, encoding="utf-8") as handle:
            lines.append(f"{os.path.basename(path)} {handle.read().strip()}")
    _record(ledger, "end", names)
    return lines

"""Test entry script: one line per file, `<file name> <text>`."""

from __future__ import annotations

import os


def run(mini_batch: list[str]) -> list[str]:
    return [f"{os.path.basename(p)} {open(p, encoding='utf-8').read().strip()}" for p in mini_batch]

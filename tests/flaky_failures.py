"""Failures injected into re-run tests through a file of item names: the file stands for a transient failure
outside the job (a flaky service), not for data run() computes with. A script is given it as "flaky:<path>",
not as a path, which the engine would count as a file the job's arguments name but that is not a side input,
whose results it does not cache (core/worker/undeclared_reads.py); the script removes the prefix."""

from __future__ import annotations

from pathlib import Path

FLAKY = "flaky:"


def flaky(path: Path | str) -> str:
    """The argument that names the fail list at `path`."""
    return f"{FLAKY}{path}"

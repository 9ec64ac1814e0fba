"""Test entry script: fails each file named in the `--fail-list` file, and appends the name of every file it
runs to the `--calls` file, so a test can count exactly which items ran.

`--mode raise` (the default) fails the whole mini-batch of a listed file (run() raises); `--mode mark`
marks each listed file failed in its place (`ItemFailed`) and scores the others.
"""

from __future__ import annotations

import argparse
import os

from airflow_parallel_run import ItemFailed

args: argparse.Namespace


def init() -> None:
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-list", required=True)
    parser.add_argument("--calls", required=True)
    parser.add_argument("--mode", choices=["raise", "mark"], default="raise")
    args, _ = parser.parse_known_args()


def run(mini_batch: list[str]) -> list[object]:
    # named "flaky:<path>": a transient failure, not data run() computes with (tests/flaky_failures.py)
    with open(args.fail_list.removeprefix("flaky:"), encoding="utf-8") as handle:
        bad = set(handle.read().split())
    names = [os.path.basename(p) for p in mini_batch]
    with open(args.calls, "a", encoding="utf-8") as handle:
        handle.write("".join(name + "\n" for name in names))
    failing = [name for name in names if name in bad]
    if failing and args.mode == "raise":
        raise ValueError(f"{failing[0]} is on the fail list")
    results: list[object] = []
    for path, name in zip(mini_batch, names, strict=True):
        if name in bad:
            results.append(ItemFailed(f"{name} is on the fail list"))
            continue
        with open(path, encoding="utf-8") as handle:
            results.append(f"{name} {handle.read().strip()}")
    return results

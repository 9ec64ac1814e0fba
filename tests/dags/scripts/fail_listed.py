"""Test entry script: fails the mini-batch of any file named in the `--fail-list` file, and appends the name
of every file it runs to the `--calls` file, so a test can count exactly which items ran."""

from __future__ import annotations

import argparse
import os

args: argparse.Namespace


def init() -> None:
    global args
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-list", required=True)
    parser.add_argument("--calls", required=True)
    args, _ = parser.parse_known_args()


def run(mini_batch: list[str]) -> list[str]:
    with open(args.fail_list, encoding="utf-8") as handle:
        bad = set(handle.read().split())
    names = [os.path.basename(p) for p in mini_batch]
    with open(args.calls, "a", encoding="utf-8") as handle:
        handle.write("".join(name + "\n" for name in names))
    failing = [name for name in names if name in bad]
    if failing:
        raise ValueError(f"{failing[0]} is on the fail list")
    results = []
    for path, name in zip(mini_batch, names, strict=True):
        with open(path, encoding="utf-8") as handle:
            results.append(f"{name} {handle.read().strip()}")
    return results

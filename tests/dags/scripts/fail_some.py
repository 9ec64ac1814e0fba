"""Test entry script: echoes each file's text; a file whose text contains "bad" fails its mini-batch."""

from __future__ import annotations


def run(mini_batch: list[str]) -> list[str]:
    results = []
    for path in mini_batch:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
        if "bad" in text:
            raise ValueError(f"cannot score {text!r}: bad content")
        results.append(f"{text} ok")
    return results

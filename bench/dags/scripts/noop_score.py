"""Entry script of the Airflow benchmark: a no-op run() (each file of the mini-batch succeeds)."""

from __future__ import annotations


def run(mini_batch: list[str]) -> list[str]:
    return list(mini_batch)

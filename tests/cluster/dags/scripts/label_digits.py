"""Entry script of the cluster test DAG: maps each file's digit to its word from a side-input table."""

import argparse
import os
import sys

from airflow_parallel_run import EntryScript

labels: dict[str, str] = {}


def init() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels", required=True)
    args, _ = parser.parse_known_args()
    with open(args.labels) as handle:
        for line in handle.read().split():
            digit, _, word = line.partition("=")
            labels[digit] = word
    assert "airflow" not in sys.modules, "entry-script processes on Dask workers never import Airflow"
    EntryScript().logger.info("%d labels loaded", len(labels))


def run(mini_batch: list[str]) -> list[str]:
    results = []
    for path in mini_batch:
        with open(path) as handle:
            results.append(f"{os.path.basename(path)} {labels[handle.read().strip()]}")
    return results

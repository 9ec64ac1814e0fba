"""Fixtures for the Azure compatibility tests: the examples copied into a temp folder with their data made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "azure"


def copy_example(name: str, target: Path, *make_args: str) -> Path:
    folder = target / name
    shutil.copytree(EXAMPLES / name, folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, str(folder / "make_data.py"), str(folder), *make_args],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture
def iris_example(tmp_path: Path) -> Path:
    return copy_example("iris_mltable", tmp_path)


@pytest.fixture
def oj_example(tmp_path: Path) -> Path:
    return copy_example("oj_many_models", tmp_path, "--stores", "2", "--weeks", "40")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's jobs use a reuse cache of their own."""
    monkeypatch.setenv("AIRFLOW_PARALLEL_RUN_CACHE", str(tmp_path / "cache"))
    os.environ.pop("AZUREML_MODEL_DIR", None)

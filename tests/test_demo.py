"""The demo's data, its entry scripts and `main()`, run on a real embedded LocalCluster."""

from __future__ import annotations

import csv
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_parallel_run import demo
from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

DIGITS = 1797


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """prepare() once per module: every test below reads the same data and models."""
    return demo.prepare(str(tmp_path_factory.mktemp("demo")))


def _digits_config() -> ParallelRunConfig:
    return ParallelRunConfig(
        entry_script=str(demo.SCRIPTS_DIR / "score_digits.py"), mini_batch_size=10, process_count_per_node=2
    )


def _attempts(summary: dict[str, Any]) -> list[dict[str, str]]:
    with open(os.path.join(summary["logs_dir"], "sys", "job_report", "processed_mini-batches.csv")) as handle:
        return list(csv.DictReader(handle))


def test_prepare_writes_data_and_models(prepared: dict[str, str]) -> None:
    pngs = sorted(Path(prepared["digits_dir"]).rglob("*.png"))
    assert len(pngs) == DIGITS
    assert [p.name for p in pngs] == [f"digit_{i:04d}.png" for i in range(DIGITS)]

    iris = pd.read_csv(prepared["iris_csv"])
    assert list(iris.columns) == [*demo.IRIS_FEATURES, "species"]
    assert len(iris) == 150

    with open(prepared["digits_model"], "rb") as handle:
        digits_model = pickle.load(handle)
    assert digits_model.predict(demo.read_digit_png(pngs[0]).reshape(1, -1)).shape == (1,)
    with open(prepared["iris_model"], "rb") as handle:
        iris_model = pickle.load(handle)
    assert (iris_model.predict(iris[demo.IRIS_FEATURES]) == iris["species"]).mean() > 0.9

    labels = pd.read_csv(prepared["labels_csv"])
    assert dict(zip(labels["digit"], labels["word"], strict=True))[7] == "seven"

    before = {p: p.stat().st_mtime_ns for p in pngs[:50]}
    assert demo.prepare(str(Path(prepared["digits_dir"]).parents[1])) == prepared  # idempotent
    assert {p: p.stat().st_mtime_ns for p in pngs[:50]} == before


def test_digits_scoring_on_embedded_cluster(prepared: dict[str, str], tmp_path: Path) -> None:
    summary = run_job(
        _digits_config(),
        [FileDataset.from_files(prepared["digits_dir"])],
        str(tmp_path / "out"),
        side_inputs=[prepared["digits_model"]],
        arguments=["--model", prepared["digits_model"]],
    )
    assert summary["status"] == "succeeded", summary
    assert (summary["total_items"], summary["succeeded_items"], summary["failed_items"]) == (
        DIGITS,
        DIGITS,
        0,
    )
    assert summary["total_mini_batches"] == summary["succeeded_mini_batches"] == 180
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"digit_{i:04d}.png" for i in range(DIGITS)]  # input order
    overall, held_out, count = demo.digits_accuracy(summary["append_row_file"])
    assert count == DIGITS
    assert overall > 0.9 and held_out > 0.9
    assert len({row["Process"] for row in _attempts(summary)}) == 2  # both entry-script processes worked


def test_corrupt_image_is_one_failed_item(prepared: dict[str, str], tmp_path: Path) -> None:
    """One unreadable image among good ones fails alone. The first 99 digits and the corrupt one are 10
    mini-batches, the corrupt one in the first: the whole data set's job is test_digits_scoring_on_embedded_cluster."""
    images = tmp_path / "digits"
    images.mkdir()
    good = sorted(Path(prepared["digits_dir"]).glob("*.png"))[:99]
    for path in good:
        shutil.copyfile(path, images / path.name)
    (images / "corrupt.png").write_bytes(random.Random(0).randbytes(300))
    summary = run_job(
        _digits_config(),
        [FileDataset.from_files(str(images))],
        str(tmp_path / "out"),
        side_inputs=[prepared["digits_model"], prepared["labels_csv"]],
        arguments=["--model", prepared["digits_model"], "--labels", prepared["labels_csv"]],
    )
    assert summary["status"] == "succeeded", summary
    assert (summary["total_items"], summary["succeeded_items"], summary["failed_items"]) == (100, 99, 1)
    assert summary["total_mini_batches"] == 10 and summary["failed_mini_batches"] == 0
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert [line.split()[0] for line in lines] == [path.name for path in good]
    words = dict(enumerate(demo.DIGIT_WORDS))
    assert all(len(f) == 3 and f[2] == words[int(f[1])] for f in (line.split() for line in lines))  # --labels
    failed = [row for row in _attempts(summary) if row["Failed"] != "0"]  # rows are in completion order
    assert [(row["Mini-batch Id"], row["Total"], row["Succeeded"], row["Status"]) for row in failed] == [
        ("0", "10", "9", "RUN_DONE")  # corrupt.png sorts first: mini-batch 0
    ]
    entry_logs = "".join(
        p.read_text() for p in Path(summary["logs_dir"], "user", "entry_script_log").rglob("*.txt")
    )
    assert "skipping" in entry_logs and "corrupt.png" in entry_logs


def test_main_runs_both_jobs(prepared: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(prepared["digits_dir"]).parents[1]
    assert demo.main(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "[digits] Job succeeded: 1797 of 1797" in out and "[iris] Job succeeded: 150 of 150" in out
    assert out.count("items/s") >= 2 and out.count("accuracy:") == 2
    iris = pd.read_csv(root / "output" / "iris" / "iris_predictions.csv")
    assert len(iris) == 150 and np.mean(iris["prediction"] == iris["species"]) > 0.9

"""`make demo`: real batch inference on scikit-learn's bundled data, on an embedded Dask LocalCluster.

Two jobs show both input types end to end: 1797 handwritten-digit PNGs (file input, one line per
image) and the iris table (tabular input, one CSV row per input row). The data comes from the
datasets that ship inside scikit-learn, so the demo needs no network. The accuracy printed at the
end is computed from the job's own output file, so it also proves that every item came back once.

    python -m airflow_parallel_run.demo [--root demo_output]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, TabularDataset, run_job
from airflow_parallel_run.core.driver.cluster import dask_client
from airflow_parallel_run.core.summary import JobSummary

PROCESSES = 2
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_NAME = re.compile(r"^digit_(\d+)\.png$")
# The entry scripts live with the example DAGs, so the demo runs exactly what a DAG author copies.
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "dags" / "scripts"


def _write_if_changed(path: Path, data: bytes) -> None:
    """Idempotent writes: unchanged files keep their bytes and mtime, so re-runs are cheap and stable."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # concurrent prepare()s
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def read_digit_png(path: str | Path) -> np.ndarray:
    """The 64 features the digits model expects: the PNG's 0-255 grey values scaled to [0, 1]."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    if pixels.shape != (8, 8):
        raise ValueError(f"{path}: expected an 8x8 image, got {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels.reshape(-1) / 255.0


def prepare(root: str) -> dict[str, str]:
    """Writes the demo's data and models under `root` (no downloads; idempotent) and returns their paths.

    The digits model is trained on pixels read back from the written PNGs, so training and scoring see
    exactly the same values. Both models are trained on every other item: the other half is held out,
    which keeps the printed accuracy honest.
    """
    from sklearn.datasets import load_digits, load_iris
    from sklearn.linear_model import LogisticRegression

    base = Path(root).resolve()
    digits_dir = base / "data" / "digits"
    iris_csv = base / "data" / "iris" / "iris.csv"
    labels_csv = base / "data" / "labels.csv"
    digits_model = base / "models" / "digits.pkl"
    iris_model = base / "models" / "iris.pkl"

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0-16 -> 0-255
    png_paths = [digits_dir / f"digit_{index:04d}.png" for index in range(len(grey))]
    for path, pixels in zip(png_paths, grey, strict=True):
        _write_if_changed(path, _png(pixels))
    features = np.stack([read_digit_png(path) for path in png_paths])
    train = np.arange(len(features)) % 2 == 0
    model = LogisticRegression(max_iter=2000).fit(features[train], digits.target[train])
    _write_if_changed(digits_model, pickle.dumps(model))

    iris = load_iris()
    table = pd.DataFrame(iris.data, columns=IRIS_FEATURES)
    table["species"] = np.asarray(iris.target_names)[iris.target]
    _write_if_changed(iris_csv, table.to_csv(index=False, lineterminator="\n").encode())
    train = np.arange(len(table)) % 2 == 0
    iris_clf = LogisticRegression(max_iter=2000).fit(
        table.loc[train, IRIS_FEATURES], table.loc[train, "species"]
    )
    _write_if_changed(iris_model, pickle.dumps(iris_clf))

    lookup = "digit,word\n" + "".join(f"{digit},{word}\n" for digit, word in enumerate(DIGIT_WORDS))
    _write_if_changed(labels_csv, lookup.encode())
    return {
        "digits_dir": str(digits_dir),
        "iris_csv": str(iris_csv),
        "digits_model": str(digits_model),
        "iris_model": str(iris_model),
        "labels_csv": str(labels_csv),
    }


def digits_accuracy(output_file: str) -> tuple[float, float, int]:
    """(accuracy on all predictions, accuracy on the held-out half, predictions read) from the output file."""
    from sklearn.datasets import load_digits

    truth = load_digits().target
    hits: list[bool] = []
    held_out: list[bool] = []
    with open(output_file, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            match = DIGIT_NAME.match(fields[0]) if len(fields) >= 2 else None
            if not match:
                continue
            index = int(match.group(1))
            hit = index < len(truth) and int(fields[1]) == truth[index]
            hits.append(hit)
            if index % 2 == 1:
                held_out.append(hit)
    return _mean(hits), _mean(held_out), len(hits)


def iris_accuracy(output_file: str) -> tuple[float, float, int]:
    """Same as `digits_accuracy`, for the iris CSV output (its rows keep the `species` column)."""
    frame = pd.read_csv(output_file)
    hits = (frame["prediction"] == frame["species"]).tolist()
    return _mean(hits), _mean(hits[1::2]), len(hits)


def _mean(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _report(name: str, document: dict[str, Any], accuracy: Callable[[str], tuple[float, float, int]]) -> None:
    summary = JobSummary.from_dict(document)
    rate = summary.succeeded_items / summary.duration_s if summary.duration_s else float("nan")
    print(f"\n== {name}: {summary.status}")
    print(
        f"   items: {summary.succeeded_items} of {summary.total_items} succeeded, {summary.failed_items} "
        f"failed, in {summary.total_mini_batches} mini-batches; {summary.duration_s:.2f} s"
    )
    print(f"   speed: {rate:.1f} items/s")
    print(f"   output: {summary.append_row_file or summary.output}")
    print(f"   logs: {summary.logs_dir}")
    if summary.message:
        print(f"   {summary.message}")
    if summary.append_row_file:
        overall, held_out, count = accuracy(summary.append_row_file)
        print(f"   accuracy: {overall:.3f} over {count} predictions ({held_out:.3f} on the held-out half)")


def _progress(name: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"[{name}] {line}", flush=True)

    return say


def ensure_demo_data(root: str) -> None:
    """What the example DAGs run first: `prepare()` only when some demo file is missing."""
    base = Path(root)
    files = [
        base / "models" / "digits.pkl",
        base / "models" / "iris.pkl",
        base / "data" / "iris" / "iris.csv",
    ]
    files.append(base / "data" / "labels.csv")
    if not (all(f.is_file() for f in files) and any((base / "data" / "digits").glob("*.png"))):
        prepare(root)


# What `airflow dags test` prints that tells the story of the run; the rest is Airflow's own chatter.
_AIRFLOW_JOB_LINES = ("Processed ", "Job succeeded", "Job failed", "Reuse:", "state=")


def _airflow_env(home: Path, root: Path) -> dict[str, str]:
    """A throw-away AIRFLOW_HOME on SQLite that reads the repository's example DAGs: the demo must not
    touch the user's ~/airflow or need a running stack."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(SCRIPTS_DIR.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_PARALLEL_RUN_DEMO_ROOT": str(root),
    }


def _airflow(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One `airflow` CLI command in its own interpreter (the CLI configures Airflow from `env` at
    import, which this process cannot redo), output captured for the summary lines."""
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True, check=False
    )


def _print_job_lines(output: str) -> None:
    """Echoes the lines of the task log that say how the job went (progress, reuse, result, states)."""
    for line in output.splitlines():
        if any(word in line for word in _AIRFLOW_JOB_LINES):
            print("   " + line.strip()[:200])


def _print_airflow_summary(result: Path) -> bool:
    """Prints the job summary the operator wrote to `logs/job_result.txt` (its last paragraph is the
    summary as JSON, so the demo reports what the job recorded, not what the CLI said); True if it
    succeeded."""
    summary = JobSummary.from_dict(json.loads(result.read_text().split("\n\n")[-1]))
    print("\n== digits_file_scoring through Airflow: " + summary.status)
    print(
        f"   items: {summary.succeeded_items} of {summary.total_items} succeeded, "
        f"{summary.reused_mini_batches} of {summary.total_mini_batches} mini-batches reused"
    )
    print(f"   output: {summary.append_row_file}")
    print(f"   logs: {summary.logs_dir}")
    return summary.succeeded


def airflow_demo(root: str) -> int:
    """The seed example end to end through Airflow: `airflow dags test digits_file_scoring` on SQLite."""
    root_path = Path(root).resolve()
    home = Path(tempfile.mkdtemp(prefix="apr-demo-airflow-"))
    env = _airflow_env(home, root_path)
    try:
        print(f"Airflow: migrating a throw-away metadata DB in {home}", flush=True)
        migrate = _airflow(["db", "migrate"], env)
        if migrate.returncode != 0:
            print(migrate.stdout[-2000:], migrate.stderr[-2000:], file=sys.stderr)
            return 1
        print("Airflow: airflow dags test digits_file_scoring", flush=True)
        test = _airflow(["dags", "test", "digits_file_scoring"], env)
        _print_job_lines(test.stdout + test.stderr)
        result = root_path / "output" / "digits_file_scoring" / "logs" / "job_result.txt"
        if test.returncode != 0 or not result.is_file():
            print(test.stdout[-3000:], test.stderr[-3000:], file=sys.stderr)
            print("Airflow run of digits_file_scoring failed", file=sys.stderr)
            return 1
        return 0 if _print_airflow_summary(result) else 1
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_parallel_run.demo",
        description="Batch inference on the digits and iris data bundled with scikit-learn.",
    )
    parser.add_argument("--root", default="demo_output", help="folder for data, models and outputs")
    parser.add_argument(
        "--airflow",
        action="store_true",
        help="run the digits_file_scoring DAG through Airflow (`airflow dags test`, throw-away AIRFLOW_HOME)",
    )
    return parser.parse_args(argv)


def _entry_scripts_present() -> bool:
    """The entry scripts live in the repository's dags/scripts, not in the installed package: say so
    before preparing any data when the demo runs from an installed copy."""
    for script in ("score_digits.py", "score_iris.py"):
        if not (SCRIPTS_DIR / script).is_file():
            print(
                f"entry script {SCRIPTS_DIR / script} not found: run the demo from a source checkout",
                file=sys.stderr,
            )
            return False
    return True


def _digits_config() -> ParallelRunConfig:
    """File input: ten PNGs per mini-batch, one prediction line per image in one output file."""
    return ParallelRunConfig(
        entry_script=str(SCRIPTS_DIR / "score_digits.py"),
        mini_batch_size=10,
        process_count_per_node=PROCESSES,
        append_row_file_name="digits_predictions.txt",
    )


def _iris_config() -> ParallelRunConfig:
    """Tabular input: 1 KB of CSV per mini-batch, one CSV row per input row."""
    return ParallelRunConfig(
        entry_script=str(SCRIPTS_DIR / "score_iris.py"),
        mini_batch_size="1KB",
        process_count_per_node=PROCESSES,
        append_row_format="csv",
        append_row_file_name="iris_predictions.csv",
    )


def _run_both_jobs(paths: dict[str, str], outputs: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the digits job, then the iris job, on one embedded LocalCluster; their summaries.

    One cluster for both jobs: its start-up is paid once and is not part of either job's duration.
    Without bokeh the scheduler's HTTP server still asks for port 8787 and warns when another Dask
    cluster holds it, then takes a free port: harmless, so keep it out of the demo's output.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
        with dask_client(n_workers=PROCESSES) as client:
            digits = run_job(
                _digits_config(),
                [FileDataset.from_files(paths["digits_dir"])],
                str(outputs / "digits"),
                side_inputs=[paths["digits_model"]],
                arguments=["--model", paths["digits_model"]],
                client=client,
                progress=_progress("digits"),
            )
            iris = run_job(
                _iris_config(),
                [TabularDataset.from_delimited_files(paths["iris_csv"])],
                str(outputs / "iris"),
                side_inputs=[paths["iris_model"]],
                arguments=["--model", paths["iris_model"]],
                client=client,
                progress=_progress("iris"),
            )
    return digits, iris


def main(argv: Sequence[str] | None = None) -> int:
    """Prepares the data, runs both jobs on one embedded LocalCluster, prints results; 0 if both succeeded."""
    args = _arguments(argv)
    if args.airflow:
        return airflow_demo(args.root)
    if not _entry_scripts_present():
        return 1
    paths = prepare(args.root)
    print(f"Prepared data and models under {Path(args.root).resolve()}", flush=True)
    digits, iris = _run_both_jobs(paths, Path(args.root).resolve() / "output")
    _report("digits (file input)", digits, digits_accuracy)
    _report("iris (tabular input)", iris, iris_accuracy)
    return 0 if digits["status"] == iris["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())

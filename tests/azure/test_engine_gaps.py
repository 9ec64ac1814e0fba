"""What Azure's entry scripts need from the engine itself, shown on the engine's own API (run_job, plan_inputs):
error_threshold -1 with run() returning [], partition formats naming the dataset's folder, partition columns on
tabular mini-batches, MLTable folders, non-string arguments, allowed_failed_count between tries, and the
azureml.core fallback with side inputs named by environment variables (docs/azure.md, Azure's semantics).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest

from airflow_parallel_run.core import (
    ConfigError,
    FileDataset,
    InputError,
    ParallelRunConfig,
    TabularDataset,
    run_job,
)
from airflow_parallel_run.core.plan.planner import plan_inputs


def script(tmp_path: Path, text: str, name: str = "score.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def files(tmp_path: Path, count: int) -> str:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:03d}.txt").write_text(f"{i}\n")
    return str(folder)


def job(tmp_path: Path, code: str, inputs: list[Any], **settings: Any) -> dict[str, Any]:
    settings.setdefault("process_count_per_node", 2)
    extra = {k: settings.pop(k) for k in ("arguments", "side_inputs") if k in settings}
    config = ParallelRunConfig(entry_script=script(tmp_path, code), **settings)
    return run_job(config, inputs, str(tmp_path / "out"), **extra)


def test_error_threshold_minus_one_ignores_item_failures(tmp_path: Path) -> None:
    """Azure's OJ training returns [] from every run() and relies on error_threshold -1 meaning "ignore"."""
    summary = job(
        tmp_path,
        "def run(mini_batch):\n    return []\n",
        [FileDataset.from_files(files(tmp_path, 6))],
        mini_batch_size=2,
        error_threshold=-1,
        output_action="summary_only",
    )
    assert summary["status"] == "succeeded", summary.get("message")
    assert (summary["succeeded_mini_batches"], summary["failed_mini_batches"]) == (3, 0)


def test_partition_format_with_the_dataset_folder_as_prefix(tmp_path: Path) -> None:
    """The notebook's format names the dataset's own folder: `dataset_partition_test/{user}/{season}/{genres}.wav`."""
    root = tmp_path / "ds" / "dataset_partition_test"
    for user, season, genre in [("u1", "s1", "rock"), ("u1", "s2", "pop"), ("u2", "s1", "jazz")]:
        (root / user / season).mkdir(parents=True, exist_ok=True)
        (root / user / season / f"{genre}.wav").write_bytes(b"RIFF")
    dataset = FileDataset.from_files(
        str(tmp_path / "ds" / "dataset_partition_test" / "*" / "*" / "*.wav"),
        partition_format="dataset_partition_test/{user}/{season}/{genres}.wav",
    )
    planned = plan_inputs([dataset], None, ["user", "season"])
    assert [mb.partition_key_value for mb in planned.mini_batches] == [
        {"user": "u1", "season": "s1"},
        {"user": "u1", "season": "s2"},
        {"user": "u2", "season": "s1"},
    ]


def test_tabular_partition_keys_are_columns_of_the_frame(tmp_path: Path) -> None:
    """Azure appends the key columns: run() sees WeekStarting,INCOME,Store,Brand."""
    for store, brand in [("1000", "tropicana"), ("1001", "dominicks")]:
        folder = tmp_path / "data" / store / brand
        folder.mkdir(parents=True)
        (folder / "part.csv").write_text("WeekStarting,INCOME\n1990-06-14,10\n1990-06-21,11\n")
    dataset = TabularDataset.from_delimited_files(
        str(tmp_path / "data"), partition_format="{Store}/{Brand}/part.csv"
    )
    summary = job(
        tmp_path,
        "def run(mini_batch):\n    return [','.join(map(str, mini_batch.columns))] * len(mini_batch)\n",
        [dataset],
        partition_keys=["Store", "Brand"],
    )
    assert summary["status"] == "succeeded", summary.get("message")
    lines = set((tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines())
    assert lines == {"WeekStarting,INCOME,Store,Brand"}


@pytest.mark.parametrize("kind", ["tabular", "file"])
def test_a_folder_holding_an_mltable_is_not_read_as_data(tmp_path: Path, kind: str) -> None:
    """Given as a plain folder input, an MLTable folder is read per its YAML (or refused by name), never with its
    `MLTable` file parsed as CSV rows or counted as an item."""
    folder = tmp_path / "iris"
    folder.mkdir()
    (folder / "MLTable").write_text(
        "paths:\n  - file: ./iris.csv\ntransformations:\n  - read_delimited: {}\n"
    )
    (folder / "iris.csv").write_text("a,b\n1,2\n3,4\n")
    dataset = (
        TabularDataset.from_delimited_files(str(folder))
        if kind == "tabular"
        else FileDataset.from_files(str(folder))
    )
    try:
        planned = plan_inputs([dataset], "1MB" if kind == "tabular" else 10)
    except (ConfigError, InputError) as exc:
        assert "MLTable" in str(exc)
        return
    urls = [s.url for mb in planned.mini_batches for s in mb.slices] + [
        f.url for mb in planned.mini_batches for f in mb.files
    ]
    assert urls and not any(u.endswith("/MLTable") for u in urls)


def test_arguments_that_are_not_strings(tmp_path: Path) -> None:
    """Many-models notebooks pass `arguments=['--test_size', 20]`."""
    summary = job(
        tmp_path,
        "import sys\n\ndef run(mini_batch):\n    return [' '.join(sys.argv[1:])] * len(mini_batch)\n",
        [FileDataset.from_files(files(tmp_path, 1))],
        arguments=["--test_size", 20, "--rate", 0.5],
    )
    assert summary["status"] == "succeeded", summary.get("message")
    assert (tmp_path / "out" / "parallel_run_step.txt").read_text().strip() == "--test_size 20 --rate 0.5"


def test_allowed_failed_count_stops_the_job_as_soon_as_it_is_exceeded(tmp_path: Path) -> None:
    """A failure on every mini-batch: the job stops after about allowed_failed_count + 1 failed attempts (plus the
    ones already running), not after a first attempt of every mini-batch, and says how many really ran."""
    total = 30
    summary = job(
        tmp_path,
        "def run(mini_batch):\n    raise ValueError('always')\n",
        [FileDataset.from_files(files(tmp_path, total))],
        mini_batch_size=1,
        allowed_failed_count=5,
        run_max_try=3,
    )
    assert summary["status"] == "failed"
    with open(
        tmp_path / "out" / "logs" / "sys" / "job_report" / "processed_mini-batches.csv", newline=""
    ) as handle:
        attempts = [row for row in csv.DictReader(handle) if row.get("Status") not in ("CANCELLED",)]
    slots = 2
    assert len(attempts) <= 5 + 1 + 2 * slots, f"{len(attempts)} attempts ran before the job stopped"
    attempted = {row["Mini-batch Id"] for row in attempts}
    claimed = re.search(r"\((\d+) of (\d+) mini-batches", summary["message"])
    if claimed:
        assert int(claimed.group(1)) >= len(attempted), summary["message"]


V1_SCRIPT = """
import pickle
from azureml.core import Model, Run
from azureml_user.parallel_run import EntryScript


def init():
    global model, context
    with open(Model.get_model_path("iris"), "rb") as handle:
        model = pickle.load(handle)
    context = Run.get_context()


def run(mini_batch):
    context.log("files", len(mini_batch))
    EntryScript().logger.info("scored %d", len(mini_batch))
    return [f"{model}:{p}" for p in mini_batch]
"""


def test_v1_scripts_use_get_model_path_and_the_run_context(tmp_path: Path) -> None:
    models = tmp_path / "models" / "iris" / "1"
    models.mkdir(parents=True)
    import pickle

    (models / "iris.pkl").write_bytes(pickle.dumps("iris-v1"))
    summary = job(
        tmp_path,
        V1_SCRIPT.replace("def run(mini_batch):", "def run(mini_batch):  # noqa")
        .replace("global model, run", "global model, ctx")
        .replace("run = Run.get_context()", "ctx = Run.get_context()")
        .replace("run.log(", "ctx.log("),
        [FileDataset.from_files(files(tmp_path, 2))],
        side_inputs=[str(tmp_path / "models")],
        environment_variables={"AZUREML_MODEL_DIR": str(tmp_path / "models")},
    )
    assert summary["status"] == "succeeded", summary.get("message")
    lines = (tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("iris-v1:") for line in lines)
    logs = "".join(
        p.read_text() for p in (tmp_path / "out" / "logs" / "user" / "entry_script_log").rglob("*.txt")
    )
    assert "run.log('files', 2)" in logs


def test_partition_format_starts_at_a_folder_boundary_and_ignores_url_queries() -> None:
    """The template is matched against the end of the whole path, from a folder boundary: 'data_{day}.csv'
    takes 'data_1.csv' but not 'mydata_1.csv'; a URL's query is not part of the path."""
    from airflow_parallel_run.core.inputs.partitions import partition_regex, partition_values

    regex = partition_regex("data_{day}.csv")[0]
    assert partition_values("x/data_1.csv", regex, "/root/x/data_1.csv") == {"day": "1"}
    assert partition_values("x/mydata_1.csv", regex, "/root/x/mydata_1.csv") == {}
    nested = partition_regex("/ds/{user}/{season}/{genres}.wav")[0]
    assert partition_values("u1/s1/rock.wav", nested, "/a/ds/u1/s1/rock.wav") == {
        "user": "u1",
        "season": "s1",
        "genres": "rock",
    }
    assert partition_values("u1/s1/rock.wav", nested, "/a/other/u1/s1/rock.wav") == {}


def test_partition_format_naming_folders_the_files_are_not_in_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds" / "u1" / "s1"
    root.mkdir(parents=True)
    (root / "rock.wav").write_bytes(b"RIFF")
    dataset = FileDataset.from_files(
        str(tmp_path / "ds"), partition_format="elsewhere/{user}/{season}/{genres}.wav"
    )
    with pytest.raises(InputError, match=r"has no value for partition key\(s\) \['user'\]"):
        plan_inputs([dataset], None, ["user"])


@pytest.mark.parametrize(
    ("given", "expected"),
    [(["--flag", True, "--n", 0], "--flag True --n 0"), (["--path", Path("/x/y")], "--path /x/y")],
)
def test_arguments_are_strs_of_what_was_given(tmp_path: Path, given: list[Any], expected: str) -> None:
    summary = job(
        tmp_path,
        "import sys\n\ndef run(mini_batch):\n    return [' '.join(sys.argv[1:])] * len(mini_batch)\n",
        [FileDataset.from_files(files(tmp_path, 1))],
        arguments=given,
        process_count_per_node=1,
    )
    assert summary["status"] == "succeeded", summary.get("message")
    assert (tmp_path / "out" / "parallel_run_step.txt").read_text().strip() == expected


def test_arguments_that_are_neither_strings_nor_numbers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"arguments.*a string \(or a number\)"):
        job(
            tmp_path,
            "def run(mini_batch):\n    return mini_batch\n",
            [FileDataset.from_files(files(tmp_path, 1))],
            arguments=["--model", None],
        )


FLAKY = """
import os

def run(mini_batch):
    for path in mini_batch:
        if path.endswith("f000.txt"):
            marker = {marker!r}
            if not os.path.exists(marker):
                open(marker, "w").close()
                raise ValueError("first try fails")
    return mini_batch
"""


@pytest.mark.parametrize("allowed", [0, 1])
def test_allowed_failed_count_counts_a_mini_batch_between_its_tries(tmp_path: Path, allowed: int) -> None:
    """Azure: "a mini batch may fail on the first time and then succeed on the second try. Checking between
    the first and second time will count it as failed." allowed_failed_count=0 stops at the first failed try;
    1 lets the retry succeed."""
    summary = job(
        tmp_path,
        FLAKY.format(marker=str(tmp_path / "tried")),
        [FileDataset.from_files(files(tmp_path, 4))],
        mini_batch_size=1,
        allowed_failed_count=allowed,
        run_max_try=2,
        process_count_per_node=1,
    )
    if allowed == 0:
        assert summary["status"] == "failed"
        assert summary["message"].startswith(
            "Job failed: allowed_failed_count exceeded: 1 failed mini-batches, 1 of them awaiting a retry > "
            "allowed_failed_count 0 ("
        ), summary["message"]
    else:
        assert summary["status"] == "succeeded", summary.get("message")
        assert (summary["succeeded_items"], summary["failed_mini_batches"]) == (4, 0)


@pytest.mark.parametrize("form", ["relative", "file_url"])
def test_a_variable_naming_a_side_input_gets_its_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """AZUREML_MODEL_DIR given as the side input is given (a relative path, an fsspec URL) names the folder
    the entry-script process can open; other variables stay as they are."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.txt").write_text("weights")
    monkeypatch.chdir(tmp_path)
    given = "models" if form == "relative" else models.as_uri()
    summary = job(
        tmp_path,
        "import os\n\ndef run(mini_batch):\n"
        "    d = os.environ['AZUREML_MODEL_DIR']\n"
        "    return [d + '|' + open(os.path.join(d, 'm.txt')).read() + '|' + os.environ['OTHER']] * len(mini_batch)\n",
        [FileDataset.from_files(files(tmp_path, 1))],
        side_inputs=[given],
        environment_variables={"AZUREML_MODEL_DIR": given, "OTHER": "models/x"},
        process_count_per_node=1,
    )
    assert summary["status"] == "succeeded", summary.get("message")
    line = (tmp_path / "out" / "parallel_run_step.txt").read_text().strip()
    assert line == f"{models}|weights|models/x"


def _store_files(tmp_path: Path, header: str = "WeekStarting,INCOME") -> Path:
    for store, brand in [("1000", "tropicana"), ("1001", "dominicks")]:
        folder = tmp_path / "data" / store / brand
        folder.mkdir(parents=True)
        (folder / "part.csv").write_text(f"{header}\n1990-06-14,10\n1990-06-21,11\n")
    empty = tmp_path / "data" / "0007" / "minute maid"
    empty.mkdir(parents=True)
    (empty / "part.csv").write_text(f"{header}\n")  # a file with no rows
    return tmp_path / "data"


def test_partition_format_columns_are_strings_on_every_tabular_mini_batch(tmp_path: Path) -> None:
    """Without partition_keys too (Azure's partitioned TabularDataset has the columns), as strings ('1000',
    not 1000); each file's rows get its own values, and a file without rows adds none."""
    dataset = TabularDataset.from_delimited_files(
        str(_store_files(tmp_path)), partition_format="{Store}/{Brand}/part.csv"
    )
    summary = job(
        tmp_path,
        "def run(mini_batch):\n"
        "    assert all(isinstance(v, str) for v in mini_batch['Store']), mini_batch.dtypes\n"
        "    return [f'{r.Store}|{r.Brand}|{r.INCOME}' for r in mini_batch.itertuples()]\n",
        [dataset],
        mini_batch_size="1GB",
    )
    assert summary["status"] == "succeeded", summary.get("message")
    lines = sorted((tmp_path / "out" / "parallel_run_step.txt").read_text().splitlines())
    assert lines == ["1000|tropicana|10", "1000|tropicana|11", "1001|dominicks|10", "1001|dominicks|11"]


def test_a_partition_column_the_file_already_has_fails_its_mini_batch_by_name(tmp_path: Path) -> None:
    dataset = TabularDataset.from_delimited_files(
        str(_store_files(tmp_path, header="WeekStarting,Store")), partition_format="{Store}/{Brand}/part.csv"
    )
    summary = job(
        tmp_path,
        "def run(mini_batch):\n    return [1] * len(mini_batch)\n",
        [dataset],
        partition_keys=["Store"],
        run_max_try=1,
    )
    assert summary["status"] == "failed"
    errors = (tmp_path / "out" / "logs" / "user" / "error.txt").read_text()
    assert (
        "already has a column named ['Store'] (partition_format '{Store}/{Brand}/part.csv' appends" in errors
    )


def test_a_path_string_naming_an_mltable_folder_is_read_as_the_mltable(tmp_path: Path) -> None:
    """The operator's `inputs="<folder>"` (and a list of paths): an MLTable folder or file becomes its MLTable
    input in its place; the other strings stay one FileDataset."""
    from airflow_parallel_run.core.inputs.normalise import to_datasets

    folder = tmp_path / "iris"
    folder.mkdir()
    (folder / "MLTable").write_text(
        "paths:\n  - file: ./iris.csv\ntransformations:\n  - read_delimited: {}\n"
    )
    (folder / "iris.csv").write_text("a,b\n1,2\n3,4\n")
    other = files(tmp_path, 2)
    for given in (str(folder), str(folder / "MLTable")):
        table, plain = to_datasets([given, other])
        assert isinstance(table, TabularDataset) and table.paths == (str(folder / "iris.csv"),)
        assert isinstance(plain, FileDataset) and plain.paths == (other,)
    planned = plan_inputs(to_datasets(str(folder)), "1MB")
    assert [s.url for mb in planned.mini_batches for s in mb.slices] == [str(folder / "iris.csv")]


def test_partition_column_messages_are_the_documented_ones(tmp_path: Path) -> None:
    """docs/errors.md section 2 quotes these read-time messages word for word."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text(encoding="utf-8")
    data = _store_files(tmp_path, header="WeekStarting,Store")
    (data / "other.csv").write_text("WeekStarting\n1990-06-14\n")
    dataset = TabularDataset.from_delimited_files(str(data), partition_format="{Store}/{Brand}/part.csv")
    messages = []
    for mb in plan_inputs([dataset], "1GB").mini_batches:
        with pytest.raises(InputError) as info:
            dataset.read(mb, "")
        messages.append(str(info.value).replace(str(data), "/data"))
    assert sorted(set(messages)) == [
        "file '/data/1000/tropicana/part.csv' already has a column named ['Store'] (partition_format "
        "'{Store}/{Brand}/part.csv' appends a column of that name to the rows): rename the key in the format or "
        "the column in the file",
        "file '/data/1001/dominicks/part.csv' already has a column named ['Store'] (partition_format "
        "'{Store}/{Brand}/part.csv' appends a column of that name to the rows): rename the key in the format or "
        "the column in the file",
        "file '/data/other.csv' does not match partition_format '{Store}/{Brand}/part.csv', so its rows have no "
        "values for the columns ['Store', 'Brand']",
    ]
    for message in {m.replace("1001/dominicks", "1000/tropicana") for m in messages}:
        assert f"`{message}`" in doc, message

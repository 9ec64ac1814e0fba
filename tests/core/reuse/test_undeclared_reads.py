"""A file the entry script reads that an argument or environment variable names but that is not a side input
(`arguments=["--model", "/models/model.pkl"]`): the key holds the path, not the bytes, so such results are
output but not cached, with a warning naming the file and the argument. Before, a model retrained in place
was not seen by a re-run, which served the old model's results as a success. Declared as a side input, the
same job is cached; a folder the script only writes to (an `--output-dir`) is not a read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

SCRIPT = """
import argparse, os

def init():
    global model, out
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--out")
    args, _ = parser.parse_known_args()
    model = open(args.model or os.environ["MODEL_PATH"]).read().strip()
    out = args.out

def run(mini_batch):
    if out:
        with open(os.path.join(out, "seen.txt"), "a") as log:  # written, never read
            log.write(str(len(mini_batch)))
    return [os.path.basename(p) + "=" + model for p in mini_batch]
"""


def _job(
    write_script: Any, root: Path, out: Path, client: Any, **given: Any
) -> tuple[dict[str, Any], list[str]]:
    said: list[str] = []
    environment = given.pop("environment", {})
    summary = run_job(
        ParallelRunConfig(
            entry_script=write_script(SCRIPT),
            mini_batch_size=1,
            process_count_per_node=2,
            environment_variables=environment,
        ),
        [FileDataset.from_files(str(root))],
        str(out),
        client=client,
        progress=said.append,
        **given,
    )
    return summary, [line for line in said if "is not cached" in line]


def _lines(out: Path) -> list[str]:
    return sorted((out / "parallel_run_step.txt").read_text().split())


def test_a_model_named_by_an_argument_but_not_a_side_input_is_not_cached(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, model = files(3), tmp_path / "models" / "model.txt"
    model.parent.mkdir()
    model.write_text("m1\n")
    first, warnings = _job(
        write_script, root, tmp_path / "o1", dask_client, arguments=["--model", str(model)]
    )
    assert first["status"] == "succeeded" and _lines(tmp_path / "o1") == [
        f"f{i:03d}.txt=m1" for i in range(3)
    ]
    assert len(warnings) == 1 and f"read {model}, named by argument --model" in warnings[0], warnings
    assert "side_inputs" in warnings[0]

    model.write_text("m2\n")  # retrained in place
    second, _ = _job(write_script, root, tmp_path / "o2", dask_client, arguments=["--model", str(model)])
    assert second["reused_mini_batches"] == 0, second
    assert _lines(tmp_path / "o2") == [f"f{i:03d}.txt=m2" for i in range(3)], (
        "the old model's results were served"
    )


def test_a_model_named_by_an_environment_variable_is_not_cached_either(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, model = files(2), tmp_path / "model.txt"
    model.write_text("m1\n")
    summary, warnings = _job(
        write_script, root, tmp_path / "o", dask_client, environment={"MODEL_PATH": str(model)}
    )
    assert summary["status"] == "succeeded", summary
    assert len(warnings) == 1 and "named by environment variable MODEL_PATH" in warnings[0], warnings


def test_declared_as_a_side_input_it_is_cached_and_an_output_folder_written_to_is_not_a_read(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root, model, written = files(3), tmp_path / "model.txt", tmp_path / "written"
    model.write_text("m1\n")
    written.mkdir()
    given = {"arguments": ["--model", str(model), f"--out={written}"], "side_inputs": [str(model)]}
    first, warnings = _job(write_script, root, tmp_path / "o1", dask_client, **dict(given))
    assert first["status"] == "succeeded" and not warnings, warnings
    assert (written / "seen.txt").exists(), "the scenario: run() wrote into the folder an argument names"
    second, _ = _job(write_script, root, tmp_path / "o2", dask_client, **dict(given))
    assert second["reused_mini_batches"] == 3, second


def test_reading_the_inputs_under_a_folder_an_argument_names_is_no_undeclared_read(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    """`--data-root` names the folder that holds the inputs (and the model, declared): run() reading its own
    mini-batch's files there reads keyed bytes."""
    root = files(3)  # tmp_path/<inputs>
    model = tmp_path / "model.txt"
    model.write_text("m1\n")
    script = write_script(
        SCRIPT.replace(
            'parser.add_argument("--out")',
            'parser.add_argument("--out")\n    parser.add_argument("--data-root")',
        ).replace(
            'return [os.path.basename(p) + "=" + model for p in mini_batch]',
            'return [os.path.basename(p) + "=" + model + open(p).read().strip() for p in mini_batch]',
        )
    )
    said: list[str] = []

    def job(out: Path) -> dict[str, Any]:
        return run_job(
            ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2),
            [FileDataset.from_files(str(root))],
            str(out),
            arguments=["--model", str(model), "--data-root", str(tmp_path)],
            side_inputs=[str(model)],
            client=dask_client,
            progress=said.append,
        )

    first = job(tmp_path / "o1")
    assert first["status"] == "succeeded" and not [line for line in said if "is not cached" in line], said
    assert job(tmp_path / "o2")["reused_mini_batches"] == 3

"""An entry script that imports a module from outside the job's bundle (a helper on sys.path, as Airflow's
dags folder is): the cache key does not hold that module's bytes, so its results are output but never cached,
and the job says why once. Before, an edit to the helper was not seen by a re-run: it served the results the
old helper computed as a success."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

SCRIPT = """
import os, sys
sys.path.insert(0, {lib!r})
import helper

def run(mini_batch):
    return [os.path.basename(p) + "=" + helper.VALUE for p in mini_batch]
"""


def _job(script: str, root: Path, out: Path, client: Any, **config: Any) -> tuple[dict[str, Any], list[str]]:
    said: list[str] = []
    summary = run_job(
        ParallelRunConfig(entry_script=script, mini_batch_size=1, process_count_per_node=2, **config),
        [FileDataset.from_files(str(root))],
        str(out),
        client=client,
        progress=said.append,
    )
    return summary, said


def _lines(out: Path) -> list[str]:
    return sorted((out / "parallel_run_step.txt").read_text().split())


def test_results_of_code_outside_the_bundle_are_output_but_not_cached(  # type: ignore[no-untyped-def]
    dask_client, files, tmp_path
) -> None:
    root, lib = files(3), tmp_path / "lib"
    lib.mkdir()
    (lib / "helper.py").write_text('VALUE = "v1"\n')
    script = tmp_path / "code" / "score.py"
    script.parent.mkdir()
    script.write_text(SCRIPT.format(lib=str(lib)))

    first, said = _job(str(script), root, tmp_path / "o1", dask_client)
    assert first["status"] == "succeeded" and _lines(tmp_path / "o1") == [
        f"f{i:03d}.txt=v1" for i in range(3)
    ]
    warnings = [line for line in said if "is not cached" in line]
    assert len(warnings) == 1 and str(lib / "helper.py") in warnings[0], said
    assert "source_directory" in warnings[0]
    master = (tmp_path / "o1" / "logs" / "sys" / "master_role.txt").read_text()
    assert master.count("is not cached: the entry script's process imported") == 3, master

    (lib / "helper.py").write_text('VALUE = "v2"\n')  # the key does not see this
    second, _said = _job(str(script), root, tmp_path / "o2", dask_client)
    assert second["reused_mini_batches"] == 0, second
    assert _lines(tmp_path / "o2") == [f"f{i:03d}.txt=v2" for i in range(3)], "stale results were served"


def test_a_helper_in_source_directory_is_keyed_and_cached(  # type: ignore[no-untyped-def]
    dask_client, files, tmp_path
) -> None:
    root, code = files(3), tmp_path / "code"
    code.mkdir()
    (code / "helper.py").write_text('VALUE = "v1"\n')
    (code / "score.py").write_text(SCRIPT.format(lib=str(code)).replace("sys.path.insert(0, ", "(None, "))

    def job(out: Path) -> tuple[dict[str, Any], list[str]]:
        return _job("score.py", root, out, dask_client, source_directory=str(code))

    first, said = job(tmp_path / "o1")
    assert first["status"] == "succeeded" and not [line for line in said if "is not cached" in line], said
    second, _said = job(tmp_path / "o2")
    assert second["reused_mini_batches"] == 3, second
    (code / "helper.py").write_text('VALUE = "v2"\n')
    third, _said = job(tmp_path / "o3")
    assert third["reused_mini_batches"] == 0 and _lines(tmp_path / "o3") == [
        f"f{i:03d}.txt=v2" for i in range(3)
    ]

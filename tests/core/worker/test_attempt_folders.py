"""An attempt's own output_dir folder does not outlive an attempt that wrote nothing into it: a job of
100,000 mini-batches left 100,000 empty folders in .staging for the driver to remove at its end (minutes
of the job's time). Folders with files are kept and published as before."""

from __future__ import annotations

import json

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

# run() reports the attempt folders it sees beside its own, its process and when it started, then writes a
# file into its own folder for every third mini-batch.
SCRIPT = """
import json, os, time
from airflow_parallel_run import EntryScript
def run(mini_batch):
    started = time.monotonic()
    own = EntryScript().output_dir
    siblings = sorted(n for n in os.listdir(os.path.dirname(own)) if n != os.path.basename(own))
    index = int(open(mini_batch[0]).read())
    if index % 3 == 0:
        with open(os.path.join(own, f"kept{index}.txt"), "w") as handle:
            handle.write(str(index))
    line = {"index": index, "pid": os.getpid(), "started": started, "own": os.path.basename(own)}
    return [json.dumps({**line, "siblings": siblings})]
"""


def test_empty_attempt_folders_are_removed_and_written_ones_kept(  # type: ignore[no-untyped-def]
    dask_client, write_script, files, tmp_path
) -> None:
    root = files(7)
    config = ParallelRunConfig(
        entry_script=write_script(SCRIPT), mini_batch_size=1, process_count_per_node=1, node_count=1
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "o"), client=dask_client)
    assert summary["status"] == "succeeded"
    lines = [json.loads(line) for line in (tmp_path / "o" / "parallel_run_step.txt").read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(7))
    # An attempt that ran earlier in the same process has ended (a process runs one attempt at a time), so
    # its folder is gone unless it wrote a file; the other process's attempts may still be running, and
    # their folders exist then, so only the same process's earlier attempts are judged.
    judged = 0
    for line in lines:
        for earlier in lines:
            if earlier["pid"] == line["pid"] and earlier["started"] < line["started"]:
                judged += 1
                kept = earlier["index"] % 3 == 0
                assert (earlier["own"] in line["siblings"]) == kept, (earlier, line)
    assert judged, lines  # some attempt ran after another in its process: the check above checked something
    # the written files are all published into the output folder
    assert sorted(p.name for p in (tmp_path / "o").glob("kept*.txt")) == [f"kept{i}.txt" for i in (0, 3, 6)]
    assert not (tmp_path / "o" / ".staging").exists()

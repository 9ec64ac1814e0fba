"""An attempt's own output_dir folder does not outlive an attempt that wrote nothing into it: a job of
100,000 mini-batches left 100,000 empty folders in .staging for the driver to remove at its end (minutes
of the job's time). Folders with files are kept and published as before."""

from __future__ import annotations

import json

from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

# run() reports the attempt folders it sees beside its own (earlier attempts of this job), then writes a
# file into its own folder for every third mini-batch.
SCRIPT = """
import json, os
from airflow_parallel_run import EntryScript
def run(mini_batch):
    own = EntryScript().output_dir
    siblings = sorted(n for n in os.listdir(os.path.dirname(own)) if n != os.path.basename(own))
    index = int(open(mini_batch[0]).read())
    if index % 3 == 0:
        with open(os.path.join(own, f"kept{index}.txt"), "w") as handle:
            handle.write(str(index))
    return [json.dumps({"index": index, "siblings": siblings})]
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
    for line in lines:
        # only folders of attempts that wrote a file (index % 3 == 0) remain beside a running attempt
        kept = [name for name in line["siblings"] if not name.startswith("init-")]
        assert all(int(name[2:10]) % 3 == 0 for name in kept), line
    # the written files are all published into the output folder
    assert sorted(p.name for p in (tmp_path / "o").glob("kept*.txt")) == [f"kept{i}.txt" for i in (0, 3, 6)]
    assert not (tmp_path / "o" / ".staging").exists()

"""A busy output folder is a clash of the moment: the task fails so that Airflow retries it.

Every other invalid setting fails the task without retries (`AirflowFailException`); a folder that
another running job holds (`OutputBusyError`) raises a plain `AirflowException`. No cluster starts:
the lock is checked before anything runs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_parallel_run.core import ParallelRunConfig
from airflow_parallel_run.operators import ParallelRunOperator

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
BUSY = (
    "The output folder is busy: output_path='/data/out' is not allowed: a folder no other running job writes to; "
    "job pid <pid> on <host> has used it since <time> UTC, last heartbeat <seconds> s ago (its lock "
    "/data/out/.airflow-parallel-run.lock is taken over once the heartbeat is more than 30 s old; retry later, "
    "or use another output_path)"
)


class FakeTI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def test_a_folder_held_by_a_running_job_on_another_host_fails_the_task_retriably(tmp_path: Path) -> None:
    script = tmp_path / "score.py"
    script.write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("a\n")
    out = tmp_path / "out"
    out.mkdir()
    now = time.time()
    lock = {"host": "worker-pod-7", "pid": 41, "started": now - 60, "heartbeat": now, "token": "t"}
    (out / ".airflow-parallel-run.lock").write_text(json.dumps(lock))
    op = ParallelRunOperator(
        task_id="score",
        parallel_run_config=ParallelRunConfig(entry_script=str(script)),
        inputs=str(tmp_path / "in"),
        output_path=str(out),
    )
    with pytest.raises(
        AirflowException, match=r"output folder is busy: .*job pid 41 on worker-pod-7"
    ) as info:
        op.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert not isinstance(info.value, AirflowFailException)
    assert BUSY in DOC.read_text(encoding="utf-8"), "docs/errors.md does not list the message"
    pattern = "".join(
        ".+?" if re.fullmatch(r"<[a-z]+>", part) else re.escape(part)
        for part in re.split(r"(<[a-z]+>)", BUSY)
    )
    assert re.fullmatch(pattern, str(info.value).replace(str(tmp_path), "/data")), str(info.value)
    assert json.loads((out / ".airflow-parallel-run.lock").read_text()) == lock, "the lock was touched"
    assert sorted(p.name for p in out.iterdir()) == [".airflow-parallel-run.lock"]

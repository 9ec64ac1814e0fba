"""`AttemptStatus` is its value wherever it is written: str(), format(), f-strings, JSON, CSV, pickles; and
every status has a colour in the report."""

from __future__ import annotations

import csv
import io
import json
import pickle

import pytest

from airflow_parallel_run.core.attempt import AttemptResult, AttemptStage, AttemptStatus
from airflow_parallel_run.core.logs.report import STATUS_COLOURS

STATUSES = list(AttemptStatus)


def test_the_documented_statuses() -> None:
    assert [s.value for s in STATUSES] == [
        "RUN_DONE",
        "REUSED",
        "RUN_EXCEPTION",
        "RUN_INVALID_RESULT",
        "RUN_TIMEOUT",
        "INIT_EXCEPTION",
        "INIT_TIMEOUT",
        "LOAD_EXCEPTION",
        "LOAD_TIMEOUT",
        "PROCESS_DIED",
        "SYSTEM_ERROR",
        "CANCELLED",
        "SPECULATIVE_LOST",
    ]
    assert {s for s in STATUSES if s.ok} == {AttemptStatus.RUN_DONE, AttemptStatus.REUSED}


@pytest.mark.parametrize("status", STATUSES, ids=[s.value for s in STATUSES])
def test_a_status_is_written_as_its_value(status: AttemptStatus) -> None:
    value = status.value
    assert str(status) == value and f"{status}" == value and format(status, ">20") == format(value, ">20")
    assert "%s" % status == value  # noqa: UP031 - the logging style
    assert json.dumps(status) == json.dumps(value)
    assert json.dumps({"status": status}) == json.dumps({"status": value})
    buffer = io.StringIO()
    csv.writer(buffer).writerow([status])
    assert buffer.getvalue().strip() == value
    assert pickle.loads(pickle.dumps(status)) is status
    assert status == value and AttemptStatus(value) is status


@pytest.mark.parametrize("status", STATUSES, ids=[s.value for s in STATUSES])
def test_every_status_has_a_colour_found_by_its_text(status: AttemptStatus) -> None:
    assert STATUS_COLOURS.get(status.value) == STATUS_COLOURS[status]
    assert STATUS_COLOURS[status].startswith("#")


def test_stages_and_results() -> None:
    assert [s.value for s in AttemptStage] == ["start", "init", "load", "run", "commit"]
    assert f"{AttemptStage.INIT}" == "init"
    result = AttemptResult(3, 1, AttemptStatus.RUN_DONE, total=5, succeeded=4)
    assert result.ok and result.failed == 1 and result.stage is AttemptStage.RUN
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result and copy.status is AttemptStatus.RUN_DONE
    assert not AttemptResult(3, 1, AttemptStatus.CANCELLED).ok

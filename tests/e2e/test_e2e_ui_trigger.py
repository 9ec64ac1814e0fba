"""The trigger form in a real browser: headless Chromium (Debian's package) driven by Playwright.

Logs into the Airflow UI, opens `digits_file_scoring`, opens the trigger form, checks that every Param
is there with its title and description, changes `mini_batch_size`, saves a screenshot of the filled
form, triggers, and checks over REST that the run used the value and was triggered from the UI.
"""

# ruff: noqa: F811 - `browser` is the fixture imported from e2e_browser
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from e2e_browser import browser, open_page, sign_in  # noqa: F401 - the browser fixture
from e2e_rest import Api, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "digits_file_scoring"
NEW_MINI_BATCH_SIZE = 40
DIGITS = 1797


def test_trigger_form_in_the_browser(
    stack: Stack,
    api: Api,
    browser: Any,
    tmp_path: Path,
) -> None:
    params = api.get(f"/dags/{DAG_ID}/details")["params"]
    before = {run["dag_run_id"] for run in api.runs(DAG_ID)}

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    sign_in(page, stack)

    open_page(page, f"{stack.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    text = dialog.inner_text()
    for name, param in params.items():
        schema = param.get("schema") or {}
        assert schema.get("title", name) in text, f"Param {name} has no field"
        assert param["description"] and param["description"] in text, f"Param {name}: no description"

    field = dialog.get_by_role("spinbutton", name=params["mini_batch_size"]["schema"]["title"])
    assert field.input_value() == str(params["mini_batch_size"]["value"])
    field.fill(str(NEW_MINI_BATCH_SIZE))
    field.press("Tab")
    assert field.input_value() == str(NEW_MINI_BATCH_SIZE)
    screenshot = tmp_path / "trigger-form.png"
    page.screenshot(path=str(screenshot))
    print(f"screenshot of the filled trigger form: {screenshot}")
    dialog.get_by_role("button", name="Trigger").click()
    dialog.wait_for(state="hidden")
    page.close()

    new = [run for run in api.runs(DAG_ID) if run["dag_run_id"] not in before]
    assert len(new) == 1, new
    run = new[0]
    assert run["triggered_by"] == "ui"
    assert run["conf"]["mini_batch_size"] == NEW_MINI_BATCH_SIZE
    run = api.wait_run(DAG_ID, run["dag_run_id"])
    assert run["state"] == "success", api.task_log(DAG_ID, run["dag_run_id"], "score_digits")
    summary = api.xcom(DAG_ID, run["dag_run_id"], "score_digits")
    assert summary["total_mini_batches"] == math.ceil(DIGITS / NEW_MINI_BATCH_SIZE)
    assert summary["succeeded_items"] == DIGITS
    assert f"mini_batch_size={NEW_MINI_BATCH_SIZE} files" in api.task_log(
        DAG_ID, run["dag_run_id"], "score_digits"
    )

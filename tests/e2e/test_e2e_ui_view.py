"""The "Parallel run" tab and "Parallel runs" page on the real stack, in headless Chromium.

Logs in, triggers `apr_e2e_ui_view` (200 mini-batches, 4 failing) from the UI, opens the task instance
of `score` while it runs, clicks the **Parallel run** tab and watches the progress bar move (screenshot
of the bar: its green part grows), then sees the summary, the embedded report and the error table when
the job ends, expands a trace, downloads the output (compared byte for byte with the file on disk) and
the logs zip, and finds the run on the **Parallel runs** page. Over HTTP: no token → 401, a user whose
token grants no role → 403 (the simple auth manager has no per-DAG grants; the unit tests cover a user
who may read other DAGs but not this one).
"""

# ruff: noqa: F811 - `browser` is the fixture imported from e2e_browser
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from e2e_browser import browser, open_page, sign_in, wait_for_route  # noqa: F401 - the browser fixture
from e2e_rest import Api, Stack

pytestmark = pytest.mark.usefixtures("stack_logs_on_failure")

DAG_ID = "apr_e2e_ui_view"
TASK_ID = "score"
ITEMS, FAILING = 200, 4
GREEN = (0x2F, 0x9E, 0x44)  # .bar-ok in parallel_run.css
# Set to a folder to also keep the screenshots there (docs/images holds two of them).
SCREENSHOTS = os.environ.get("APR_UI_SCREENSHOTS")


def _green_pixels(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        data = image.convert("RGB").tobytes()
    pixels = (data[i : i + 3] for i in range(0, len(data), 3))
    return sum(1 for p in pixels if all(abs(a - b) <= 12 for a, b in zip(p, GREEN, strict=True)))


def _minted_token(stack: Stack, username: str, role: str | None) -> str:
    """A JWT signed by the stack's own auth manager (its secret), for a user the stack does not list."""
    code = (
        "from airflow.api_fastapi.app import create_auth_manager\n"
        "from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser\n"
        f"print(create_auth_manager().generate_jwt(SimpleAuthManagerUser(username={username!r}, role={role!r})))\n"
    )
    result = subprocess.run(
        [stack.python, "-c", code], env=stack.env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def _wait_state(api: Api, run_id: str, states: set[str], timeout: float = 180.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = str(api.task_instance(DAG_ID, run_id, TASK_ID).get("state"))
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{TASK_ID} still {state} after {timeout:.0f} s")
        time.sleep(0.5)


def test_parallel_run_tab_in_the_browser(
    stack: Stack,
    api: Api,
    browser: Any,
    tmp_path: Path,
) -> None:
    stack.wait_for_dags([DAG_ID])
    before = {run["dag_run_id"] for run in api.runs(DAG_ID)}
    page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page.set_default_timeout(60_000)
    sign_in(page, stack)

    open_page(page, f"{stack.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Trigger").click()
    dialog.wait_for(state="hidden")
    deadline = time.monotonic() + 60
    while not (new := [r for r in api.runs(DAG_ID) if r["dag_run_id"] not in before]):
        assert time.monotonic() < deadline, "the UI trigger made no run"
        time.sleep(0.5)
    run_id = new[0]["dag_run_id"]
    assert new[0]["triggered_by"] == "ui"
    _wait_state(api, run_id, {"running", "success", "failed"})

    open_page(page, f"{stack.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{TASK_ID}")
    page.get_by_text("Parallel run", exact=True).first.click()
    frame = page.frame_locator('iframe[title="Parallel run"]')
    bar = frame.locator("#progress-bar")
    bar.wait_for()

    # while the job runs: the bar moves (several distinct "done" counts, never backwards)
    seen: list[int] = []
    running_shot = tmp_path / "tab-running.png"
    deadline = time.monotonic() + 240
    while frame.locator("#state").inner_text() == "running" and time.monotonic() < deadline:
        done = int(bar.get_attribute("data-done") or 0)
        if not seen or done != seen[-1]:
            seen.append(done)
            if len(seen) == 3:
                page.screenshot(path=str(running_shot))
                bar.screenshot(path=str(tmp_path / "bar-running.png"))
                dashboard = frame.locator("#dashboard-link")
                with page.context.expect_page() as popup_info:  # a new tab, out of the sandboxed frame
                    dashboard.click()
                popup = popup_info.value
                base = str(dashboard.get_attribute("href")).rsplit("/", 1)[0]
                popup.wait_for_url(lambda url, base=base: url.startswith(base), wait_until="commit")
                popup.close()
        time.sleep(0.5)
    assert len(seen) >= 3, f"the progress bar did not move while the job ran: {seen}"
    assert seen == sorted(seen) and 0 < seen[1] < ITEMS, seen
    assert running_shot.is_file() and _green_pixels(tmp_path / "bar-running.png") > 50

    # when it has ended: summary, report, errors, downloads
    frame.locator("#summary-section").wait_for()
    assert frame.locator("#state").inner_text() == "succeeded"
    summary = api.xcom(DAG_ID, run_id, TASK_ID)
    assert (summary["failed_mini_batches"], summary["succeeded_items"]) == (FAILING, ITEMS - FAILING)
    numbers = frame.locator("#summary-numbers")
    assert numbers.locator('[data-key="succeeded_items"] dd').inner_text() == str(ITEMS - FAILING)
    assert numbers.locator('[data-key="failed_mini_batches"] dd').inner_text() == str(FAILING)
    rows = frame.locator("#errors-table tbody tr")
    rows.first.wait_for()
    assert rows.count() == FAILING
    assert "ValueError: cannot score item007.txt" in frame.locator("#errors-table").inner_text()
    frame.locator("#errors-table .trace-link").first.click()
    trace = frame.locator("#errors-table tr.trace pre")
    trace.wait_for()
    deadline = time.monotonic() + 30
    while "Traceback" not in trace.inner_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "ValueError: cannot score item007.txt" in trace.inner_text()
    report = frame.frame_locator("#report")
    report.locator("#summary").wait_for()  # the engine's plotly report, inside the tab
    assert report.locator(".plotly-graph-div").count() >= 2
    frame.locator("#report-section").scroll_into_view_if_needed()
    page.wait_for_timeout(1500)  # the report's plots draw
    ended_shot = tmp_path / "tab-ended.png"
    frame.locator("#summary-section").scroll_into_view_if_needed()
    page.screenshot(path=str(ended_shot))
    assert ended_shot.stat().st_size > 20_000
    frame.locator("#errors-section").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "tab-errors.png"))

    with page.expect_download() as download_info:
        frame.locator("#download-output").click()
    saved = tmp_path / "downloaded-scores.txt"
    download_info.value.save_as(saved)
    on_disk = Path(summary["append_row_file"])
    assert (
        saved.read_bytes() == on_disk.read_bytes() and len(saved.read_bytes().splitlines()) == ITEMS - FAILING
    )

    with page.expect_download() as download_info:
        frame.locator("#download-logs").click()
    archive_path = tmp_path / "logs.zip"
    download_info.value.save_as(archive_path)
    with zipfile.ZipFile(archive_path) as archive:
        assert archive.testzip() is None
        assert (
            archive.read("logs/job_result.txt") == (Path(summary["logs_dir"]) / "job_result.txt").read_bytes()
        )

    # the nav page (Browse > Parallel runs) lists the run and links to the tab
    # The home page fully loaded (its scripts ran), not only committed: a menu used while the UI was still
    # starting was once seen taking the click without routing anywhere (60 s wait, no navigation).
    page.goto(f"{stack.url}/", wait_until="load")
    page.get_by_role("button", name="Browse").click()
    entry = page.get_by_role("menuitem", name="Parallel runs")
    entry.wait_for(state="visible")
    entry.click()
    # the SPA may add a trailing slash or a query to the route, and once the view's iframe has loaded it
    # appends the iframe's own path (/plugin/parallel-runs/parallel-run/runs): the page is the same
    wait_for_route(page, lambda url: re.search(r"/plugin/parallel-runs(/|$)", urlsplit(url).path) is not None)
    runs = page.frame_locator('iframe[title="Parallel runs"]')
    row = runs.locator(f'#runs-table tr[data-run-id="{run_id}"]')
    row.wait_for()
    text = row.inner_text()
    assert DAG_ID in text and "succeeded" in text and str(ITEMS - FAILING) in text
    runs_shot = tmp_path / "runs-page.png"
    page.screenshot(path=str(runs_shot))
    row.locator(".tab-link").click()
    wait_for_route(page, lambda url: f"/tasks/{TASK_ID}/plugin/parallel-run" in url)
    page.frame_locator('iframe[title="Parallel run"]').locator("#summary-section").wait_for()
    page.close()
    print(f"screenshots: {running_shot} {ended_shot} {runs_shot}")
    if SCREENSHOTS:
        for shot in tmp_path.glob("*.png"):
            shutil.copy(shot, Path(SCREENSHOTS) / shot.name)


def test_auth_on_the_real_stack(stack: Stack, api: Api) -> None:
    runs = api.runs(DAG_ID)
    if not runs:
        pytest.skip("needs the run of test_parallel_run_tab_in_the_browser")
    params = {"dag_id": DAG_ID, "run_id": runs[0]["dag_run_id"], "task_id": TASK_ID}
    url = f"{stack.url}/parallel-run/api/task"
    assert requests.get(url, params=params, timeout=30).status_code == 401
    assert requests.get(f"{stack.url}/parallel-run/runs", timeout=30).status_code == 401
    nobody = {"Authorization": f"Bearer {_minted_token(stack, 'nobody', None)}"}
    assert requests.get(url, params=params, headers=nobody, timeout=30).status_code == 403
    assert (
        requests.get(
            f"{stack.url}/parallel-run/task/output", params=params, headers=nobody, timeout=30
        ).status_code
        == 403
    )
    viewer = {"Authorization": f"Bearer {_minted_token(stack, 'viewer', 'viewer')}"}
    status = requests.get(url, params=params, headers=viewer, timeout=30)
    assert status.status_code == 200 and status.json()["summary"]["status"] == "succeeded"
    escape = requests.get(
        f"{stack.url}/parallel-run/task/logs/file",
        params={**params, "path": "../scores.txt"},
        headers=viewer,
        timeout=30,
    )
    assert escape.status_code == 404
    assert json.loads(escape.text)["detail"]

"""The "Parallel run" tab and "Parallel runs" page through the real API server app (`create_app()`,
the plugin mounted from its entry point), with Airflow's own auth: a JWT per user, the simple auth
manager's roles and a DAG hidden from ``limited`` users (see ui_support).

One real job runs first (`dag.test()` of tests/dags/apr_test_ui_view.py: 24 mini-batches, 3
failing twice, plus a mapped task of two jobs); every route is then checked for what it serves, what
it refuses (401/403/404, paths that escape) and that no secret reaches a page or a download.
"""

# ruff: noqa: F811 - the session fixtures imported from ui_support are parameters of the tests
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_error_catalogue_airflow import check_documented
from ui_support import (  # noqa: F401 - session fixtures, shared with test_ui_scale
    CONN_SECRET,
    DAG_ID,
    ENV_SECRET,
    HIDDEN_DAGS,
    Client,
    app,
    clone_task_instances,
    push_xcoms,
    run,
    token,
    ui_env,
    viewer,
)

TASK_ROUTES = ["/task", "/api/task", "/api/task/errors", "/task/report", "/task/logs.zip", "/task/output"]


def ti(run: dict[str, Any], task_id: str = "score", map_index: Any = None, **extra: Any) -> dict[str, Any]:
    params = {"dag_id": run["dag_id"], "run_id": run["run_id"], "task_id": task_id, **extra}
    if map_index is not None:
        params["map_index"] = map_index
    return params


def xcom(run: dict[str, Any], task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        raw = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == run["dag_id"],
                XComModel.run_id == run["run_id"],
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == key,
            )
        )
    return json.loads(raw) if isinstance(raw, str) else raw


# -- registration ---------------------------------------------------------------------------------


def test_airflow_plugins_lists_the_plugin(ui_env: None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "plugins", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    (plugin,) = [p for p in json.loads(result.stdout) if p["name"] == "parallel_run"]
    assert plugin["fastapi_apps"] == [
        {"app": "fastapi.applications.FastAPI", "url_prefix": "/parallel-run", "name": "Parallel run"}
    ]
    views = {v["destination"]: v for v in plugin["external_views"]}
    assert views["task_instance"]["name"] == "Parallel run"
    assert views["task_instance"]["href"].startswith("/parallel-run/task?dag_id={DAG_ID}&run_id={RUN_ID}")
    assert "map_index={MAP_INDEX}" in views["task_instance"]["href"]
    assert views["nav"]["name"] == "Parallel runs" and views["nav"]["href"] == "/parallel-run/runs"
    assert "airflow.plugins" in plugin["source"]


def test_external_views_follow_the_base_url_path() -> None:
    from airflow_parallel_run.plugin import external_views

    views = external_views("/airflow")
    assert all(v["href"].startswith("/airflow/parallel-run/") for v in views)


# -- security -------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [*TASK_ROUTES, "/task/trace", "/task/logs/file", "/runs", "/api/runs"])
def test_every_route_needs_a_token(app: Any, run: dict[str, Any], route: str) -> None:
    response = Client(app, None).get(route, **ti(run), mini_batch=3, attempt=1, path="job_result.txt")
    assert response.status_code == 401, response.text


@pytest.mark.parametrize("route", [*TASK_ROUTES, "/task/trace", "/task/logs/file"])
def test_a_user_who_may_not_read_the_dag_gets_403(app: Any, run: dict[str, Any], route: str) -> None:
    params = {**ti(run), "mini_batch": 3, "attempt": 1, "path": "job_result.txt"}
    for user, role in (("limited-viewer", "admin"), ("norole", None)):
        response = Client(app, user, role).get(route, **params)
        assert response.status_code == 403, (user, response.text)
    # a DAG this limited user may read: not 403 (it does not exist, so 404)
    other = {**params, "dag_id": "some_other_dag"}
    assert Client(app, "limited-viewer", "admin").get(route, **other).status_code == 404


def test_the_list_shows_only_readable_dags(app: Any, run: dict[str, Any], viewer: Client) -> None:
    assert DAG_ID in HIDDEN_DAGS
    assert any(j["dag_id"] == DAG_ID for j in all_jobs(viewer))
    limited = Client(app, "limited-viewer", "admin")
    hidden = limited.get("/api/runs").json()
    assert all(j["dag_id"] != DAG_ID for j in hidden["jobs"]) and DAG_ID not in hidden["dag_ids"]
    assert limited.get("/api/runs", dag_id=DAG_ID).status_code == 403
    assert Client(app, "norole", None).get("/api/runs").json()["total"] == 0


def test_an_expired_or_forged_token_is_refused(app: Any, run: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    http = TestClient(app)
    forged = token("viewer", "admin")[:-4] + "AAAA"
    response = http.get(
        "/parallel-run/api/task", params=ti(run), headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code in (401, 403)


# -- the tab of a finished job -------------------------------------------------------------------


def test_tab_page_is_self_contained(viewer: Client, run: dict[str, Any]) -> None:
    response = viewer.get("/task", **ti(run, map_index="{MAP_INDEX}"))
    assert response.status_code == 200
    html = response.text
    csp = response.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in html and f'<style nonce="{nonce}">' in html
    assert "http://" not in html and "https://" not in html, "no CDN: everything is inline"
    context = json.loads(
        html.split('<script id="apr-context" type="application/json">')[1].split("</script>")[0]
    )
    assert context == {
        "view": "task",
        "dag_id": DAG_ID,
        "run_id": run["run_id"],
        "task_id": "score",
        "map_index": -1,
        "operator": "ParallelRunOperator",
        "has_job": True,
    }


def test_status_of_a_finished_job(viewer: Client, run: dict[str, Any]) -> None:
    status = viewer.get("/api/task", **ti(run)).json()
    summary = xcom(run, "score")
    record = xcom(run, "score", "parallel_run_job")
    assert status["ti_state"] == "success" and status["ended"] is True
    assert status["summary"] == summary
    assert (summary["failed_mini_batches"], summary["succeeded_mini_batches"]) == (3, 21)
    assert status["job"]["job_id"] == record["job_id"] and status["job"]["output"] == summary["output"]
    progress = status["progress"]
    assert progress["state"] == "succeeded" and progress["done_mini_batches"] == 24
    assert status["available"]["report"] is True and status["available"]["logs"] is True
    output = Path(summary["append_row_file"])
    assert status["available"]["output"] == {"name": "scores.txt", "size": output.stat().st_size}
    assert status["dashboard_url"].startswith("http://127.0.0.1:")
    assert {(e["mini_batch"], e["final"]) for e in status["recent_errors"]} == {
        (m, f) for m in (3, 10, 17) for f in (True, False)
    }


def test_error_table_pages_and_final_failures(viewer: Client, run: dict[str, Any]) -> None:
    everything = viewer.get("/api/task/errors", **ti(run)).json()
    assert everything["total"] == 6 and len(everything["errors"]) == 6
    first = everything["errors"][0]
    assert first["status"] == "RUN_EXCEPTION" and first["message"].startswith(
        "ValueError: cannot score 'bad'"
    )
    assert first["items"] == 1 and first["input_count"] == 1 and first["inputs"][0].endswith(".txt")
    assert first["trace_file"].startswith("user/error/")
    final = viewer.get("/api/task/errors", **ti(run), final_only="true").json()
    assert [e["mini_batch"] for e in final["errors"]] == [3, 10, 17]
    assert all(e["attempt"] == 2 and e["final"] for e in final["errors"])
    page = viewer.get("/api/task/errors", **ti(run), offset=2, limit=2).json()
    assert page["total"] == 6 and page["errors"] == everything["errors"][2:4]
    assert viewer.get("/api/task/errors", **ti(run), limit=100000).status_code == 422


def test_trace_of_each_failed_attempt(viewer: Client, run: dict[str, Any]) -> None:
    for mini_batch in (3, 10, 17):
        for attempt in (1, 2):
            response = viewer.get("/task/trace", **ti(run), mini_batch=mini_batch, attempt=attempt)
            assert response.status_code == 200
            text = response.text
            assert f"mini-batch {mini_batch} attempt {attempt} RUN_EXCEPTION" in text
            assert "Traceback" in text and "ValueError: cannot score 'bad'" in text
            assert text.count(" attempt ") == 1, "only that attempt's block"
            assert response.headers["content-security-policy"].startswith("sandbox")
    assert viewer.get("/task/trace", **ti(run), mini_batch=4, attempt=1).status_code == 404
    assert viewer.get("/task/trace", **ti(run), mini_batch=-1, attempt=1).status_code == 422


def test_report_is_the_engine_report_sandboxed(viewer: Client, run: dict[str, Any]) -> None:
    response = viewer.get("/task/report", **ti(run))
    logs = Path(xcom(run, "score")["logs_dir"])
    assert response.status_code == 200 and response.content == (logs / "report.html").read_bytes()
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"].startswith("sandbox allow-scripts;")


def test_output_download_is_the_file_byte_for_byte(viewer: Client, run: dict[str, Any]) -> None:
    response = viewer.get("/task/output", **ti(run))
    path = Path(xcom(run, "score")["append_row_file"])
    assert response.status_code == 200 and response.content == path.read_bytes()
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"scores.txt\"; filename*=UTF-8''scores.txt"
    )
    assert int(response.headers["content-length"]) == path.stat().st_size
    assert "content-encoding" not in response.headers or response.headers["content-encoding"] == "identity"


def test_logs_zip_holds_every_log_file(viewer: Client, run: dict[str, Any]) -> None:
    response = viewer.get("/task/logs.zip", **ti(run))
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"].endswith('__score__logs.zip"')
    logs = Path(xcom(run, "score")["logs_dir"])
    expected = {
        f"logs/{p.relative_to(logs).as_posix()}": p.read_bytes() for p in logs.rglob("*") if p.is_file()
    }
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        got = {name: archive.read(name) for name in archive.namelist()}
    assert got == expected
    assert "logs/report.html" in got and "logs/sys/progress.json" in got


def test_log_file_by_relative_path(viewer: Client, run: dict[str, Any]) -> None:
    logs = Path(xcom(run, "score")["logs_dir"])
    response = viewer.get("/task/logs/file", **ti(run), path="job_result.txt")
    assert response.status_code == 200 and response.content == (logs / "job_result.txt").read_bytes()
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-content-type-options"] == "nosniff"


ESCAPES = [
    "../scores.txt",
    "..",
    "user/../../scores.txt",
    "/etc/passwd",
    "//etc/passwd",
    "file:///etc/passwd",
    "s3://another-bucket/logs/job_result.txt",
    "memory://x",
    "user//error.txt",
    "./job_result.txt",
    "user\\..\\..\\scores.txt",
    "",
    "job_result.txt\x00.png",
    "%2e%2e/scores.txt",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_that_leave_the_logs_folder_are_not_found(
    viewer: Client, run: dict[str, Any], path: str
) -> None:
    response = viewer.get("/task/logs/file", **ti(run), path=path)
    assert response.status_code in (404, 422), (path, response.status_code)
    if response.status_code == 404:
        check_documented('{"detail":"No such file in the job\'s logs folder"}', response.text)
    assert b"good in" not in response.content and b"root:" not in response.content


def test_a_symlink_out_of_the_logs_folder_is_neither_served_nor_zipped(
    viewer: Client, run: dict[str, Any], tmp_path: Path
) -> None:
    logs = Path(xcom(run, "score")["logs_dir"])
    outside = tmp_path / "outside.txt"
    outside.write_text("outside-the-job\n")
    link = logs / "user" / "linked.txt"
    link.symlink_to(outside)
    try:
        assert viewer.get("/task/logs/file", **ti(run), path="user/linked.txt").status_code == 404
        archive = viewer.get("/task/logs.zip", **ti(run)).content
        assert b"outside-the-job" not in archive
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            assert "logs/user/linked.txt" not in zf.namelist()
    finally:
        link.unlink()


@pytest.mark.parametrize(
    "record",
    [
        {"output": "/", "logs_dir": "/etc", "append_row_file": "/etc/passwd"},
        {"output": "/etc", "append_row_file": "/etc/passwd"},  # a "job" whose output folder is /etc
        {"output": "/tmp/x", "append_row_file": "/etc/passwd"},
        {"output": "/tmp/x", "append_row_file": "/tmp/x/../../etc/passwd"},
        {"output": "/tmp/x", "logs_dir": "/var/log"},
        {"output": 42},
        "not a record",
    ],
)
def test_a_tampered_job_record_opens_nothing_outside(
    viewer: Client, run: dict[str, Any], record: Any
) -> None:
    """A task could push any XCom under the key: the view still serves only <output>/logs/** and the
    plain-named output file in <output>."""
    push_xcoms(DAG_ID, "write_inputs", {run["run_id"]: {"parallel_run_job": record}})
    params = ti(run, task_id="write_inputs")
    for route in ("/task/output", "/task/logs/file", "/task/report", "/api/task/errors"):
        response = viewer.get(route, **params, path="../../etc/passwd")
        assert response.status_code == 404, (route, response.text)
        assert b"root:" not in response.content
    passwd = viewer.get("/task/logs/file", **params, path="passwd")
    assert passwd.status_code == 404 and b"root:" not in passwd.content


def test_task_without_a_job_and_unknown_task_instances(viewer: Client, run: dict[str, Any]) -> None:
    page = viewer.get("/task", **ti(run, task_id="write_inputs"))
    assert page.status_code == 200 and '"operator": "_PythonDecoratedOperator"' in page.text
    unknown = ti(run, task_id="no_such_task")
    for route in TASK_ROUTES:
        assert viewer.get(route, **unknown).status_code == 404, route
    assert viewer.get("/api/task", **ti({**run, "run_id": "no_such_run"})).status_code == 404


def test_mapped_task_instances_each_show_their_own_job(viewer: Client, run: dict[str, Any]) -> None:
    seen = set()
    for index, items in ((0, 3), (1, 4)):
        status = viewer.get("/api/task", **ti(run, task_id="score_mapped", map_index=index)).json()
        assert status["summary"]["total_items"] == items and status["ended"]
        assert status["job"]["output"].endswith(f"/mapped_out/{index}")
        seen.add(status["job"]["job_id"])
        output = viewer.get("/task/output", **ti(run, task_id="score_mapped", map_index=index))
        assert output.content == Path(status["summary"]["append_row_file"]).read_bytes()
    assert len(seen) == 2
    assert viewer.get("/api/task", **ti(run, task_id="score_mapped", map_index=2)).status_code == 404
    assert viewer.get("/api/task", **ti(run, task_id="score_mapped")).status_code == 404


def test_no_secret_in_any_page_or_download(viewer: Client, run: dict[str, Any]) -> None:
    secrets = (CONN_SECRET.encode(), ENV_SECRET.encode())
    bodies = [viewer.get(route, **ti(run)).content for route in TASK_ROUTES]
    bodies += [viewer.get("/runs").content, viewer.get("/api/runs").content]
    bodies += [viewer.get("/task/trace", **ti(run), mini_batch=3, attempt=1).content]
    logs = Path(xcom(run, "score")["logs_dir"])
    for path in logs.rglob("*"):
        if path.is_file():
            bodies.append(
                viewer.get("/task/logs/file", **ti(run), path=path.relative_to(logs).as_posix()).content
            )
    with zipfile.ZipFile(io.BytesIO(viewer.get("/task/logs.zip", **ti(run)).content)) as archive:
        bodies += [archive.read(name) for name in archive.namelist()]
    for body in bodies:
        for secret in secrets:
            assert secret not in body


# -- the list -------------------------------------------------------------------------------------


def all_jobs(client: Client, **filters: Any) -> list[dict[str, Any]]:
    """Every page of the list (other tests of the session add jobs of their own)."""
    jobs: list[dict[str, Any]] = []
    while True:
        page = client.get("/api/runs", offset=len(jobs), limit=500, **filters).json()
        jobs += page["jobs"]
        if not page["jobs"] or len(jobs) >= page["total"]:
            return jobs


def test_runs_page_and_list(viewer: Client, run: dict[str, Any]) -> None:
    page = viewer.get("/runs")
    assert page.status_code == 200 and "Parallel runs" in page.text
    mine = [j for j in all_jobs(viewer, dag_id=DAG_ID) if j["run_id"] == run["run_id"]]
    assert {(j["task_id"], j["map_index"]) for j in mine} >= {
        ("score", -1),
        ("score_mapped", 0),
        ("score_mapped", 1),
    }
    score = next(j for j in mine if j["task_id"] == "score")
    summary = xcom(run, "score")
    assert score["status"] == "succeeded" and score["ti_state"] == "success"
    for key in ("succeeded_items", "failed_items", "reused_mini_batches", "total_mini_batches", "duration_s"):
        assert score[key] == summary[key], key
    assert score["started"] == xcom(run, "score", "parallel_run_job")["started"]
    failed = all_jobs(viewer, dag_id=DAG_ID, state="failed")
    assert all(j["ti_state"] == "failed" for j in failed)
    assert run["run_id"] not in {j["run_id"] for j in failed}
    assert viewer.get("/api/runs", state="bogus").status_code == 400


# -- a job whose files are in S3 (moto), read with the job's aws connection -----------------------

S3_SECRET = "s3-secret-0a9c1b"


@pytest.fixture(scope="module")
def s3_job(run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real job (engine on a LocalCluster) writing to s3://apr-ui/out, recorded on a copy of the
    `score` task instance with storage_conn_id=apr_ui_s3 (an aws connection with the endpoint)."""
    from distributed import Client, LocalCluster
    from moto.server import ThreadedMotoServer

    from airflow_parallel_run.core import FileDataset, ParallelRunConfig, run_job

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        conn = {
            "conn_type": "aws",
            "login": "AKIAS3UITEST",
            "password": S3_SECRET,
            "extra": {"endpoint_url": endpoint},
        }
        os.environ["AIRFLOW_CONN_APR_UI_S3"] = json.dumps(conn)
        options = {"key": "AKIAS3UITEST", "secret": S3_SECRET, "endpoint_url": endpoint}
        import s3fs

        s3fs.S3FileSystem(**options).mkdir("apr-ui")
        folder = tmp_path_factory.mktemp("s3-in")
        for i in range(8):
            (folder / f"item{i}.txt").write_text("bad\n" if i == 5 else f"s3 item {i}\n")
        script = Path(__file__).resolve().parents[1] / "dags" / "scripts" / "fail_some.py"
        config = ParallelRunConfig(
            entry_script=str(script), mini_batch_size=1, run_max_try=1, process_count_per_node=2
        )
        import threading

        fs = s3fs.S3FileSystem(**options)
        seen: list[dict[str, Any]] = []
        stop = threading.Event()

        def watch() -> None:  # what the tab polls while the job runs: the copy in the bucket
            while not stop.wait(0.1):
                try:
                    fs.invalidate_cache()
                    seen.append(json.loads(fs.cat("apr-ui/out/logs/sys/progress.json")))
                except (OSError, ValueError):
                    continue

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            summary = run_job(
                config,
                [FileDataset.from_files(str(folder))],
                "s3://apr-ui/out",
                client=client,
                storage_options=options,
            )
        stop.set()
        watcher.join(timeout=30)
        assert summary["status"] == "succeeded" and summary["failed_mini_batches"] == 1, summary
        running = [doc for doc in seen if doc["state"] == "running"]
        assert running and running[-1]["done_mini_batches"] > 0, "no running progress reached the bucket"
        (run_id,) = clone_task_instances(DAG_ID, run["run_id"], "score", 1, prefix="s3_")
        record = {
            "job_id": "s3job",
            "output": "s3://apr-ui/out",
            "logs_dir": "s3://apr-ui/out/logs",
            "append_row_file": "s3://apr-ui/out/parallel_run_step.txt",
            "storage_conn_id": "apr_ui_s3",
            "started": "2026-01-01T00:00:00+00:00",
        }
        push_xcoms(DAG_ID, "score", {run_id: {"parallel_run_job": record, "return_value": summary}})
        yield {"dag_id": DAG_ID, "run_id": run_id, "summary": summary, "fs": s3fs.S3FileSystem(**options)}
    finally:
        os.environ.pop("AIRFLOW_CONN_APR_UI_S3", None)
        server.stop()


def test_a_job_in_s3_through_its_connection(viewer: Client, s3_job: dict[str, Any]) -> None:
    fs = s3_job["fs"]
    status = viewer.get("/api/task", **ti(s3_job)).json()
    assert status["files_error"] is None and status["progress"]["state"] == "succeeded"
    assert status["available"]["report"] is True and status["available"]["output"]["size"] == fs.size(
        "apr-ui/out/parallel_run_step.txt"
    )
    output = viewer.get("/task/output", **ti(s3_job))
    assert output.status_code == 200 and output.content == fs.cat("apr-ui/out/parallel_run_step.txt")
    errors = viewer.get("/api/task/errors", **ti(s3_job)).json()
    assert [e["mini_batch"] for e in errors["errors"]] == [5]
    trace = viewer.get("/task/trace", **ti(s3_job), mini_batch=5, attempt=1)
    assert trace.status_code == 200 and "cannot score 'bad'" in trace.text
    with zipfile.ZipFile(io.BytesIO(viewer.get("/task/logs.zip", **ti(s3_job)).content)) as archive:
        names = set(archive.namelist())
        assert archive.read("logs/job_result.txt") == fs.cat("apr-ui/out/logs/job_result.txt")
    assert names == {"logs/" + p.split("/out/logs/", 1)[1] for p in fs.find("apr-ui/out/logs")}
    for path in ("../parallel_run_step.txt", "s3://apr-ui/out/logs/job_result.txt", "s3://other/x"):
        assert viewer.get("/task/logs/file", **ti(s3_job), path=path).status_code == 404
    for route in TASK_ROUTES:
        assert S3_SECRET.encode() not in viewer.get(route, **ti(s3_job)).content


def test_a_link_from_xcom_must_be_http(viewer: Client, run: dict[str, Any]) -> None:
    """A task can push any dashboard URL: only http(s) becomes a link (never javascript:)."""
    (run_id,) = clone_task_instances(DAG_ID, run["run_id"], "score", 1, prefix="js_")
    record = xcom(run, "score", "parallel_run_job")
    push_xcoms(
        DAG_ID,
        "score",
        {run_id: {"parallel_run_job": record, "dask_dashboard_url": "javascript:alert(document.cookie)"}},
    )
    status = viewer.get("/api/task", **ti({**run, "run_id": run_id})).json()
    assert status["dashboard_url"] is None and status["job"]["job_id"] == record["job_id"]


def test_a_missing_connection_is_named_not_shown(viewer: Client, s3_job: dict[str, Any]) -> None:
    saved = os.environ.pop("AIRFLOW_CONN_APR_UI_S3")
    try:
        status = viewer.get("/api/task", **ti(s3_job)).json()
        check_documented(
            "The job's files cannot be read from the API server: the connection '<conn>' that reads this "
            "job's files is not available to the API server (<exception>)",
            f"The job's files cannot be read from the API server: {status['files_error']}",
        )
        assert "'apr_ui_s3'" in status["files_error"] and status["progress"] is None
        assert viewer.get("/task/output", **ti(s3_job)).status_code == 404
    finally:
        os.environ["AIRFLOW_CONN_APR_UI_S3"] = saved


def test_a_running_job_in_the_list_shows_its_progress(viewer: Client, run: dict[str, Any]) -> None:
    (run_id,) = clone_task_instances(DAG_ID, run["run_id"], "score", 1, prefix="live_", states=("running",))
    record = xcom(run, "score", "parallel_run_job")
    push_xcoms(DAG_ID, "score", {run_id: {"parallel_run_job": record}})  # no summary yet
    (job,) = [j for j in all_jobs(viewer, dag_id=DAG_ID, state="running") if j["run_id"] == run_id]
    progress = json.loads((Path(record["logs_dir"]) / "sys" / "progress.json").read_text())
    assert job["status"] is None and job["ti_state"] == "running"
    assert (job["succeeded_items"], job["failed_items"], job["total_mini_batches"]) == (21, 3, 24)
    assert job["duration_s"] == progress["elapsed_s"] and "record" not in job

"""The FastAPI app of the "Parallel run" tab and the "Parallel runs" page (mounted at /parallel-run).

Every route depends on Airflow's own security dependencies: `requires_access_dag` (the DAG named by
the ``dag_id`` query parameter; task-instance access for the pages and the output, task-log access for
the report, traces, log files and the logs zip) or `GetUserDep` plus the auth manager's readable DAGs
for the list. No route takes a file path or URL that is opened as given: files come from the job's
own XCom record (see `airflow_parallel_run.ui.files`).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from functools import cache
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, status
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from airflow_parallel_run.ui import queries
from airflow_parallel_run.ui.attempts import AttemptsCache, trace_section
from airflow_parallel_run.ui.files import REPORT_FILE, JobFiles, NotFound, RecordError, redact_url
from airflow_parallel_run.ui.zipstream import CHUNK, stream_zip

URL_PREFIX = "/parallel-run"
LIVE_TI_STATES = frozenset({"running", "deferred", "queued", "scheduled", "up_for_reschedule"})
FINISHED_TI_STATES = frozenset({"success", "failed", "upstream_failed", "skipped", "removed", "up_for_retry"})
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

can_read_task = Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))
can_read_logs = Depends(requires_access_dag("GET", DagAccessEntity.TASK_LOGS))
DagId = Annotated[str, Query(min_length=1, max_length=250)]
RunId = Annotated[str, Query(min_length=1, max_length=250)]
TaskId = Annotated[str, Query(min_length=1, max_length=250)]
MapIndex = Annotated[str, Query(max_length=32)]
_ATTEMPTS = AttemptsCache()
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Pages are our own markup and data from the API; the report and log files are the job's, so they
# run sandboxed in an opaque origin (no cookies, no API calls as the user).
_PAGE_CSP = (
    "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"
)
_REPORT_CSP = (
    "sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; frame-ancestors 'self'"
)
_FILE_CSP = "sandbox; default-src 'none'; frame-ancestors 'self'"


def readable_dags(user: GetUserDep) -> set[str]:
    """The DAGs the user may read, from the auth manager (the list shows jobs of these only)."""
    return set(get_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


Readable = Annotated[set[str], Depends(readable_dags)]


def parse_map_index(value: str | None) -> int:
    """The task instance's map index; the UI leaves ``{MAP_INDEX}`` unfilled for unmapped tasks."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return -1


# -- resolving a task instance's job ------------------------------------------------------------


def _storage_options(record: dict[str, Any]) -> dict[str, Any]:
    conn_id = record.get("storage_conn_id")
    if not conn_id:
        return {}
    from airflow.models.connection import Connection

    from airflow_parallel_run.hooks import connection_storage_options

    try:
        return connection_storage_options(Connection.get_connection_from_secrets(str(conn_id)))
    except Exception as exc:  # noqa: BLE001 - say which connection, never its content
        raise RecordError(
            f"the connection {conn_id!r} that reads this job's files is not available to the API server "
            f"({type(exc).__name__})"
        ) from None


def _lookup(session: Any, dag_id: str, run_id: str, task_id: str, map_index: str) -> dict[str, Any]:
    found = queries.task_instance_job(session, dag_id, run_id, task_id, parse_map_index(map_index))
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such task instance")
    return found


def _job_files(found: dict[str, Any]) -> JobFiles:
    """The job's files, or 404 when the task instance has no (valid) job record."""
    record = found.get("job")
    if not isinstance(record, dict):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This task instance has no parallel run job")
    try:
        files = JobFiles.from_record(record, _storage_options(record))
        files.verify()
    except RecordError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except NotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "The job has written no logs (yet)") from None
    return files


def _not_found(what: str = "Not found") -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, what)


def _download_name(*parts: Any) -> str:
    return "__".join(_FILENAME_UNSAFE.sub("_", str(p)).strip("_") or "_" for p in parts)


def _attachment(name: str) -> str:
    """A Content-Disposition header: an ASCII name, and the real one (RFC 6266) for browsers that read it."""
    return f"attachment; filename=\"{_download_name(name)}\"; filename*=UTF-8''{quote(name, safe='')}"


def _web_url(value: Any) -> str | None:
    """An http(s) URL for a link, else None (an XCom could hold ``javascript:...``)."""
    text = str(value or "").strip()
    return text if text.lower().startswith(("http://", "https://")) else None


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def job_status(found: dict[str, Any], files: JobFiles | None, files_error: str | None) -> dict[str, Any]:
    """What the tab shows: the task instance, the job record, progress, summary and what can be downloaded."""
    record = found.get("job") if isinstance(found.get("job"), dict) else None
    progress = files.progress() if files is not None else None
    summary = (progress or {}).get("summary") or found.get("summary")
    ti_state = found.get("state")
    ended = ti_state in FINISHED_TI_STATES or (progress or {}).get("state") in ("succeeded", "failed")
    available: dict[str, Any] = {"report": False, "output": None, "logs": False}
    if files is not None:
        try:
            files.log_path(REPORT_FILE)
            available["report"] = True
        except NotFound:
            pass
        with contextlib.suppress(NotFound):
            available["output"] = {
                "name": files.append_row_file.rsplit("/", 1)[1] if files.append_row_file else None,
                "size": files.size(files.output_path()),
            }
        available["logs"] = files.exists()
    recent = list((progress or {}).get("recent_errors") or [])
    recent.reverse()
    return _redacted(
        {
            "ti_state": ti_state,
            "operator": found.get("operator"),
            "try_number": found.get("try_number"),
            "start_date": found.get("start_date"),
            "end_date": found.get("end_date"),
            "dashboard_url": _web_url(found.get("dashboard_url")),
            "job": None
            if record is None
            else {
                "job_id": record.get("job_id"),
                "output": record.get("output"),
                "logs_dir": record.get("logs_dir"),
                "append_row_file": record.get("append_row_file"),
                "started": record.get("started"),
            },
            "files_error": files_error,
            "progress": None if progress is None else {k: v for k, v in progress.items() if k != "summary"},
            "recent_errors": recent,
            "summary": summary,
            "ended": bool(ended),
            "available": available,
        }
    )


# -- page rendering -------------------------------------------------------------------------------


@cache
def _asset(name: str) -> str:
    return resources.files("airflow_parallel_run.ui").joinpath(name).read_text(encoding="utf-8")


def _page(template: str, title: str, context: dict[str, Any]) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    data = json.dumps(context).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    html = (
        _asset(f"templates/{template}")
        .replace("{{TITLE}}", title.replace("&", "&amp;").replace("<", "&lt;"))
        .replace("{{NONCE}}", nonce)
        .replace("{{CSS}}", _asset("static/parallel_run.css"))
        .replace("{{JS}}", _asset("static/parallel_run.js"))
        .replace("{{CONTEXT}}", data)
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": _PAGE_CSP.format(nonce=nonce)})


def _stream(files: JobFiles, path: str) -> Any:
    with files.open(path) as handle:
        while block := handle.read(CHUNK):
            yield block


def create_app() -> FastAPI:
    app = FastAPI(
        title="Parallel run",
        description="The Parallel run tab of ParallelRunOperator task instances and the Parallel runs list.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    _task_routes(app)
    _file_routes(app)
    _download_routes(app)
    _runs_routes(app)
    return app


def _task_routes(app: FastAPI) -> None:
    """The Parallel run tab of a task instance: its page, its status and its failed attempts."""

    @app.get("/task", response_class=HTMLResponse, dependencies=[can_read_task])
    def task_page(
        session: SessionDep, dag_id: DagId, run_id: RunId, task_id: TaskId, map_index: MapIndex = "-1"
    ) -> HTMLResponse:
        found = _lookup(session, dag_id, run_id, task_id, map_index)
        context = {
            "view": "task",
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": parse_map_index(map_index),
            "operator": found.get("operator"),
            "has_job": isinstance(found.get("job"), dict),
        }
        return _page("task.html", f"Parallel run - {dag_id}.{task_id}", context)

    @app.get("/api/task", dependencies=[can_read_task])
    def task_status(
        session: SessionDep, dag_id: DagId, run_id: RunId, task_id: TaskId, map_index: MapIndex = "-1"
    ) -> JSONResponse:
        found = _lookup(session, dag_id, run_id, task_id, map_index)
        files, files_error = None, None
        if isinstance(found.get("job"), dict):
            try:
                files = JobFiles.from_record(found["job"], _storage_options(found["job"]))
                files.verify()
            except NotFound:  # no progress.json (yet): nothing of the folder is shown
                files = None
            except RecordError as exc:
                files_error = str(exc)
            except Exception as exc:  # noqa: BLE001 - an unreachable store: say so on the page
                files_error = f"cannot open the job's output folder: {type(exc).__name__}"
        return JSONResponse(job_status(found, files, files_error), headers={"Cache-Control": "no-store"})

    @app.get("/api/task/errors", dependencies=[can_read_task])
    def task_errors(
        session: SessionDep,
        dag_id: DagId,
        run_id: RunId,
        task_id: TaskId,
        map_index: MapIndex = "-1",
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
        final_only: bool = False,
    ) -> JSONResponse:
        files = _job_files(_lookup(session, dag_id, run_id, task_id, map_index))
        try:
            failed = _ATTEMPTS.failed_attempts(files)
        except NotFound:
            return JSONResponse({"total": 0, "offset": offset, "limit": limit, "errors": [], "missing": True})
        rows = [f for f in failed if f.final] if final_only else failed
        page = [_redacted(f.to_json()) for f in rows[offset : offset + limit]]
        return JSONResponse(
            {"total": len(rows), "offset": offset, "limit": limit, "errors": page, "missing": False},
            headers={"Cache-Control": "no-store"},
        )


def _file_routes(app: FastAPI) -> None:
    """A task instance's job files: a trace and the report (behind the permission to read the task's
    logs); the downloads in `_download_routes`."""

    @app.get("/task/trace", response_class=PlainTextResponse, dependencies=[can_read_logs])
    def task_trace(
        session: SessionDep,
        dag_id: DagId,
        run_id: RunId,
        task_id: TaskId,
        mini_batch: Annotated[int, Query(ge=0)],
        attempt: Annotated[int, Query(ge=0)],
        map_index: MapIndex = "-1",
    ) -> Response:
        files = _job_files(_lookup(session, dag_id, run_id, task_id, map_index))
        trace_files: list[str] = []
        with contextlib.suppress(NotFound):
            trace_files += [
                f.trace_file
                for f in _ATTEMPTS.failed_attempts(files)
                if (f.mini_batch, f.attempt) == (mini_batch, attempt) and f.trace_file
            ]
        for error in (files.progress() or {}).get("recent_errors") or []:
            if (error.get("mini_batch"), error.get("attempt")) == (mini_batch, attempt) and error.get(
                "trace_file"
            ):
                trace_files.append(str(error["trace_file"]))
        for trace_file in trace_files:
            try:
                text = trace_section(files, trace_file, mini_batch, attempt)
            except NotFound:
                continue
            if text:
                return _text_file(f"logs/{trace_file}\n\n{text}")
        raise _not_found(f"No trace was recorded for mini-batch {mini_batch} attempt {attempt}")

    @app.get("/task/report", response_class=HTMLResponse, dependencies=[can_read_logs])
    def task_report(
        session: SessionDep, dag_id: DagId, run_id: RunId, task_id: TaskId, map_index: MapIndex = "-1"
    ) -> Response:
        files = _job_files(_lookup(session, dag_id, run_id, task_id, map_index))
        try:
            path = files.log_path(REPORT_FILE)
        except NotFound:
            raise _not_found("The report is written when the job ends") from None
        return StreamingResponse(
            _stream(files, path),
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": _REPORT_CSP, "X-Content-Type-Options": "nosniff"},
        )


def _download_routes(app: FastAPI) -> None:
    """A log file, the logs folder as a zip and the output file, streamed."""

    @app.get("/task/logs/file", dependencies=[can_read_logs])
    def task_log_file(
        session: SessionDep,
        dag_id: DagId,
        run_id: RunId,
        task_id: TaskId,
        path: Annotated[str, Query(max_length=1024)],
        map_index: MapIndex = "-1",
    ) -> Response:
        files = _job_files(_lookup(session, dag_id, run_id, task_id, map_index))
        try:
            found = files.log_path(path)
        except NotFound:
            raise _not_found("No such file in the job's logs folder") from None
        size = files.size(found)
        return StreamingResponse(
            _stream(files, found),
            media_type="text/plain; charset=utf-8",
            headers={
                "Content-Security-Policy": _FILE_CSP,
                "X-Content-Type-Options": "nosniff",
                **({"Content-Length": str(size)} if size is not None else {}),
            },
        )

    @app.get("/task/logs.zip", dependencies=[can_read_logs])
    def task_logs_zip(
        session: SessionDep, dag_id: DagId, run_id: RunId, task_id: TaskId, map_index: MapIndex = "-1"
    ) -> Response:
        files = _job_files(_lookup(session, dag_id, run_id, task_id, map_index))
        if not files.exists():
            raise _not_found("The job's output folder does not exist (or this server cannot see it)")
        index = parse_map_index(map_index)
        name = _download_name(dag_id, run_id, task_id, *([index] if index >= 0 else []), "logs") + ".zip"
        return StreamingResponse(
            stream_zip(files.log_zip_entries()),
            media_type="application/zip",
            # already compressed: the API server's gzip middleware must leave it alone
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Content-Encoding": "identity"},
        )

    @app.get("/task/output", dependencies=[can_read_task])
    def task_output(
        session: SessionDep, dag_id: DagId, run_id: RunId, task_id: TaskId, map_index: MapIndex = "-1"
    ) -> Response:
        files = _job_files(_lookup(session, dag_id, run_id, task_id, map_index))
        try:
            path = files.output_path()
        except NotFound:
            raise _not_found("The job has no append_row output file (yet)") from None
        size = files.size(path)
        headers = {
            "Content-Disposition": _attachment(path.rsplit("/", 1)[-1]),
            "X-Content-Type-Options": "nosniff",
            "Content-Encoding": "identity",  # byte for byte with its length: no gzip on the way
        }
        if size is not None:
            headers["Content-Length"] = str(size)
        return StreamingResponse(_stream(files, path), media_type="application/octet-stream", headers=headers)


def _runs_routes(app: FastAPI) -> None:
    """The Parallel runs page: every job of the DAGs the user may read."""

    @app.get("/runs", response_class=HTMLResponse)
    def runs_page(readable: Readable) -> HTMLResponse:
        return _page("runs.html", "Parallel runs", {"view": "runs", "states": list(queries.STATES)})

    @app.get("/api/runs")
    def runs(
        session: SessionDep,
        readable: Readable,
        dag_id: Annotated[str | None, Query(max_length=250)] = None,
        state: Annotated[str | None, Query(max_length=32)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    ) -> JSONResponse:
        if dag_id and dag_id not in readable:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")
        if state and state not in queries.STATES:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, f"state must be one of {', '.join(queries.STATES)}"
            )
        jobs, total = queries.list_jobs(
            session, readable, dag_id=dag_id or None, state=state or None, offset=offset, limit=limit
        )
        for job in jobs:
            record = job.pop("record")
            if job["status"] is None and job["ti_state"] in LIVE_TI_STATES and record is not None:
                _live_counts(job, record)
        return JSONResponse(
            {
                "total": total,
                "offset": offset,
                "limit": limit,
                "jobs": jobs,
                "dag_ids": queries.job_dag_ids(session, readable),
            },
            headers={"Cache-Control": "no-store"},
        )


def _live_counts(job: dict[str, Any], record: dict[str, Any]) -> None:
    """A running job's counts from its progress.json (the list shows them before there is a summary)."""
    try:
        files = JobFiles.from_record(record, _storage_options(record))
        progress = files.progress()
    except Exception:  # noqa: BLE001 - an unreadable job shows without counts
        return
    if progress is None:
        return
    for name in queries.SUMMARY_FIELDS:
        if name in progress and name != "status":
            job[name] = progress[name]
    job["duration_s"] = progress.get("elapsed_s")
    job["done_mini_batches"] = progress.get("done_mini_batches")


def _text_file(text: str) -> Response:
    return PlainTextResponse(
        text, headers={"Content-Security-Policy": _FILE_CSP, "X-Content-Type-Options": "nosniff"}
    )

/* The Parallel run tab and the Parallel runs list: plain JS, no dependency, no network but this API.
   Every value from the server is put in the page with textContent (never as HTML). */
(function () {
  "use strict";
  var ctx = JSON.parse(document.getElementById("apr-context").textContent);
  var POLL_MS = 3000;
  var PAGE = 50;

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function num(v) { return v === null || v === undefined ? "-" : Number(v).toLocaleString("en-US"); }
  function duration(s) {
    if (s === null || s === undefined || isNaN(s)) return "-";
    s = Math.max(0, Math.round(Number(s)));
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h + ":" + String(m).padStart(2, "0") + ":" + String(r).padStart(2, "0");
  }
  function bytes(n) {
    if (n === null || n === undefined) return "";
    var units = ["B", "KB", "MB", "GB", "TB"], i = 0;
    n = Number(n);
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }
  function when(v) {
    if (v === null || v === undefined || v === "") return "-";
    var d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
    if (isNaN(d.getTime())) return String(v);
    return d.toISOString().replace("T", " ").slice(0, 19);
  }
  function query(extra) {
    var q = new URLSearchParams();
    ["dag_id", "run_id", "task_id", "map_index"].forEach(function (k) { if (ctx[k] !== undefined) q.set(k, ctx[k]); });
    Object.keys(extra || {}).forEach(function (k) { q.set(k, extra[k]); });
    return q.toString();
  }
  function getJSON(path) {
    return fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(function (r) {
      if (!r.ok) return r.json().catch(function () { return {}; }).then(function (b) {
        var e = new Error((b && b.detail) || ("HTTP " + r.status)); e.status = r.status; throw e;
      });
      return r.json();
    });
  }
  function message(text, isError) {
    var m = $("message");
    if (!text) { m.hidden = true; return; }
    m.hidden = false; m.textContent = text; m.className = "message" + (isError ? " error" : "");
  }
  function numbers(target, items) {
    var dl = $(target); dl.textContent = "";
    items.forEach(function (it) {
      dl.appendChild(el("div", { "data-key": it[2] || null, className: it[3] === "wide" ? "wide" : null },
        [el("dt", { text: it[0] }), el("dd", { text: it[1], className: it[3] ? "text" : null })]));
    });
  }
  function basename(p) { p = String(p || ""); var i = p.lastIndexOf("/"); return i >= 0 ? p.slice(i + 1) : p; }

  /* A trace link: a real link to the trace, expanded in place on click (the tab cannot open windows). */
  function traceCell(row, mb, attempt) {
    var href = "task/trace?" + query({ mini_batch: mb, attempt: attempt });
    var a = el("a", { href: href, text: "trace", className: "trace-link" });
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      var next = row.nextSibling;
      if (next && next.classList && next.classList.contains("trace")) { next.remove(); return; }
      var cell = el("td", { colspan: String(row.children.length) }, [el("pre", { text: "loading..." })]);
      var tr = el("tr", { className: "trace" }, [cell]);
      row.parentNode.insertBefore(tr, row.nextSibling);
      fetch(href, { credentials: "same-origin" }).then(function (r) { return r.text().then(function (t) { return [r.ok, t]; }); })
        .then(function (res) { cell.firstChild.textContent = res[0] ? res[1] : "No trace: " + res[1]; })
        .catch(function (e) { cell.firstChild.textContent = "Could not load the trace: " + e; });
    });
    return el("td", {}, [a]);
  }

  /* The UI's iframe is sandboxed without popups or top navigation; an anchor of the top document
     (same origin) may do both. Used for the dashboard (new tab) and the task-instance links. */
  function openTop(ev) {
    var link = ev.currentTarget;
    try {
      var doc = window.top.document;
      if (doc === document) return; // not embedded: the link works as it is
      var a = doc.createElement("a");
      a.href = link.href;
      if (link.target) { a.target = link.target; a.rel = "noopener noreferrer"; }
      doc.body.appendChild(a); a.click(); a.remove();
      ev.preventDefault();
    } catch (e) { /* another origin: follow the link here */ }
  }

  // -- the task-instance tab ---------------------------------------------------------------------
  var ended = false, errorsOffset = 0;

  function renderProgress(p) {
    $("progress-section").hidden = false;
    var total = p.total_mini_batches || 0, done = p.done_mini_batches || 0;
    var pct = total ? Math.floor((100 * done) / total) : 0;
    var bar = $("progress-bar");
    bar.setAttribute("aria-valuenow", String(pct));
    bar.dataset.done = String(done); bar.dataset.total = String(total); bar.dataset.failed = String(p.failed_mini_batches || 0);
    $("bar-ok").style.width = (total ? (100 * (p.succeeded_mini_batches || 0)) / total : 0) + "%";
    $("bar-failed").style.width = (total ? (100 * (p.failed_mini_batches || 0)) / total : 0) + "%";
    var eta = p.state === "running" ? (p.eta_s === null || p.eta_s === undefined ? "unknown" : duration(p.eta_s)) : "-";
    var of = p.listing ? num(p.listed_mini_batches) + " mini-batches listed so far (listing the inputs\u2026)" :
      num(total) + " mini-batches (" + pct + "%)";  // no total is claimed before the listing ended
    $("progress-text").textContent = "Processed " + num(done) + " of " + of + ": " +
      num(p.succeeded_mini_batches) + " succeeded, " + num(p.failed_mini_batches) + " failed, " + num(p.reused_mini_batches) +
      " reused \u00b7 " + Number(p.items_per_s || 0).toFixed(1) + " items/s \u00b7 ETA " + eta;
    numbers("progress-numbers", [
      ["Items succeeded", num(p.succeeded_items), "succeeded_items"], ["Items failed", num(p.failed_items), "failed_items"],
      ["Items total", num(p.total_items), "total_items"], ["Elapsed", duration(p.elapsed_s), "elapsed"],
      ["Updated (UTC)", when(p.updated), "updated", true]
    ]);
  }

  function renderRecent(errors) {
    var body = $("recent-table").tBodies[0]; body.textContent = "";
    $("recent-section").hidden = !errors.length || ended;
    errors.forEach(function (e) {
      var row = el("tr", {}, [el("td", { text: when(e.time) }), el("td", { className: "num", text: String(e.mini_batch) }),
        el("td", { className: "num", text: String(e.attempt) + (e.final ? "" : " (retried)") }), el("td", { text: e.status }),
        el("td", { className: "err", text: e.message })]);
      row.appendChild(e.trace_file ? traceCell(row, e.mini_batch, e.attempt) : el("td", { text: "-" }));
      body.appendChild(row);
    });
  }

  function renderSummary(s, st) {
    $("summary-section").hidden = false;
    var msg = $("summary-message");
    msg.textContent = s ? (s.message || "Job " + s.status + ".") : "The job ended without a summary (see the task log).";
    msg.className = "message" + (s && s.status === "succeeded" ? "" : " error");
    if (s) numbers("summary-numbers", [
      ["Status", s.status, "status"], ["Items succeeded", num(s.succeeded_items), "succeeded_items"],
      ["Items failed", num(s.failed_items), "failed_items"], ["Items total", num(s.total_items), "total_items"],
      ["Mini-batches succeeded", num(s.succeeded_mini_batches), "succeeded_mini_batches"],
      ["Mini-batches failed", num(s.failed_mini_batches), "failed_mini_batches"],
      ["Mini-batches reused", num(s.reused_mini_batches), "reused_mini_batches"],
      ["Mini-batches total", num(s.total_mini_batches), "total_mini_batches"], ["Duration", duration(s.duration_s), "duration"],
      ["Output", s.append_row_file || s.output || "-", "output", "wide"], ["Logs", s.logs_dir || "-", "logs", "wide"]
    ]);
    var list = $("downloads"); list.textContent = "";
    var av = st.available || {};
    if (av.output) list.appendChild(el("li", {}, [el("a", { id: "download-output", href: "task/output?" + query(), download: av.output.name || "output", text: "Output: " + (av.output.name || "") }), " " + bytes(av.output.size)]));
    if (av.logs) {
      list.appendChild(el("li", {}, [el("a", { id: "download-logs", href: "task/logs.zip?" + query(), download: "", text: "Logs folder (zip)" })]));
      ["job_result.txt", "user/error.txt", "sys/job_report/processed_mini-batches.csv"].forEach(function (name) {
        list.appendChild(el("li", {}, [el("a", { href: "task/logs/file?" + query({ path: name }), download: basename(name), text: "logs/" + name })]));
      });
    }
    if (!list.children.length) list.appendChild(el("li", { text: st.files_error || "No files can be read from here." }));
    if (av.report) {
      $("report-section").hidden = false;
      var src = "task/report?" + query();
      if ($("report").getAttribute("src") !== src) $("report").setAttribute("src", src);
      $("report-open").setAttribute("href", src);
    }
  }

  function loadErrors() {
    var finalOnly = $("final-only").checked;
    getJSON("api/task/errors?" + query({ offset: errorsOffset, limit: PAGE, final_only: finalOnly })).then(function (d) {
      $("errors-section").hidden = d.missing && !d.total;
      $("errors-count").textContent = "(" + num(d.total) + (finalOnly ? " mini-batches" : " failed attempts") + ")";
      var body = $("errors-table").tBodies[0]; body.textContent = "";
      d.errors.forEach(function (e) {
        var names = e.inputs.map(basename).join(", ") + (e.input_count > e.inputs.length ? " (+" + (e.input_count - e.inputs.length) + " more)" : "");
        var row = el("tr", { "data-mini-batch": String(e.mini_batch) }, [el("td", { className: "num", text: String(e.mini_batch) }),
          el("td", { className: "num", text: String(e.attempt) + (e.final ? "" : " (retried)") }), el("td", { text: e.status }),
          el("td", { title: e.inputs.join("\n"), text: num(e.items) + (e.items === 1 ? " item: " : " items: ") + names }), el("td", { className: "err", text: e.message })]);
        row.appendChild(e.trace_file ? traceCell(row, e.mini_batch, e.attempt) : el("td", { text: "-" }));
        body.appendChild(row);
      });
      if (!d.errors.length) body.appendChild(el("tr", {}, [el("td", { colspan: "6", text: "No failed attempts." })]));
      pager("errors-pager", d.offset, d.limit, d.total, function (o) { errorsOffset = o; loadErrors(); });
    }).catch(function (e) { message("Could not load the errors: " + e.message, true); });
  }

  function pager(id, offset, limit, total, go) {
    var p = $(id); p.textContent = "";
    if (total <= limit && offset === 0) return;
    var prev = el("button", { type: "button", text: "\u2190 previous" }), next = el("button", { type: "button", text: "next \u2192" });
    prev.disabled = offset <= 0; next.disabled = offset + limit >= total;
    prev.addEventListener("click", function () { go(Math.max(0, offset - limit)); });
    next.addEventListener("click", function () { go(offset + limit); });
    p.appendChild(prev);
    p.appendChild(el("span", { text: num(total ? offset + 1 : 0) + "\u2013" + num(Math.min(offset + limit, total)) + " of " + num(total) }));
    p.appendChild(next);
  }

  function renderTask(st) {
    var p = st.progress;
    var state = st.ended ? ((st.summary && st.summary.status) || (p && p.state !== "running" && p.state) || st.ti_state || "ended") : (p ? "running" : (st.ti_state || "starting"));
    $("state").textContent = state; $("state").dataset.state = state;
    $("job-id").textContent = st.job && st.job.job_id ? "job " + st.job.job_id : "";
    var links = $("links"); links.textContent = "";
    if (st.dashboard_url) {
      var dash = el("a", { id: "dashboard-link", href: st.dashboard_url, target: "_blank", rel: "noopener noreferrer", text: "Dask dashboard" });
      dash.addEventListener("click", openTop);
      links.appendChild(dash);
    }
    if (!st.job) {
      var op = ctx.operator || "unknown";
      var ours = op === "ParallelRunOperator" || ctx.has_job;
      message(!ours ? "This task (" + op + ") runs no parallel run job: the Parallel run tab shows ParallelRunOperator tasks." :
        st.ended ? "The task ended (" + st.ti_state + ") before its job started: see the task's log." :
        "The job has not started yet (task " + (st.ti_state || "not started") + ").", st.ended && ours);
      return !st.ended && (op === "ParallelRunOperator");
    }
    message(st.files_error ? "The job's files cannot be read from the API server: " + st.files_error : (!p && !st.ended ? "The job is planning its mini-batches..." : ""), !!st.files_error);
    if (p) renderProgress(p);
    ended = st.ended;
    renderRecent(st.recent_errors || []);
    if (st.ended) {
      renderSummary(st.summary, st);
      $("errors-section").hidden = false;
      loadErrors();
    }
    return !st.ended;
  }

  function pollTask() {
    getJSON("api/task?" + query()).then(function (st) {
      if (renderTask(st)) setTimeout(pollTask, POLL_MS);
    }).catch(function (e) {
      message("Could not load the job: " + e.message, true);
      if (e.status !== 401 && e.status !== 403 && e.status !== 404) setTimeout(pollTask, POLL_MS * 2);
    });
  }

  // -- the list of jobs --------------------------------------------------------------------------
  var runsOffset = 0, runsTimer = null;

  function tabPath(j) {
    // Airflow's own task-instance page, Parallel run tab (the top window navigates; see openTop)
    var base = location.pathname.replace(/\/parallel-run\/.*$/, "");
    var path = base + "/dags/" + encodeURIComponent(j.dag_id) + "/runs/" + encodeURIComponent(j.run_id) + "/tasks/" + encodeURIComponent(j.task_id);
    if (j.map_index >= 0) path += "/mapped/" + j.map_index;
    return path + "/plugin/parallel-run";
  }

  function loadRuns() {
    if (runsTimer) { clearTimeout(runsTimer); runsTimer = null; }
    var q = new URLSearchParams({ offset: runsOffset, limit: PAGE });
    var dag = $("filter-dag").value, state = $("filter-state").value;
    if (dag) q.set("dag_id", dag);
    if (state) q.set("state", state);
    getJSON("api/runs?" + q.toString()).then(function (d) {
      message("");
      var sel = $("filter-dag"), keep = sel.value;
      sel.textContent = ""; sel.appendChild(el("option", { value: "", text: "all" }));
      d.dag_ids.forEach(function (id) { sel.appendChild(el("option", { value: id, text: id })); });
      sel.value = keep;
      $("runs-count").textContent = num(d.total) + " jobs";
      var body = $("runs-table").tBodies[0]; body.textContent = "";
      var running = false;
      d.jobs.forEach(function (j) {
        var status = j.status || j.ti_state || "-";
        running = running || j.ti_state === "running" || j.ti_state === "queued" || j.ti_state === "deferred";
        var view = "task?" + new URLSearchParams({ dag_id: j.dag_id, run_id: j.run_id, task_id: j.task_id, map_index: j.map_index }).toString();
        var tab = el("a", { href: tabPath(j), text: j.task_id + (j.map_index >= 0 ? " [" + j.map_index + "]" : ""), className: "tab-link" });
        tab.addEventListener("click", openTop);
        var mb = j.total_mini_batches === null || j.total_mini_batches === undefined ? "-" : num(j.succeeded_mini_batches) + " / " + num(j.total_mini_batches);
        var dur = j.duration_s !== null && j.duration_s !== undefined ? j.duration_s :
          (j.start_date && j.end_date ? (new Date(j.end_date) - new Date(j.start_date)) / 1000 : null);
        body.appendChild(el("tr", { "data-run-id": j.run_id }, [el("td", { text: j.dag_id }),
          el("td", {}, [el("a", { href: view, text: j.run_id, className: "view-link" })]), el("td", {}, [tab]),
          el("td", {}, [el("span", { className: "badge", "data-state": status, text: status })]),
          el("td", { className: "num", text: num(j.succeeded_items) }), el("td", { className: "num", text: num(j.failed_items) }),
          el("td", { className: "num", text: mb }), el("td", { className: "num", text: num(j.reused_mini_batches) }),
          el("td", { className: "num", text: duration(dur) }), el("td", { text: when(j.started) })]));
      });
      if (!d.jobs.length) body.appendChild(el("tr", {}, [el("td", { colspan: "10", text: "No parallel run jobs." })]));
      pager("runs-pager", d.offset, d.limit, d.total, function (o) { runsOffset = o; loadRuns(); });
      if (running) runsTimer = setTimeout(loadRuns, 10000);
    }).catch(function (e) { message("Could not load the jobs: " + e.message, true); });
  }

  if (ctx.view === "task") {
    $("final-only").addEventListener("change", function () { errorsOffset = 0; loadErrors(); });
    pollTask();
  } else {
    var st = $("filter-state");
    (ctx.states || []).forEach(function (s) { st.appendChild(el("option", { value: s, text: s })); });
    var params = new URLSearchParams(location.search);
    ["dag_id", "state"].forEach(function (k) {
      var v = params.get(k), node = $(k === "dag_id" ? "filter-dag" : "filter-state");
      if (v) { if (k === "dag_id") node.appendChild(el("option", { value: v, text: v })); node.value = v; }
    });
    ["filter-dag", "filter-state"].forEach(function (id) { $(id).addEventListener("change", function () { runsOffset = 0; loadRuns(); }); });
    loadRuns();
  }
})();

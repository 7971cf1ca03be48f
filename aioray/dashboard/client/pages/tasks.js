// Tasks: the GCS's task table, filtered at the source by state and job, by function
// name here (a substring), paged; a failed task's error in a row you can open.
import { api, esc, state, table, ago } from "/static/app.js";

const PAGE = 50;
const STATES = ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER",
  "RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT", "FINISHED", "FAILED"];
let filter = { state: "", job: "", fn: "" };
let page = 0;
const opened = new Set(); // tasks whose error is open survive the next poll's render

function query() {
  const f = [["state", filter.state], ["job_id", filter.job]].filter(([, v]) => v);
  return f.map(([k, v]) => `&filter_keys=${k}&filter_predicates=%3D&filter_values=${encodeURIComponent(v)}`).join("");
}

const error = (t) => t.error_type
  ? `<details class="err-detail" data-id="${esc(t.task_id)}" ${opened.has(t.task_id) ? "open" : ""}><summary>${esc(t.error_type)}</summary><pre>${esc(t.error_message || "")}</pre></details>` : "";

export async function render(main) {
  const body = await api(`/api/v0/tasks?limit=10000&detail=true${query()}`);
  const answer = body.data.result;
  const fn = filter.fn.toLowerCase();
  const tasks = answer.result.filter((t) => !fn || (t.func_or_class_name || "").toLowerCase().includes(fn))
    .sort((a, b) => (b.creation_time_ms || 0) - (a.creation_time_ms || 0));
  const pages = Math.max(1, Math.ceil(tasks.length / PAGE));
  page = Math.min(page, pages - 1);
  const shown = tasks.slice(page * PAGE, (page + 1) * PAGE);
  const focused = document.activeElement && document.activeElement.id;
  main.innerHTML = `<h2>Tasks (${tasks.length} of ${answer.total})</h2>
    <div class="toolbar">State <select id="f-state"><option value="">all</option>${STATES.map((s) =>
      `<option ${s === filter.state ? "selected" : ""}>${esc(s)}</option>`).join("")}</select>
      Function <input id="f-fn" value="${esc(filter.fn)}" placeholder="function name">
      Job <input id="f-job" value="${esc(filter.job)}" placeholder="job id" size="10">
      <span class="pager"><button id="prev" ${page ? "" : "disabled"}>‹ Prev</button>
      <span id="page">Page ${page + 1} of ${pages}</span>
      <button id="next" ${page + 1 < pages ? "" : "disabled"}>Next ›</button></span></div>
    ${answer.partial_failure_warning ? `<p class="FAILED">${esc(answer.partial_failure_warning)}</p>` : ""}
    ${table([
      ["Task id", (t) => `<span class="mono">${esc(t.task_id)}</span>`],
      ["Function", (t) => `<span class="nowrap">${esc(t.func_or_class_name)}</span>`],
      ["State", (t) => `<span class="task-state">${state(t.state)}</span>`],
      ["Type", (t) => `<span class="nowrap">${esc(t.type)}</span>`],
      ["Job", (t) => `<span class="mono nowrap">${esc(t.job_id)}</span>`],
      ["PID", (t) => `<span class="nowrap">${esc(t.worker_pid)}</span>`],
      ["Node", (t) => `<span class="mono nowrap">${esc((t.node_id || "").slice(0, 8))}</span>`],
      ["Created", (t) => `<span class="nowrap">${ago(t.creation_time_ms)}</span>`],
      ["Error", error],
    ], shown)}`;
  const again = () => { page = 0; render(main); };
  main.querySelector("#f-state").onchange = (e) => { filter.state = e.target.value; again(); };
  for (const [id, key] of [["f-fn", "fn"], ["f-job", "job"]]) {
    const input = main.querySelector(`#${id}`);
    input.oninput = (e) => { filter[key] = e.target.value.trim(); }; // kept across polls
    input.onchange = again;
    if (focused === id) { input.focus(); input.setSelectionRange(input.value.length, input.value.length); }
  }
  main.querySelectorAll("details.err-detail").forEach((d) => {
    d.ontoggle = () => (d.open ? opened.add(d.dataset.id) : opened.delete(d.dataset.id));
  });
  main.querySelector("#prev").onclick = () => { page -= 1; render(main); };
  main.querySelector("#next").onclick = () => { page += 1; render(main); };
}

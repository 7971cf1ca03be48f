// Jobs: the list, and a job's detail with its live log (a websocket) and Stop.
import { api, esc, state, table, ago } from "/static/app.js";

let socket = null;

export async function render(main, [id]) {
  if (id) return detail(main, decodeURIComponent(id));
  if (socket) { socket.close(); socket = null; }
  const jobs = await api("/api/jobs/");
  main.innerHTML = `<h2>Jobs (${jobs.length})</h2>${table([
    ["Job", (j) => j.submission_id  // a submitted job has a page; a driver job its id
      ? `<a href="#/jobs/${esc(j.submission_id)}">${esc(j.submission_id)}</a>`
      : `<span class="mono">${esc(j.job_id)}</span>`],
    ["Type", (j) => esc(j.type)],
    ["Status", (j) => state(j.status)],
    ["Entrypoint", (j) => `<span class="mono">${esc(j.entrypoint)}</span>`],
    ["Started", (j) => ago(j.start_time)],
    ["Ended", (j) => ago(j.end_time)],
    ["Message", (j) => esc(j.message)],
  ], jobs.slice().reverse())}`;
}

async function detail(main, id) {
  const job = await api(`/api/jobs/${encodeURIComponent(id)}`);
  if (!main.querySelector("#job-log")) {
    main.innerHTML = `<h2>Job <span class="mono">${esc(id)}</span></h2><div id="job-head"></div>
      <h2>Log</h2><pre class="log" id="job-log"></pre>`;
    const log = main.querySelector("#job-log");
    socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/jobs/${encodeURIComponent(id)}/logs/tail`);
    socket.onmessage = (e) => { log.textContent += e.data; log.scrollTop = log.scrollHeight; };
  }
  main.querySelector("#job-head").innerHTML = `${table([
    ["Status", (j) => `<span id="job-status">${state(j.status)}</span>`],
    ["Entrypoint", (j) => `<span class="mono">${esc(j.entrypoint)}</span>`],
    ["Runtime env", (j) => `<span class="mono">${esc(JSON.stringify(j.runtime_env || {}))}</span>`],
    ["Started", (j) => ago(j.start_time)],
    ["Ended", (j) => ago(j.end_time)],
    ["Message", (j) => esc(j.message)],
  ], [job])}${["PENDING", "RUNNING"].includes(job.status) ? '<button id="job-stop">Stop</button>' : ""}`;
  const stop = main.querySelector("#job-stop");
  if (stop) stop.onclick = async () => { stop.disabled = true; await api(`/api/jobs/${encodeURIComponent(id)}/stop`, { method: "POST" }); };
}

// Overview: nodes, resource use, tasks and actors by state, recent jobs (polled).
import { api, listing, esc, state, table, ago } from "/static/app.js";

function use(label, used, total, fmt = (x) => x) {
  const pct = total ? Math.round((100 * used) / total) : 0;
  return `<div class="card"><div>${esc(label)}</div><div class="v">${esc(fmt(used))} / ${esc(fmt(total))}</div>
    <div class="bar"><div style="width:${pct}%"></div></div></div>`;
}
const gib = (b) => `${(b / 2 ** 30).toFixed(1)} GiB`;

export async function render(main) {
  const [nodes, actors, jobs, tasks] = await Promise.all([listing("nodes", "&detail=true"),
    listing("actors"), listing("jobs", "&detail=true"), api("/api/v0/tasks/summarize")]);
  const alive = nodes.filter((n) => n.state === "ALIVE");
  const sum = (key, field) => alive.reduce((s, n) => s + (n[field][key] || 0), 0);
  const used = (k) => sum(k, "resources_total") - sum(k, "resources_available");
  const byState = {};
  actors.forEach((a) => { byState[a.state] = (byState[a.state] || 0) + 1; });
  const taskStates = {};
  const perFunction = tasks.data.result.result.node_id_to_summary.cluster.summary;
  Object.values(perFunction).forEach((f) => Object.entries(f.state_counts).forEach(([s, n]) => {
    taskStates[s] = (taskStates[s] || 0) + n;
  }));
  const cards = (counts, prefix) => Object.entries(counts).map(([s, n]) =>
    `<a class="card" href="#/${prefix}" data-state="${esc(s)}"><div>${state(s)}</div><div class="v">${n}</div></a>`).join("") || "<i>none</i>";
  main.innerHTML = `<h2>Cluster</h2><div class="cards">
      <div class="card"><div>Nodes alive</div><div class="v" id="nodes-alive">${alive.length}</div></div>
      ${use("CPU", used("CPU"), sum("CPU", "resources_total"))}
      ${use("GPU", used("GPU"), sum("GPU", "resources_total"))}
      ${use("Memory", used("memory"), sum("memory", "resources_total"), gib)}
      ${use("Object store", used("object_store_memory"), sum("object_store_memory", "resources_total"), gib)}
    </div>
    <h2>Tasks by state</h2><div class="cards" id="tasks-by-state">${cards(taskStates, "tasks")}</div>
    <h2>Actors by state</h2><div class="cards">${cards(byState, "actors")}</div>
    <h2>Recent jobs</h2>${table([
      ["Job", (j) => j.submission_id  // a submitted job has a page; a driver job its id
        ? `<a href="#/jobs/${esc(j.submission_id)}">${esc(j.submission_id)}</a>`
        : `<span class="mono">${esc(j.job_id)}</span>`],
      ["Type", (j) => esc(j.type)],
      ["Status", (j) => state(j.status)],
      ["Entrypoint", (j) => `<span class="mono">${esc(j.entrypoint)}</span>`],
      ["Started", (j) => ago(j.start_time)],
    ], [...jobs].sort((a, b) => (a.start_time || 0) - (b.start_time || 0)).slice(-10).reverse())}`;
}

// Overview: nodes, resource use, actors by state, recent jobs (polled).
import { listing, esc, state, table, ago } from "/static/app.js";

function use(label, used, total, fmt = (x) => x) {
  const pct = total ? Math.round((100 * used) / total) : 0;
  return `<div class="card"><div>${esc(label)}</div><div class="v">${esc(fmt(used))} / ${esc(fmt(total))}</div>
    <div class="bar"><div style="width:${pct}%"></div></div></div>`;
}
const gib = (b) => `${(b / 2 ** 30).toFixed(1)} GiB`;

export async function render(main) {
  const [nodes, actors, jobs] = await Promise.all([listing("nodes", "&detail=true"), listing("actors"), listing("jobs")]);
  const alive = nodes.filter((n) => n.state === "ALIVE");
  const sum = (key, field) => alive.reduce((s, n) => s + (n[field][key] || 0), 0);
  const used = (k) => sum(k, "resources_total") - sum(k, "resources_available");
  const byState = {};
  actors.forEach((a) => { byState[a.state] = (byState[a.state] || 0) + 1; });
  main.innerHTML = `<h2>Cluster</h2><div class="cards">
      <div class="card"><div>Nodes alive</div><div class="v" id="nodes-alive">${alive.length}</div></div>
      ${use("CPU", used("CPU"), sum("CPU", "resources_total"))}
      ${use("GPU", used("GPU"), sum("GPU", "resources_total"))}
      ${use("Memory", used("memory"), sum("memory", "resources_total"), gib)}
      ${use("Object store", used("object_store_memory"), sum("object_store_memory", "resources_total"), gib)}
    </div>
    <h2>Actors by state</h2><div class="cards">${Object.entries(byState).map(([s, n]) =>
      `<div class="card"><div>${state(s)}</div><div class="v">${n}</div></div>`).join("") || "<i>none</i>"}</div>
    <h2>Recent jobs</h2>${table([
      ["Submission id", (j) => `<a href="#/jobs/${esc(j.submission_id)}">${esc(j.submission_id)}</a>`],
      ["Status", (j) => state(j.status)],
      ["Entrypoint", (j) => `<span class="mono">${esc(j.entrypoint)}</span>`],
      ["Started", (j) => ago(j.start_time)],
    ], jobs.slice(-10).reverse())}`;
}

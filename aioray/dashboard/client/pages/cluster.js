// Cluster: every node, its resources (total and available); every live worker process.
import { listing, esc, state, table, ago } from "/static/app.js";

const res = (r) => Object.entries(r).filter(([k]) => !k.startsWith("node:"))
  .map(([k, v]) => `${esc(k)}: ${k.includes("memory") ? (v / 2 ** 30).toFixed(1) + " GiB" : esc(v)}`).join("<br>");

export async function render(main) {
  const [nodes, workers] = await Promise.all([listing("nodes", "&detail=true"), listing("workers")]);
  main.innerHTML = `<h2>Nodes (${nodes.length})</h2>${table([
    ["Node id", (n) => `<span class="mono node-id">${esc(n.node_id)}</span>${n.is_head_node ? " (head)" : ""}`],
    ["IP", (n) => esc(n.node_ip)],
    ["State", (n) => state(n.state)],
    ["Total", (n) => res(n.resources_total)],
    ["Available", (n) => res(n.resources_available)],
    ["Started", (n) => ago(n.start_time_ms)],
  ], nodes)}
  <h2>Workers (${workers.length})</h2>${table([
    ["Worker id", (w) => `<span class="mono worker-id">${esc(w.worker_id)}</span>`],
    ["Type", (w) => esc(w.worker_type)],
    ["PID", (w) => esc(w.pid)],
    ["Node", (w) => `<span class="mono">${esc((w.node_id || "").slice(0, 8))}</span>`],
    ["IP", (w) => esc(w.ip)],
  ], workers)}`;
}

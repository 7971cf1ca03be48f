// Cluster: every node, its resources (total and available), labels.
import { listing, esc, state, table, ago } from "/static/app.js";

const res = (r) => Object.entries(r).filter(([k]) => !k.startsWith("node:"))
  .map(([k, v]) => `${esc(k)}: ${k.includes("memory") ? (v / 2 ** 30).toFixed(1) + " GiB" : esc(v)}`).join("<br>");

export async function render(main) {
  const nodes = await listing("nodes", "&detail=true");
  main.innerHTML = `<h2>Nodes (${nodes.length})</h2>${table([
    ["Node id", (n) => `<span class="mono node-id">${esc(n.node_id)}</span>${n.is_head_node ? " (head)" : ""}`],
    ["IP", (n) => esc(n.node_ip)],
    ["State", (n) => state(n.state)],
    ["Total", (n) => res(n.resources_total)],
    ["Available", (n) => res(n.resources_available)],
    ["Started", (n) => ago(n.start_time_ms)],
  ], nodes)}`;
}

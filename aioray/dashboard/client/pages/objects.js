// Objects: every object a live process references (each raylet's memory report),
// filtered at the source by reference type, with the cluster-wide summary on top.
import { api, listing, esc, state, table } from "/static/app.js";

const TYPES = ["LOCAL_REFERENCE", "BORROWED", "USED_BY_PENDING_TASK", "CAPTURED_IN_OBJECT",
  "PINNED_IN_MEMORY"];
let filter = { type: "" };

const size = (b) => (b == null ? "" : b < 2 ** 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);

export async function render(main) {
  const where = filter.type
    ? `&filter_keys=reference_type&filter_predicates=%3D&filter_values=${encodeURIComponent(filter.type)}` : "";
  const [objects, summary] = await Promise.all([listing("objects", where), api("/api/v0/objects/summarize")]);
  const all = summary.data.result.result.node_id_to_summary.cluster;
  main.innerHTML = `<h2>Objects (${objects.length})</h2><div class="cards">
      <div class="card"><div>Objects referenced</div><div class="v" id="objects-total">${all.total_objects}</div></div>
      <div class="card"><div>Their size</div><div class="v">${all.total_size_mb.toFixed(1)} MiB</div></div>
    </div>
    <div class="toolbar">Reference type <select id="f-type"><option value="">all</option>${TYPES.map((t) =>
      `<option ${t === filter.type ? "selected" : ""}>${esc(t)}</option>`).join("")}</select></div>
    ${table([
      ["Object id", (o) => `<span class="mono object-id">${esc(o.object_id)}</span>`],
      ["Size", (o) => `<span class="nowrap">${size(o.object_size)}</span>`],
      ["Status", (o) => state(o.task_status)],
      ["Reference", (o) => `<span class="nowrap">${esc(o.reference_type)}</span>`],
      ["Process", (o) => `<span class="nowrap">${esc(o.type)} ${esc(o.pid)}</span>`],
      ["IP", (o) => esc(o.ip)],
    ], objects)}`;
  main.querySelector("#f-type").onchange = (e) => { filter.type = e.target.value; render(main); };
}

// Actors: filter by state or class, kill one (POST, checked for Origin by the server).
import { api, listing, esc, state, table } from "/static/app.js";

let filter = { state: "", cls: "" };

export async function render(main) {
  const actors = await listing("actors", "&detail=true");
  const shown = actors.filter((a) => (!filter.state || a.state === filter.state)
    && (!filter.cls || a.class_name.toLowerCase().includes(filter.cls.toLowerCase())));
  const states = [...new Set(actors.map((a) => a.state))].sort();
  const focused = document.activeElement && document.activeElement.id;
  main.innerHTML = `<h2>Actors (${shown.length} of ${actors.length})</h2>
    <div class="toolbar">State <select id="f-state"><option value="">all</option>${states.map((s) =>
      `<option ${s === filter.state ? "selected" : ""}>${esc(s)}</option>`).join("")}</select>
      Class <input id="f-cls" value="${esc(filter.cls)}" placeholder="class name"></div>
    ${table([
      ["Actor id", (a) => `<span class="mono">${esc(a.actor_id)}</span>`],
      ["Class", (a) => esc(a.class_name)],
      ["Name", (a) => esc(a.name)],
      ["State", (a) => state(a.state)],
      ["PID", (a) => esc(a.pid)],
      ["Node", (a) => `<span class="mono">${esc((a.node_id || "").slice(0, 8))}</span>`],
      ["", (a) => a.state === "DEAD" ? esc(a.death_cause?.error_message || "") :
        `<button class="kill" data-id="${esc(a.actor_id)}">Kill</button>`],
    ], shown)}`;
  main.querySelector("#f-state").onchange = (e) => { filter.state = e.target.value; render(main); };
  const cls = main.querySelector("#f-cls");
  cls.oninput = (e) => { filter.cls = e.target.value; render(main); };
  if (focused === "f-cls") { cls.focus(); cls.setSelectionRange(cls.value.length, cls.value.length); }
  main.querySelectorAll("button.kill").forEach((b) => {
    b.onclick = async () => {
      b.disabled = true;
      await api(`/api/actors/${b.dataset.id}/kill?force_kill=true`, { method: "POST" });
      await render(main);
    };
  });
}

// Placement groups: state, strategy, bundles.
import { listing, esc, state, table } from "/static/app.js";

const bundle = (b) => Object.entries(b.unit_resources).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join(", ");

export async function render(main) {
  const groups = await listing("placement_groups", "&detail=true");
  main.innerHTML = `<h2>Placement groups (${groups.length})</h2>${table([
    ["Id", (g) => `<span class="mono">${esc(g.placement_group_id)}</span>`],
    ["Name", (g) => esc(g.name)],
    ["State", (g) => state(g.state)],
    ["Strategy", (g) => esc(g.stats?.strategy)],
    ["Bundles", (g) => g.bundles.map((b) => `{${bundle(b)}}`).join("<br>")],
    ["Detached", (g) => (g.is_detached ? "yes" : "")],
  ], groups)}`;
}

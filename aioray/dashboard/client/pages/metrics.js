// Metrics: the dashboard's own time series (last hour, sampled every 10 s), as SVG lines.
import { api, esc } from "/static/app.js";

const W = 560, H = 140;
const gib = (b) => b / 2 ** 30;

function chart(title, samples, lines) {
  const max = Math.max(1e-9, ...samples.flatMap((s) => lines.map((l) => l.f(s))));
  const t0 = samples.length ? samples[0].t : 0;
  const span = Math.max(1, samples.length ? samples[samples.length - 1].t - t0 : 1);
  const x = (s) => (samples.length > 1 ? ((s.t - t0) / span) * (W - 8) + 4 : W / 2);
  const y = (v) => H - 4 - (v / max) * (H - 14);
  const path = (f) => samples.map((s) => `${x(s)},${y(f(s))}`).join(" ");
  const last = samples[samples.length - 1];
  const dot = (l) => (last ? `<circle cx="${x(last)}" cy="${y(l.f(last))}" r="3" fill="${l.color}"/>` : "");
  return `<div class="card"><div>${esc(title)} <small>(max ${esc(max.toFixed(2))})</small></div>
    <svg width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" style="background:#fafbfc">
    ${lines.map((l) => `<polyline fill="none" stroke="${l.color}" stroke-width="2" points="${path(l.f)}"/>${dot(l)}`).join("")}
    </svg><div>${lines.map((l) => `<span style="color:${l.color}">■ ${esc(l.name)}</span>`).join(" ")}</div></div>`;
}

export async function render(main) {
  const samples = (await api("/api/dashboard/time_series")).data;
  main.innerHTML = `<h2>Metrics (${samples.length} samples, last hour)</h2>
    <p>Sampled by the dashboard every 10 s from the first visit of this page; Prometheus can scrape each node's /metrics.</p><div class="cards">
    ${chart("CPU", samples, [{ name: "used", color: "#3e8ede", f: (s) => s.cpu_used }, { name: "total", color: "#9aa5b1", f: (s) => s.cpu_total }])}
    ${chart("Object store (GiB)", samples, [{ name: "used", color: "#3e8ede", f: (s) => gib(s.object_store_used) }, { name: "total", color: "#9aa5b1", f: (s) => gib(s.object_store_total) }])}
    ${chart("Memory reserved (GiB)", samples, [{ name: "used", color: "#c05621", f: (s) => gib(s.memory_used) }])}
    ${chart("Actors alive", samples, [{ name: "alive", color: "#1f7a3a", f: (s) => s.actors_alive }])}
  </div>`;
}

// The shell: a hash router, the API helper and the polling loop. One module per page.
const pages = {
  overview: () => import("/static/pages/overview.js"),
  jobs: () => import("/static/pages/jobs.js"),
  cluster: () => import("/static/pages/cluster.js"),
  tasks: () => import("/static/pages/tasks.js"),
  actors: () => import("/static/pages/actors.js"),
  objects: () => import("/static/pages/objects.js"),
  placement_groups: () => import("/static/pages/placement_groups.js"),
  logs: () => import("/static/pages/logs.js"),
  metrics: () => import("/static/pages/metrics.js"),
};
const POLL_MS = 2000;
let timer = null;

export async function api(path, options = {}) {
  const r = await fetch(path, options);
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  const text = await r.text();
  if (!r.ok) throw new Error(`${r.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

export async function listing(name, params = "") {
  const body = await api(`/api/v0/${name}?limit=10000${params}`);
  return body.data.result.result;
}

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function state(s) { return `<span class="state ${esc(s)}">${esc(s)}</span>`; }

export function table(columns, rows) {
  const head = columns.map((c) => `<th>${esc(c[0])}</th>`).join("");
  const body = rows.map((r) => `<tr>${columns.map((c) => `<td>${c[1](r)}</td>`).join("")}</tr>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
}

export function ago(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }

async function route() {
  clearTimeout(timer);
  const hash0 = location.hash;
  const [name, ...rest] = (location.hash.slice(2) || "overview").split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.hash === `#/${name}`));
  const load = pages[name] || pages.overview;
  const page = await load();
  if (location.hash !== hash0) return;  // another route began while this page loaded
  // Each route draws into an element of its own: a render still awaiting its data
  // when the route changes finishes into a detached element, never over the new page.
  const main = document.createElement("div");
  document.getElementById("main").replaceChildren(main);
  const tick = async () => {
    if (location.hash !== hash0) return;
    try { await page.render(main, rest); } catch (e) { main.insertAdjacentHTML("afterbegin", `<p class="FAILED">${esc(e.message)}</p>`); }
    if (location.hash === hash0 && !page.static) timer = setTimeout(tick, POLL_MS);
  };
  await tick();
}

window.addEventListener("hashchange", route);
route();

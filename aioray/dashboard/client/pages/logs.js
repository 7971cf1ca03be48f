// Logs: the head's session log files; one file's last lines, refreshed while open.
import { api, esc } from "/static/app.js";

export async function render(main, [file]) {
  if (file) {
    const name = decodeURIComponent(file);
    const r = await fetch(`/api/v0/logs/file?filename=${encodeURIComponent(name)}&lines=500`);
    const text = r.ok ? await r.text() : `(${r.status}) ${await r.text()}`;
    const pre = main.querySelector("#log-text");
    if (pre) {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
      return;
    }
    main.innerHTML = `<h2><a href="#/logs">Logs</a> / <span class="mono">${esc(name)}</span></h2>
      <pre class="log" id="log-text">${esc(text)}</pre>`;
    return;
  }
  const groups = (await api("/api/v0/logs")).data.result;
  main.innerHTML = `<h2>Log files of the head</h2>${Object.entries(groups).map(([kind, names]) =>
    `<h3>${esc(kind)}</h3><ul>${names.map((n) =>
      `<li><a class="mono" href="#/logs/${encodeURIComponent(n)}">${esc(n)}</a></li>`).join("")}</ul>`).join("")}`;
}

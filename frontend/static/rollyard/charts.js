/* What every page with charts shares: fetching JSON, the plotly layout, empty states and
 * the CSV / JSON export of any chart (its drawn traces) or table (its rows).
 * Plain JS, no build step; exposes window.Rollyard.
 */
(function () {
  "use strict";

  const PLOT_CONFIG = { responsive: true, displaylogo: false };

  function urlWith(base, params) {
    const url = new URL(base, window.location.href);
    for (const [key, value] of Object.entries(params)) {
      if (value === undefined || value === null) continue;
      for (const item of [].concat(value)) url.searchParams.append(key, item);
    }
    return url.toString();
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url} answered ${response.status}`);
    return response.json();
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }

  function baseLayout(xTitle, yTitle, extra) {
    return Object.assign(
      {
        margin: { l: 60, r: 16, t: 8, b: 44 },
        xaxis: { title: { text: xTitle }, automargin: true },
        // 5e-8 rather than plotly's SI "50n", which reads as fifty of the unit (nats, tokens).
        yaxis: { title: { text: yTitle }, automargin: true, exponentformat: "e" },
        legend: { orientation: "h", y: -0.25 },
        uirevision: "keep", // keep the user's zoom across redraws
      },
      extra || {},
    );
  }

  // The chart's element says how many points it draws (browser tests) and hides its
  // empty state once it draws any.
  function setPoints(el, n) {
    el.dataset.points = String(n);
    const empty = document.getElementById(`${el.id}-empty`);
    if (empty) empty.hidden = n > 0;
  }

  // ------------------------------------------------------------ export
  function download(name, type, text) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], { type }));
    link.download = name;
    document.body.appendChild(link);
    link.click();
    window.setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  }

  function csvCell(value) {
    if (value === null || value === undefined) return "";
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    return /[",\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function toCSV(header, rows) {
    return [header, ...rows].map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
  }

  // One row per drawn point: trace name, x, y (and z for a heatmap, base for a bar).
  function chartRows(el) {
    const rows = [];
    for (const trace of el.data || []) {
      if (trace.type === "heatmap") {
        (trace.y || []).forEach((y, i) => (trace.x || []).forEach((x, j) => rows.push([trace.name || "", x, y, trace.z[i][j]])));
      } else {
        (trace.x || []).forEach((x, i) => rows.push([trace.name || "", x, trace.y[i], trace.base ? trace.base[i] : ""]));
      }
    }
    return rows;
  }

  function tableRows(table) {
    const header = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    const rows = [...table.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map((td) => td.textContent.trim()));
    return { header, rows };
  }

  function exportClicked(button) {
    const format = button.dataset.export;
    if (button.dataset.table) {
      const table = document.getElementById(button.dataset.table);
      const { header, rows } = tableRows(table);
      if (format === "csv") download(`${table.id}.csv`, "text/csv", toCSV(header, rows));
      else download(`${table.id}.json`, "application/json", JSON.stringify(rows.map((r) => Object.fromEntries(header.map((h, i) => [h, r[i]]))), null, 1));
      return;
    }
    const el = document.getElementById(button.dataset.chart);
    const units = el.layout ? { x: el.layout.xaxis.title.text, y: el.layout.yaxis.title.text } : {};
    if (format === "csv") {
      download(`${el.id}.csv`, "text/csv", toCSV(["series", `x (${units.x || ""})`, `y (${units.y || ""})`, "z or base"], chartRows(el)));
    } else {
      const traces = (el.data || []).map((t) => ({ name: t.name, type: t.type, x: t.x, y: t.y, z: t.z, base: t.base }));
      download(`${el.id}.json`, "application/json", JSON.stringify({ units, traces }));
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-export]");
    if (button) exportClicked(button);
  });

  window.Rollyard = { PLOT_CONFIG, urlWith, getJSON, postJSON, csrfToken, baseLayout, setPoints, chartRows, toCSV };
})();

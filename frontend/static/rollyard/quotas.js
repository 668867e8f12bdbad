/* The quota page, live: the websocket (/ws/quotas/) sends a snapshot on connect and again
 * whenever a run starts, finishes or is requeued; each one redraws the pools and quotas
 * tables. A dropped socket reconnects with backoff and its first snapshot catches up. */
(function () {
  "use strict";

  const wsPath = JSON.parse(document.getElementById("quotas-ws-path").textContent);
  const state = document.getElementById("quotas-live");
  const dash = (value) => (value === null || value === undefined ? "—" : String(value));

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function draw(board) {
    document.getElementById("quotas-at").textContent = board.at;
    const pools = document.querySelector("#quota-pools tbody");
    pools.replaceChildren(...board.pools.map((pool) => {
      const row = document.createElement("tr");
      row.dataset.pool = pool.name;
      row.append(cell(pool.name), cell(String(pool.in_use), "num in-use"), cell(`${pool.capacity} ${pool.unit}`, "num"),
        cell(String(pool.queued), "num"), cell(pool.active ? "" : "inactive", "muted"));
      return row;
    }));
    const quotas = document.querySelector("#quota-table tbody");
    quotas.replaceChildren(...board.quotas.map((quota) => {
      const row = document.createElement("tr");
      row.dataset.quota = String(quota.id);
      const hours = quota.gpu_hours_per_period === null ? "—"
        : `${quota.gpu_hours_used.toFixed(2)} / ${quota.gpu_hours_per_period} per ${quota.period_days} days`;
      row.append(cell(quota.pool), cell(quota.holder),
        cell(`${quota.concurrent_in_use} / ${dash(quota.max_concurrent_gpus)} ${quota.unit}`, "num concurrent"),
        cell(dash(quota.max_gpus_per_run), "num"), cell(hours, "num hours"));
      return row;
    }));
    document.getElementById("quota-table").hidden = board.quotas.length === 0;
    document.getElementById("quota-empty").hidden = board.quotas.length > 0;
  }

  let attempt = 0;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + wsPath);
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type !== "quotas") return;
      attempt = 0;
      state.dataset.state = "live";
      state.textContent = `live: updated ${new Date().toLocaleTimeString()}`;
      draw(data);
    };
    socket.onclose = (event) => {
      if (event.code === 4401) { state.dataset.state = "closed"; state.textContent = "signed out: reload to log in"; return; }
      const delay = Math.min(10000, 500 * 2 ** attempt++);
      state.dataset.state = "reconnecting";
      state.textContent = `reconnecting in ${Math.round(delay / 1000)} s…`;
      window.setTimeout(connect, delay);
    };
  }
  connect();
})();

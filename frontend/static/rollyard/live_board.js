/* What the live pages (queue, quotas) share: their websocket sends a snapshot of the page
 * on connect and again whenever it may have changed (throttled by the server); each one
 * is drawn whole. A dropped socket reconnects with backoff and its first snapshot
 * catches up; a 4401 (signed out) stops. `state` shows where the socket stands
 * (data-state: connecting, live, reconnecting, closed). Between snapshots the page
 * redraws the last one every CLOCK_MS, so figures that grow with time alone (GPU-hours
 * used, waits) move on: draw(board, secondsSinceItCame). */
window.RollyardLiveBoard = (function () {
  "use strict";

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function row(cells, data) {
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, data || {});
    tr.append(...cells);
    return tr;
  }

  const CLOCK_MS = 5000;

  // A snapshot's time ("at", ISO 8601) as the other pages show times: HH:MM:SS UTC.
  function utcTime(iso) {
    return `${new Date(iso).toISOString().slice(11, 19)} UTC`;
  }

  // A live socket closed: signed out (4401) it stays closed; otherwise `connect` runs
  // again after a backoff that doubles with each failed `attempt`, up to 10 s.
  function reconnectAfter(event, state, attempt, connect) {
    if (event.code === 4401) { state.dataset.state = "closed"; state.textContent = "signed out: reload to log in"; return; }
    const delay = Math.min(10000, 500 * 2 ** attempt);
    state.dataset.state = "reconnecting";
    state.textContent = `reconnecting in ${Math.round(delay / 1000)} s…`;
    window.setTimeout(connect, delay);
  }

  function follow(wsPath, type, state, draw) {
    let attempt = 0;
    let shown = null;
    let receivedAt = 0;
    window.setInterval(() => { if (shown) draw(shown, (Date.now() - receivedAt) / 1000); }, CLOCK_MS);
    function connect() {
      const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      const socket = new WebSocket(scheme + window.location.host + wsPath);
      socket.onmessage = (message) => {
        const data = JSON.parse(message.data);
        if (data.type !== type) return;
        attempt = 0;
        state.dataset.state = "live";
        state.textContent = `live: updated ${utcTime(new Date().toISOString())}`;
        shown = data;
        receivedAt = Date.now();
        draw(data, 0);
      };
      socket.onclose = (event) => reconnectAfter(event, state, attempt++, connect);
    }
    connect();
  }

  return { cell, row, follow, reconnectAfter, utcTime };
})();

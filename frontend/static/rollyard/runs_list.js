/* The runs list, live (/ws/runs/, runs.consumers.RunListConsumer): the page tells the
 * socket which rows it shows; each row then follows its run's status, step and summary
 * columns (status changes at once, progress at most every few seconds). A run launched
 * in one of the user's teams that this page's filters would show is counted in a
 * "N new runs: show" link to the newest page instead of moving the rows. The filters it
 * checks are those a run's launch tells (team, status, owner, name, search, algorithm,
 * created before/after); a technique filter is not checked, so such a run is counted and
 * the reload shows the truth. A dropped socket reconnects with backoff and re-watches
 * (its first "rows" catches the rows up); a 4401 (signed out) stops. */
(function () {
  "use strict";

  const state = document.getElementById("live-state");
  const newRuns = document.getElementById("runs-new");
  const table = document.getElementById("runs-table");
  const filters = new URLSearchParams(window.location.search);
  const seen = new Set();  // launched runs counted already (a reconnect may hear one twice)

  function rowOf(runId) {
    return table ? table.querySelector(`tr[data-run-id="${runId}"]`) : null;
  }

  function shownIds() {
    return table ? Array.from(table.querySelectorAll("tbody tr[data-run-id]"), (tr) => Number(tr.dataset.runId)) : [];
  }

  // The figures as the server renders them: 3 decimals (floatformat:3), "—" when unreported.
  function figure(value) {
    return value === null || value === undefined ? "—" : value.toFixed(3);
  }

  function draw(run) {
    const tr = rowOf(run.id);
    if (!tr) return;
    const badge = tr.querySelector('[data-cell="status"] .badge');
    badge.className = `badge status-${run.status}`;
    badge.dataset.status = run.status;
    badge.textContent = run.status;
    const progress = tr.querySelector('[data-cell="progress"] progress');
    progress.max = run.total_steps || 1;
    progress.value = run.status === "succeeded" ? run.total_steps : run.current_step;
    tr.querySelector('[data-cell="progress"] span').textContent = `${run.current_step} / ${run.total_steps}`;
    for (const cell of tr.querySelectorAll("[data-metric]")) {
      cell.textContent = figure(run.summary[cell.dataset.metric]);
    }
  }

  // Would this page's filters (runs.api.dashboards.RunListFilter) show the launched run?
  function matches(run) {
    const has = (name) => (filters.get(name) || "").trim() !== "";
    const lower = (text) => (text || "").toLowerCase();
    const statuses = filters.getAll("status").filter(Boolean);
    if (statuses.length && !statuses.includes(run.status)) return false;
    if (has("team") && filters.get("team").trim() !== run.team && filters.get("team").trim() !== String(run.team_id)) return false;
    if (has("owner") && filters.get("owner") !== run.owner) return false;
    if (has("algorithm") && filters.get("algorithm") !== run.algorithm) return false;
    if (has("name") && !lower(run.name).includes(lower(filters.get("name")))) return false;
    if (has("created_before") && !(new Date(run.created_at) < new Date(filters.get("created_before")))) return false;
    if (has("created_after") && !(new Date(run.created_at) >= new Date(filters.get("created_after")))) return false;
    if (has("q")) {
      const text = filters.get("q").trim().replace(/^#+/, "");
      const byId = /^[0-9]{1,9}$/.test(text) && Number(text) === run.id;
      if (!byId && !lower(run.name).includes(lower(text)) && lower(run.owner) !== lower(text)) return false;
    }
    return true;
  }

  function countNew(run) {
    if (seen.has(run.id) || rowOf(run.id) || !matches(run)) return;
    seen.add(run.id);
    newRuns.textContent = `${seen.size} new run${seen.size === 1 ? "" : "s"}: show`;
    newRuns.hidden = false;
  }

  const { reconnectAfter } = window.RollyardLiveBoard;
  let attempt = 0;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(`${scheme}${window.location.host}/ws/runs/`);
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "hello") {
        socket.send(JSON.stringify({ type: "watch", runs: shownIds() }));
      } else if (data.type === "rows") {
        attempt = 0;
        state.dataset.state = "live";
        state.textContent = "live";
        data.rows.forEach(draw);
      } else if (data.type === "row") {
        draw(data.row);
      } else if (data.type === "created") {
        countNew(data.run);
      } else if (data.type === "error") {
        state.textContent = `live updates refused: ${data.error}`;
      }
    };
    socket.onclose = (event) => reconnectAfter(event, state, attempt++, connect);
  }
  connect();
})();

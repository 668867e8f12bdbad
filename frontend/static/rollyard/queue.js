/* The queue page, live (rollyard/live_board.js): each snapshot from /ws/queue/ (the
 * page's ?pool= with it) redraws the pools, the waiting runs with their places and
 * reasons, the quotas and the GPU-hours, so the page follows admission, finishes and
 * changed pools or quotas without a reload. Waits grow on the page's own clock between
 * snapshots; the 30-day GPU-hours are as of the snapshot's time. */
(function () {
  "use strict";

  const { cell, row, follow, utcTime } = window.RollyardLiveBoard;
  const { count } = window.RollyardText;
  const dash = (value) => (value === null || value === undefined ? "—" : String(value));

  function link(href, text) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function withChildren(td, ...children) {
    td.replaceChildren(...children);
    return td;
  }

  function fill(tableId, emptyId, rows) {
    document.querySelector(`#${tableId} tbody`).replaceChildren(...rows);
    document.getElementById(tableId).hidden = rows.length === 0;
    document.getElementById(emptyId).hidden = rows.length > 0;
  }

  // A wait as the server's timesince words it ("2 hours, 5 minutes", no-break spaces),
  // for waits under four weeks: no calendar month fits in those, so their weeks, days,
  // hours and minutes have fixed lengths. Longer waits keep the server's text.
  const CHUNKS = [["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];
  const FOUR_WEEKS_S = 4 * 604800;

  function waited(seconds) {
    let left = Math.floor(seconds);
    const counts = CHUNKS.map(([, size]) => {
      const count = Math.floor(left / size);
      left -= count * size;
      return count;
    });
    const first = counts.findIndex((count) => count > 0);
    if (first < 0) return "0\u00a0minutes";
    const words = [];
    for (let i = first; i < CHUNKS.length && words.length < 2 && counts[i] > 0; i++) {
      words.push(`${counts[i]}\u00a0${CHUNKS[i][0]}${counts[i] === 1 ? "" : "s"}`);
    }
    return words.join(", ");
  }

  function draw(board, secondsSince) {
    document.getElementById("queue-at").textContent = utcTime(board.at);
    document.querySelector("#pools-table tbody").replaceChildren(...board.pools.map((pool) => row([
      withChildren(cell(""), link(`?pool=${encodeURIComponent(pool.name)}`, pool.name)), cell(pool.accelerator),
      cell(`${pool.in_use} / ${count(pool.capacity, pool.unit_one)}`, "num"), cell(String(pool.queued), "num"),
      cell(pool.active ? "" : "inactive", "muted"),
    ], { pool: pool.name })));

    fill("queue-table", "queue-empty", board.queue.map((entry) => {
      const ahead = document.createElement("span");
      ahead.className = "muted";
      ahead.textContent = `(${entry.ahead} ahead)`;
      const waitedS = (Date.parse(board.at) - Date.parse(entry.requested_at)) / 1000 + secondsSince;
      const waiting = cell(waitedS < FOUR_WEEKS_S ? waited(waitedS) : entry.waiting);
      waiting.title = entry.requested_at;
      return row([
        cell(entry.pool), withChildren(cell("", "num"), `${entry.position} `, ahead),
        withChildren(cell(""), link(`/runs/${entry.run_id}/`, `#${entry.run_id} ${entry.run_name}`)),
        cell(entry.team), cell(entry.owner), cell(String(entry.gpus), "num"), cell(String(entry.priority), "num"),
        waiting, cell(entry.reason, "reason"),
      ], { runId: String(entry.run_id) });
    }));
    const more = document.getElementById("queue-more");
    more.hidden = board.waiting_total <= board.queue.length;
    more.textContent = `${board.waiting_total} waiting in all; the first ${board.queue.length} are listed`;

    fill("quotas-table", "quotas-empty", board.quotas.map((quota) => row([
      cell(quota.pool), cell(quota.holder), cell(dash(quota.max_concurrent_gpus), "num"),
      cell(dash(quota.max_gpus_per_run), "num"),
      cell(quota.gpu_hours_per_period === null ? "—" : `${quota.gpu_hours_per_period} per ${count(quota.period_days, "day")}`, "num"),
    ])));

    const usage = (team) => (entry) => {
      const tr = row([cell(entry.pool), cell(entry.team), cell(team ? "all" : entry.user, team ? "muted" : ""),
        cell(entry.gpu_hours.toFixed(2), "num"), cell(String(entry.runs), "num")]);
      if (team) tr.className = "team-row";
      return tr;
    };
    fill("usage-table", "usage-empty", [...board.usage.teams.map(usage(true)), ...board.usage.users.map(usage(false))]);
  }

  follow(JSON.parse(document.getElementById("queue-ws-path").textContent), "queue",
    document.getElementById("queue-live"), draw);
})();

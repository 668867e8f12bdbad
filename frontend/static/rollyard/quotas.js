/* The quota page, live (rollyard/live_board.js): each snapshot from /ws/quotas/ redraws
 * the pools and quotas tables. GPU-hours used grow while runs run, with no push: between
 * snapshots the page advances each figure by its rate (gpu_hours_rate, GPU-hours per
 * hour) on its own clock (quotas.live). */
(function () {
  "use strict";

  const { cell, row, follow, utcTime } = window.RollyardLiveBoard;
  const { count } = window.RollyardText;
  const dash = (value) => (value === null || value === undefined ? "—" : String(value));

  function draw(board, secondsSince) {
    document.getElementById("quotas-at").textContent = utcTime(board.at);
    document.querySelector("#quota-pools tbody").replaceChildren(...board.pools.map((pool) => row([
      cell(pool.name), cell(String(pool.in_use), "num in-use"), cell(count(pool.capacity, pool.unit_one), "num"),
      cell(String(pool.queued), "num"), cell(pool.active ? "" : "inactive", "muted"),
    ], { pool: pool.name })));
    document.querySelector("#quota-table tbody").replaceChildren(...board.quotas.map((quota) => {
      const hours = quota.gpu_hours_per_period === null ? "—"
        : `${Math.max(0, quota.gpu_hours_used + quota.gpu_hours_rate * secondsSince / 3600).toFixed(2)} / `
          + `${quota.gpu_hours_per_period} per ${count(quota.period_days, "day")}`;
      const limit = quota.max_concurrent_gpus === null ? `— ${quota.unit}` : count(quota.max_concurrent_gpus, quota.unit_one);
      return row([cell(quota.pool), cell(quota.holder), cell(`${quota.concurrent_in_use} / ${limit}`, "num concurrent"),
        cell(dash(quota.max_gpus_per_run), "num"), cell(hours, "num hours")], { quota: String(quota.id) });
    }));
    document.getElementById("quota-table").hidden = board.quotas.length === 0;
    document.getElementById("quota-empty").hidden = board.quotas.length > 0;
  }

  follow(JSON.parse(document.getElementById("quotas-ws-path").textContent), "quotas",
    document.getElementById("quotas-live"), draw);
})();

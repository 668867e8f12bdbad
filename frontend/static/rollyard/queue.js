/* The queue page, live: every few seconds the page is fetched again and its tables
 * (pools, waiting runs with their reasons, quotas, usage) replaced, so positions and
 * reasons follow admission without a reload. A page hidden in a background tab is not
 * refreshed; a failed fetch keeps what is shown and says so. */
(function () {
  "use strict";

  const live = document.getElementById("queue-live");
  const every = Number(live.dataset.refreshMs);

  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) throw new Error(String(response.status));
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").getElementById("queue-live");
      live.innerHTML = fresh.innerHTML;
      document.getElementById("queue-updated").textContent = `live: refreshed at ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      document.getElementById("queue-updated").textContent = `could not refresh (${error.message}); retrying`;
    }
  }

  window.setInterval(refresh, every);
})();

/* Compare runs: one metric of every run overlaid, by step or by wall-clock time (seconds
 * since each run's own first point, so runs launched hours apart line up). Each choice
 * asks every run's metrics endpoint (min/max downsampled server-side); a reply to an
 * older choice is discarded. */
(function () {
  "use strict";

  const R = window.Rollyard;
  const config = JSON.parse(document.getElementById("compare-config").textContent);
  const el = document.getElementById("chart-compare");
  let asked = 0;

  async function draw() {
    const mine = ++asked;
    const name = document.getElementById("compare-metric").value;
    const byWall = document.getElementById("compare-x").value === "wall";
    const answers = name ? await Promise.all(config.runs.map((run) =>
      R.getJSON(R.urlWith(run.metrics_url, { name, max_points: config.max_points })))) : [];
    if (mine !== asked) return;
    const traces = answers.map((answer, i) => {
      const s = answer.series[name] || { steps: [], values: [], wall_times: [] };
      const t0 = s.wall_times.length ? s.wall_times[0] : 0;
      return {
        name: `#${config.runs[i].id} ${config.runs[i].name}`, type: "scatter", mode: "lines+markers", marker: { size: 4 },
        x: byWall ? s.wall_times.map((t) => t - t0) : s.steps, y: s.values,
      };
    });
    Plotly.react(el, traces, R.baseLayout(byWall ? "seconds since the run's first point" : "step", name || ""), R.PLOT_CONFIG);
    R.setPoints(el, traces.reduce((sum, t) => sum + t.x.length, 0));
    el.dataset.traces = String(traces.filter((t) => t.x.length).length);
  }

  document.getElementById("compare-metric").addEventListener("change", draw);
  document.getElementById("compare-x").addEventListener("change", draw);
  draw().catch(console.error);
})();

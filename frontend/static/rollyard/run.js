/* The live run page.
 *
 * 1. Open the run's websocket. Its "hello" arrives once we are in the run's group, so
 *    history loaded from the REST API after it can miss nothing; pushes that arrive while
 *    the history loads wait in a queue and are deduplicated against it.
 * 2. Charts keep their data here and redraw at most once per REDRAW_MS: line charts
 *    append new points with Plotly.extendTraces, the others redraw with Plotly.react.
 * 3. Every chart exposes the number of points it draws in data-points (browser tests).
 * Plain JS, no build step; plotly.js is served by the app itself.
 */
(function () {
  "use strict";

  const REDRAW_MS = 500;
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  const PLOT_CONFIG = { responsive: true, displaylogo: false };
  const PHASE_COLORS = {
    generate: "#2f6fde", verify: "#8e6bd8", train: "#1f8a4c", sync: "#d9822b", wait: "#e0b23a", eval: "#17a2b8",
    idle: "#c9ccd3",
  };

  const config = JSON.parse(document.getElementById("run-config").textContent);
  const run = config.run;
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- fetching
  function urlWith(base, params) {
    const url = new URL(base, window.location.href);
    for (const [key, value] of Object.entries(params)) {
      for (const item of [].concat(value)) url.searchParams.append(key, item);
    }
    return url.toString();
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`${url} answered ${response.status}`);
    return response.json();
  }

  // ---------------------------------------------------------------- status, progress, ETA
  function duration(seconds) {
    if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)}s`;
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  function eta() {
    if (run.status !== "running" || !run.started_at || !run.current_step) return "";
    const elapsed = (Date.now() - Date.parse(run.started_at)) / 1000;
    const perStep = elapsed / run.current_step;
    return `ETA ${duration(perStep * Math.max(0, run.total_steps - run.current_step))} · ${duration(perStep)} per step`;
  }

  function renderRun() {
    const badge = $("run-status");
    badge.textContent = run.status;
    badge.dataset.status = run.status;
    badge.className = `badge status-${run.status}`;
    $("run-status-reason").textContent = run.status_reason || "";
    const total = run.total_steps || 0;
    const done = run.status === "succeeded" ? total : Math.min(run.current_step || 0, total);
    $("run-progress").max = total || 1;
    $("run-progress").value = done;
    $("run-progress-text").textContent = `${done} / ${total} steps`;
    $("run-eta").textContent = eta();
    $("run-cancel").hidden = TERMINAL.includes(run.status);
    if (run.cancel_requested) {
      $("run-cancel-button").disabled = true;
      $("run-cancel-button").textContent = "Cancelling…";
    }
  }

  function setLive(state, text) {
    const el = $("live-state");
    el.dataset.state = state;
    el.textContent = text || state;
  }

  // ---------------------------------------------------------------- chart plumbing
  const charts = {};

  function chart(id, draw) {
    const el = $(id);
    charts[id] = { id, el, draw, dirty: true };
    return charts[id];
  }

  function markDirty(...ids) {
    for (const id of ids) charts[id].dirty = true;
  }

  function setPoints(c, n) {
    c.el.dataset.points = String(n);
    $(`${c.id}-empty`).hidden = n > 0;
  }

  function baseLayout(xTitle, yTitle, extra) {
    return Object.assign(
      {
        margin: { l: 56, r: 16, t: 8, b: 44 },
        xaxis: { title: { text: xTitle }, automargin: true },
        yaxis: { title: { text: yTitle }, automargin: true },
        legend: { orientation: "h", y: -0.25 },
        uirevision: "keep", // keep the user's zoom across redraws
      },
      extra || {},
    );
  }

  // ---------------------------------------------------------------- line charts (metrics)
  // series[name] = {x: steps, y: values}; each line chart remembers how many points of
  // each of its series it has drawn, and appends only the rest.
  const series = {};
  const chartedNames = new Set([].concat(...Object.values(config.line_charts)));
  const LINE_AXES = {
    "chart-reward": ["step", "reward / accuracy (fraction)"],
    "chart-length": ["step", "response length (tokens)"],
  };

  function seriesOf(name) {
    if (!series[name]) series[name] = { x: [], y: [] };
    return series[name];
  }

  function lineChart(id) {
    const names = config.line_charts[id];
    const c = chart(id, () => {
      const lines = names.map(seriesOf);
      if (!c.drawnCounts) {
        const traces = names.map((name, i) => ({
          name, type: "scatter", mode: "lines+markers", marker: { size: 4 },
          x: lines[i].x.slice(), y: lines[i].y.slice(), connectgaps: false,
        }));
        Plotly.react(c.el, traces, baseLayout(...LINE_AXES[id]), PLOT_CONFIG);
        c.drawnCounts = lines.map((s) => s.x.length);
      } else {
        const fresh = lines.map((s, i) => ({ x: s.x.slice(c.drawnCounts[i]), y: s.y.slice(c.drawnCounts[i]) }));
        if (fresh.some((f) => f.x.length)) {
          Plotly.extendTraces(c.el, { x: fresh.map((f) => f.x), y: fresh.map((f) => f.y) }, names.map((_, i) => i));
          c.drawnCounts = lines.map((s) => s.x.length);
        }
      }
      setPoints(c, c.el.data ? c.el.data.reduce((sum, trace) => sum + trace.x.length, 0) : 0);
    });
    c.reset = () => { c.drawnCounts = null; c.dirty = true; };
    return c;
  }

  // Zooming asks the server for that step range at full resolution (re-bucketed), so a
  // zoomed-in view shows real points, not the overview's buckets.
  function watchZoom(c) {
    c.el.on("plotly_relayout", async (event) => {
      const names = config.line_charts[c.id];
      if (event["xaxis.autorange"]) { c.reset(); return; }
      const lo = event["xaxis.range[0]"], hi = event["xaxis.range[1]"];
      if (lo === undefined || hi === undefined) return;
      const data = await getJSON(urlWith(config.metrics_url, {
        name: names, max_points: config.max_points, min_step: Math.floor(lo), max_step: Math.ceil(hi),
      }));
      const traces = names.map((name) => {
        const s = data.series[name] || { steps: [], values: [] };
        return { name, type: "scatter", mode: "lines+markers", marker: { size: 4 }, x: s.steps, y: s.values };
      });
      Plotly.react(c.el, traces, c.el.layout, PLOT_CONFIG);
      c.drawnCounts = names.map((name) => seriesOf(name).x.length); // later pushes append
      setPoints(c, traces.reduce((sum, t) => sum + t.x.length, 0));
    });
  }

  // ---------------------------------------------------------------- event-backed charts
  const MAX_HISTOGRAMS = config.event_charts["chart-heatmap"].latest;
  const MAX_SPANS = config.event_charts["chart-timeline"].latest;
  const MAX_LOG = 500;
  const state = { histograms: [], prompts: {}, spans: [] };

  function binCenters(edges) {
    return edges.slice(0, -1).map((lo, i) => (lo + edges[i + 1]) / 2);
  }

  function histogramChart() {
    const c = chart("chart-histogram", () => {
      const latest = state.histograms[state.histograms.length - 1];
      const traces = latest ? [{
        type: "bar", name: `step ${latest.step}`, x: binCenters(latest.bin_edges), y: latest.counts,
        width: latest.bin_edges.slice(1).map((hi, i) => hi - latest.bin_edges[i]), marker: { color: "#2f6fde" },
      }] : [];
      const layout = baseLayout("response length (tokens)", "rollouts", { bargap: 0.02, showlegend: !!latest });
      Plotly.react(c.el, traces, layout, PLOT_CONFIG);
      setPoints(c, latest ? latest.counts.length : 0);
    });
  }

  function heatmapChart() {
    const c = chart("chart-heatmap", () => {
      const hs = state.histograms;
      let traces = [];
      let cells = 0;
      if (hs.length) {
        const edges = hs[hs.length - 1].bin_edges; // bins are fixed per run
        const z = binCenters(edges).map((_, bin) => hs.map((h) => (h.counts[bin] === undefined ? null : h.counts[bin])));
        traces = [{
          type: "heatmap", x: hs.map((h) => h.step), y: binCenters(edges), z,
          colorscale: "Viridis", colorbar: { title: { text: "rollouts" } },
        }];
        cells = hs.length * (edges.length - 1);
      }
      Plotly.react(c.el, traces, baseLayout("step", "response length (tokens)"), PLOT_CONFIG);
      setPoints(c, cells);
    });
  }

  function promptsChart() {
    const c = chart("chart-prompts", () => {
      const traces = ["train", "test"].filter((split) => state.prompts[split]).map((split) => {
        const event = state.prompts[split];
        return {
          type: "scatter", mode: "markers", name: `${split} · step ${event.step}`,
          x: event.results.map((r) => r.difficulty),
          y: event.results.map((r) => (r.attempts ? r.successes / r.attempts : null)),
          hovertext: event.results.map((r) => `${r.prompt_id}: ${r.successes}/${r.attempts}, mean length ${Math.round(r.mean_length)}`),
          hoverinfo: "text", marker: { size: 7, opacity: 0.7 },
        };
      });
      const layout = baseLayout("difficulty", "pass rate (successes / attempts)", {
        showlegend: true, yaxis: { range: [-0.05, 1.05], title: { text: "pass rate (successes / attempts)" } },
      });
      Plotly.react(c.el, traces, layout, PLOT_CONFIG);
      setPoints(c, traces.reduce((sum, t) => sum + t.x.length, 0));
    });
  }

  function timelineChart() {
    const c = chart("chart-timeline", () => {
      const spans = state.spans;
      const t0 = spans.length ? Math.min(...spans.map((s) => s.start)) : 0;
      const phases = [...new Set(spans.map((s) => s.phase))];
      const traces = phases.map((phase) => {
        const mine = spans.filter((s) => s.phase === phase);
        return {
          type: "bar", orientation: "h", name: phase, marker: { color: PHASE_COLORS[phase] || "#999" },
          y: mine.map((s) => s.worker), base: mine.map((s) => s.start - t0), x: mine.map((s) => s.end - s.start),
          hovertext: mine.map((s) => `${phase} · step ${s.step} · ${(s.end - s.start).toFixed(2)} s`), hoverinfo: "text",
        };
      });
      Plotly.react(c.el, traces, baseLayout("seconds since the first span shown", "worker", { barmode: "overlay" }), PLOT_CONFIG);
      setPoints(c, spans.length);
    });
  }

  // ---------------------------------------------------------------- log
  function appendLog(event) {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = new Date(event.wall_time * 1000).toISOString().slice(11, 19);
    li.appendChild(time);
    if (event.kind === "status") {
      li.className = event.status === "failed" ? "level-error" : "level-info";
      li.appendChild(document.createTextNode(`status → ${event.status}${event.message ? ": " + event.message : ""}`));
    } else {
      li.className = `level-${event.level}`;
      li.appendChild(document.createTextNode(`[${event.level}] ${event.message}`));
    }
    const log = $("run-log");
    log.insertBefore(li, log.firstChild); // newest first
    while (log.children.length > MAX_LOG) log.removeChild(log.lastChild);
    $("run-log-empty").hidden = true;
  }

  // ---------------------------------------------------------------- applying events
  // Pushed events older than what the history holds are dropped: metrics by step per
  // series, other kinds by wall_time per kind.
  let cutoff = {};

  function applyEvent(event, fromHistory) {
    if (!fromHistory && event.kind !== "metrics" && event.wall_time <= (cutoff[event.kind] || 0)) return;
    switch (event.kind) {
      case "metrics":
        for (const [name, value] of Object.entries(event.values)) {
          if (!chartedNames.has(name)) continue;
          const s = seriesOf(name);
          if (s.x.length && event.step <= s.x[s.x.length - 1]) continue;
          s.x.push(event.step);
          s.y.push(value);
          for (const [id, names] of Object.entries(config.line_charts)) if (names.includes(name)) markDirty(id);
        }
        run.current_step = Math.max(run.current_step || 0, event.step);
        break;
      case "heartbeat":
        run.current_step = Math.max(run.current_step || 0, event.step);
        break;
      case "length_histogram":
        state.histograms.push(event);
        if (state.histograms.length > MAX_HISTOGRAMS) state.histograms.shift();
        markDirty("chart-histogram", "chart-heatmap");
        break;
      case "prompt_results":
        if (!state.prompts[event.split] || event.step >= state.prompts[event.split].step) state.prompts[event.split] = event;
        markDirty("chart-prompts");
        break;
      case "span":
        state.spans.push(event);
        if (state.spans.length > MAX_SPANS) state.spans.shift();
        markDirty("chart-timeline");
        break;
      case "log":
      case "status":
        appendLog(event);
        break;
    }
    runDirty = true;
  }

  let loaded = false;
  let loading = null;
  const queued = [];
  let runDirty = true;

  function onPush(events) {
    if (!loaded) { queued.push(...events); return; }
    for (const event of events) applyEvent(event, false);
  }

  async function loadHistory() {
    loaded = false;
    const names = [...chartedNames];
    const metrics = await getJSON(urlWith(config.metrics_url, { name: names, max_points: config.max_points }));
    // One request per distinct (kinds, latest): the histogram and heatmap share theirs.
    const requests = {};
    for (const { kinds, latest } of Object.values(config.event_charts)) {
      const url = urlWith(config.events_url, { kind: kinds, latest });
      requests[url] = requests[url] || getJSON(url);
    }
    const answers = await Promise.all(Object.values(requests));

    for (const key of Object.keys(series)) delete series[key];
    for (const [name, s] of Object.entries(metrics.series)) series[name] = { x: s.steps.slice(), y: s.values.slice() };
    state.histograms = []; state.prompts = {}; state.spans = []; cutoff = {};
    $("run-log").textContent = "";
    const events = new Map();
    for (const answer of answers) for (const event of answer.events) events.set(event.id, event);
    for (const event of [...events.values()].sort((a, b) => a.id - b.id)) {
      applyEvent(event, true);
      cutoff[event.kind] = Math.max(cutoff[event.kind] || 0, event.wall_time);
    }
    for (const c of Object.values(charts)) { if (c.reset) c.reset(); c.dirty = true; }
    loaded = true;
    onPush(queued.splice(0));
  }

  function reload() {
    if (!loading) loading = loadHistory().catch((error) => console.error(error)).finally(() => { loading = null; });
    return loading;
  }

  // ---------------------------------------------------------------- websocket
  let attempt = 0;

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + config.ws_path);
    setLive("connecting", "connecting…");
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type === "hello") {
        attempt = 0;
        Object.assign(run, data.run);
        runDirty = true;
        setLive("live");
        reload(); // now in the group: the history can miss nothing
      } else if (data.type === "events") {
        onPush(data.events);
      } else if (data.type === "status") {
        Object.assign(run, {
          status: data.status, status_reason: data.reason, cancel_requested: data.cancel_requested,
          started_at: data.started_at, finished_at: data.finished_at,
        });
        runDirty = true;
      }
    };
    socket.onclose = (event) => {
      if (event.code === 4401) { setLive("closed", "signed out: reload to log in"); return; }
      if (event.code === 4403) { setLive("closed", "no access to this run"); return; }
      loaded = false; // pushes wait in the queue until the next history load
      const delay = Math.min(10000, 500 * 2 ** attempt++);
      setLive("reconnecting", `reconnecting in ${Math.round(delay / 1000)} s…`);
      window.setTimeout(connect, delay);
    };
  }

  // ---------------------------------------------------------------- start
  for (const id of Object.keys(config.line_charts)) lineChart(id);
  histogramChart();
  heatmapChart();
  promptsChart();
  timelineChart();
  for (const id of Object.keys(config.line_charts)) {
    charts[id].draw();
    charts[id].dirty = false;
    watchZoom(charts[id]);
  }

  window.setInterval(() => {
    for (const c of Object.values(charts)) {
      if (!c.dirty) continue;
      c.dirty = false;
      c.draw();
    }
    if (runDirty) { runDirty = false; renderRun(); }
  }, REDRAW_MS);
  window.setInterval(() => { $("run-eta").textContent = eta(); }, 5000);

  renderRun();
  connect();
  // Without a websocket (blocked by a proxy), still show the history.
  window.setTimeout(() => { if (!loaded) reload(); }, 3000);
})();

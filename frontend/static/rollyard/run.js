/* The live run page, in tabs (overview, learning, rollout tail, accelerators, difficulty,
 * off-policy, techniques).
 *
 * 1. Open the run's websocket. Its "hello" arrives once we are in the run's group, so
 *    history loaded from the REST API after it can miss nothing; pushes that arrive while
 *    the history loads wait in a queue and are deduplicated against it. A reconnect loads
 *    the history again (catch-up), then applies what was queued.
 * 2. Charts keep their data here and redraw at most once per REDRAW_MS: line charts
 *    append new points with Plotly.extendTraces, the others redraw with Plotly.react.
 *    A chart's metric names may end in "*" (every metric with that prefix, found in the
 *    run's metric names and in pushes); an optional chart shows once one has data.
 * 3. The difficulty tab reads the per-prompt REST endpoints (table, pass-rate heatmap,
 *    samples), refreshed at most once per REFRESH_MS while pushes say they changed.
 * 4. Every chart exposes the number of points it draws in data-points (browser tests).
 */
(function () {
  "use strict";

  const R = window.Rollyard;
  const { count } = window.RollyardText;
  const REDRAW_MS = 500;
  const REFRESH_MS = 3000;
  // A status change or checkpoint often comes with another (admitted, then running): one fetch.
  const OVERVIEW_REFRESH_MS = 300;
  const PROMPTS_PAGE = 20;
  const TERMINAL = ["succeeded", "failed", "cancelled"];
  // Pass rate 0 red, 0.5 amber, 1 green, spelled out: plotly.js has no red-yellow-green
  // scale by name, and an unknown name silently draws its default (white to red).
  const PASS_RATE_COLORS = [[0, "#c2372f"], [0.5, "#f2c94c"], [1, "#1f8a4c"]];
  const PHASE_COLORS = {
    generate: "#2f6fde", verify: "#8e6bd8", train: "#1f8a4c", sync: "#d9822b", wait: "#e0b23a", eval: "#17a2b8",
    idle: "#c9ccd3",
  };

  const config = JSON.parse(document.getElementById("run-config").textContent);
  const run = config.run;
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- tabs
  function showTab(key) {
    if (!document.querySelector(`[data-panel="${key}"]`)) key = "overview";
    for (const panel of document.querySelectorAll(".tab-panel")) panel.hidden = panel.dataset.panel !== key;
    for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-selected", String(tab.dataset.tab === key));
    // Plotly sizes a chart drawn while hidden to a default box: resize on show.
    for (const el of document.querySelectorAll(`[data-panel="${key}"] .chart`)) if (el.data) Plotly.Plots.resize(el);
    if (key === "difficulty") difficulty.refresh();
  }
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => { history.replaceState(null, "", `#${tab.dataset.tab}`); showTab(tab.dataset.tab); });
  }

  // ---------------------------------------------------------------- status, progress, ETA, queue
  function duration(seconds) {
    if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)}s`;
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  // From the step times the engine measured (timing_s/step, the last 5 steps), not from the
  // time since the start: after a resume or in a fork, started_at and current_step belong
  // to different stretches of work and their ratio is wrong.
  function eta() {
    if (run.status !== "running") return "";
    const remaining = Math.max(0, run.total_steps - (run.current_step || 0));
    const times = (series["timing_s/step"] || { y: [] }).y.slice(-5);
    if (!times.length) return remaining ? "ETA after the first step" : "";
    const perStep = times.reduce((a, b) => a + b, 0) / times.length;
    return `ETA ${duration(perStep * remaining)} · ${duration(perStep)} per step`;
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
    $("run-progress-text").textContent = `${done} / ${count(total, "step")}`;
    $("run-eta").textContent = eta();
    $("run-cancel").hidden = TERMINAL.includes(run.status);
    if (run.cancel_requested) {
      $("run-cancel-button").disabled = true;
      $("run-cancel-button").textContent = "Cancelling…";
    }
    if (run.status !== "queued") $("run-queue").hidden = true;
  }

  async function refreshQueue() {
    if (run.status !== "queued") return;
    const answer = await R.getJSON(config.queue_url);
    const entry = answer.queue.find((e) => e.run_id === run.id);
    const el = $("run-queue");
    el.hidden = !entry;
    if (entry) el.textContent = `Waiting in pool ${entry.pool}: position ${entry.position} (${entry.ahead} ahead) — ${entry.reason}`;
  }

  // The overview's tables (status history, attempts, checkpoints) and the fork form are
  // rendered by the server; the page fetches itself again for them when the run's status
  // changes or it writes a checkpoint. Pushes alone cannot rebuild them: a status push
  // carries no attempt, and a page opened between two changes would miss the first.
  // The fork form is swapped only where the page has none yet (the first checkpoint);
  // otherwise only its step list is, so what the user types there stays.
  const SERVER_RENDERED = ["run-status-history", "run-attempts", "run-checkpoints", "run-checkpoint-bytes"];
  let overviewTimer = null;

  function refreshOverviewSoon() {
    window.clearTimeout(overviewTimer);
    overviewTimer = window.setTimeout(() => refreshOverview().catch(console.error), OVERVIEW_REFRESH_MS);
  }

  async function refreshOverview() {
    const response = await fetch(window.location.pathname, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`${window.location.pathname} answered ${response.status}`);
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of SERVER_RENDERED) {
      const el = fresh.getElementById(id);
      if (el && $(id)) $(id).replaceWith(document.adoptNode(el));
    }
    const freshFork = fresh.getElementById("run-fork");
    if (!freshFork) return;
    if (!$("run-fork")) { $("run-checkpoints").after(document.adoptNode(freshFork)); return; }
    const chosen = $("fork-step").value;
    $("fork-step").replaceWith(document.adoptNode(fresh.getElementById("fork-step")));
    if ([...$("fork-step").options].some((o) => o.value === chosen)) $("fork-step").value = chosen;
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
    for (const id of ids) if (charts[id]) charts[id].dirty = true;
  }

  // ---------------------------------------------------------------- line charts (metrics)
  // series[name] = {x: steps, y: values, t: wall times}; each line chart remembers how
  // many points of each of its series it has drawn, and appends only the rest.
  const series = {};
  const knownNames = new Set(config.metric_names);

  // A "*" stands for any text: "cures/*" (a prefix), "gpu/*/utilization" (each GPU).
  const wildcards = {};
  function matches(pattern, name) {
    if (!pattern.includes("*")) return pattern === name;
    if (!wildcards[pattern]) {
      const escaped = pattern.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
      wildcards[pattern] = new RegExp(`^${escaped.join(".*")}$`);
    }
    return wildcards[pattern].test(name);
  }

  function namesOf(id) {
    const names = [];
    for (const pattern of config.line_charts[id].names) {
      if (pattern.includes("*")) names.push(...[...knownNames].filter((n) => matches(pattern, n)).sort());
      else names.push(pattern);
    }
    return names;
  }

  function chartsOf(name) {
    return Object.keys(config.line_charts).filter((id) => config.line_charts[id].names.some((p) => matches(p, name)));
  }

  function seriesOf(name) {
    if (!series[name]) series[name] = { x: [], y: [], t: [] };
    return series[name];
  }

  function lineChart(id) {
    const spec = config.line_charts[id];
    const c = chart(id, () => {
      const names = namesOf(id);
      const lines = names.map(seriesOf);
      if (!c.drawnCounts || c.drawnNames !== names.join("|")) {
        const traces = names.map((name, i) => ({
          name, type: "scatter", mode: "lines+markers", marker: { size: 4 },
          x: lines[i].x.slice(), y: lines[i].y.slice(), connectgaps: false,
        }));
        // The legend even for one line: it names the metric (which pass@k, which norm).
        Plotly.react(c.el, traces, R.baseLayout("step", spec.unit, { showlegend: true }), R.PLOT_CONFIG);
        c.drawnCounts = lines.map((s) => s.x.length);
        c.drawnNames = names.join("|");
        if (!c.clickable) { c.clickable = true; c.el.on("plotly_click", (e) => e.points[0] && samples.ofStep(e.points[0].x)); }
      } else {
        const fresh = lines.map((s, i) => ({ x: s.x.slice(c.drawnCounts[i]), y: s.y.slice(c.drawnCounts[i]) }));
        if (fresh.some((f) => f.x.length)) {
          Plotly.extendTraces(c.el, { x: fresh.map((f) => f.x), y: fresh.map((f) => f.y) }, names.map((_, i) => i));
          c.drawnCounts = lines.map((s) => s.x.length);
        }
      }
      const points = lines.reduce((sum, s) => sum + s.x.length, 0);
      R.setPoints(c.el, points);
      if (spec.optional && points) showOptional(id);
    });
    c.reset = () => { c.drawnCounts = null; c.dirty = true; };
    return c;
  }

  function showOptional(id) {
    $(`${id}-card`).hidden = false;
    const panel = $(`${id}-card`).closest(".tab-panel");
    const empty = panel.querySelector(".optional-empty");
    if (empty) empty.hidden = true;
  }

  // Zooming asks the server for that step range (re-bucketed), so a zoomed-in view shows
  // real points, not the overview's buckets. A reply to an older zoom is discarded.
  function watchZoom(c) {
    let asked = 0;
    c.el.on("plotly_relayout", async (event) => {
      if (event["xaxis.autorange"]) { asked++; c.reset(); return; }
      const lo = event["xaxis.range[0]"], hi = event["xaxis.range[1]"];
      if (lo === undefined || hi === undefined) return;
      const mine = ++asked;
      const names = namesOf(c.id);
      const data = await R.getJSON(R.urlWith(config.metrics_url, {
        name: names, max_points: config.max_points, min_step: Math.floor(lo), max_step: Math.ceil(hi),
      }));
      if (mine !== asked) return;
      const traces = names.map((name) => {
        const s = data.series[name] || { steps: [], values: [] };
        return { name, type: "scatter", mode: "lines+markers", marker: { size: 4 }, x: s.steps, y: s.values };
      });
      Plotly.react(c.el, traces, c.el.layout, R.PLOT_CONFIG);
      c.drawnCounts = names.map((name) => seriesOf(name).x.length); // later pushes append
      R.setPoints(c.el, traces.reduce((sum, t) => sum + t.x.length, 0));
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
      const layout = R.baseLayout("response length (tokens)", "rollouts", { bargap: 0.02, showlegend: !!latest });
      Plotly.react(c.el, traces, layout, R.PLOT_CONFIG);
      R.setPoints(c.el, latest ? latest.counts.length : 0);
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
          type: "heatmap", name: "rollouts", x: hs.map((h) => h.step), y: binCenters(edges), z,
          colorscale: "Viridis", colorbar: { title: { text: "rollouts" } },
        }];
        cells = hs.length * (edges.length - 1);
      }
      Plotly.react(c.el, traces, R.baseLayout("step", "response length (tokens)"), R.PLOT_CONFIG);
      if (!c.clickable && cells) { c.clickable = true; c.el.on("plotly_click", (e) => e.points[0] && samples.ofStep(e.points[0].x)); }
      R.setPoints(c.el, cells);
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
          customdata: event.results.map((r) => r.prompt_id),
          hovertext: event.results.map((r) => `${r.prompt_id}: ${r.successes}/${r.attempts}, mean length ${Math.round(r.mean_length)}`),
          hoverinfo: "text", marker: { size: 8, opacity: 0.7 },
        };
      });
      const layout = R.baseLayout("difficulty (the dataset's)", "pass rate (successes / attempts)", {
        showlegend: true, yaxis: { range: [-0.05, 1.05], title: { text: "pass rate (successes / attempts)" } },
      });
      Plotly.react(c.el, traces, layout, R.PLOT_CONFIG);
      if (!c.clickable && traces.length) {
        c.clickable = true;
        c.el.on("plotly_click", (e) => e.points[0] && samples.ofPrompt(e.points[0].customdata));
      }
      R.setPoints(c.el, traces.reduce((sum, t) => sum + t.x.length, 0));
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
      Plotly.react(c.el, traces, R.baseLayout("seconds since the first span shown", "worker", { barmode: "overlay" }), R.PLOT_CONFIG);
      R.setPoints(c.el, spans.length);
    });
  }

  // ---------------------------------------------------------------- difficulty tab
  const difficulty = {
    ordering: "-attempts", offset: 0, count: 0, dueAt: 0, timer: null,
    // At most one refresh per REFRESH_MS, however many pushes ask for one.
    refresh() {
      const wait = Math.max(0, this.dueAt - Date.now());
      if (this.timer) return;
      this.timer = window.setTimeout(() => {
        this.timer = null;
        this.dueAt = Date.now() + REFRESH_MS;
        this.loadTable().catch(console.error);
        this.loadHeatmap().catch(console.error);
      }, wait);
    },
    async loadTable() {
      const answer = await R.getJSON(R.urlWith(config.prompts_url, { ordering: this.ordering, limit: PROMPTS_PAGE, offset: this.offset }));
      this.count = answer.count;
      const body = $("prompt-table").tBodies[0];
      body.textContent = "";
      for (const row of answer.results) {
        const tr = document.createElement("tr");
        tr.dataset.promptId = row.prompt_id;
        tr.className = "clickable";
        const cells = [row.prompt_id, row.mean.toFixed(3), `${row.low.toFixed(2)} – ${row.high.toFixed(2)}`,
          `${row.successes}/${row.attempts}`, row.last_step ?? "—", row.allocated ?? "—"];
        for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
        tr.addEventListener("click", () => samples.ofPrompt(row.prompt_id));
        body.appendChild(tr);
      }
      $("prompt-table").dataset.rows = String(answer.results.length);
      $("prompt-table-empty").hidden = answer.results.length > 0;
      const pages = Math.max(1, Math.ceil(this.count / PROMPTS_PAGE));
      $("prompt-page").textContent = `page ${Math.floor(this.offset / PROMPTS_PAGE) + 1} of ${pages} · ${count(this.count, "prompt")}`;
      $("prompt-prev").disabled = this.offset === 0;
      $("prompt-next").disabled = this.offset + PROMPTS_PAGE >= this.count;
    },
    async loadHeatmap() {
      const el = $("chart-pass-heatmap");
      const h = await R.getJSON(R.urlWith(config.heatmap_url, { by: "difficulty", buckets: 8 }));
      const labels = h.edges.slice(0, -1).map((lo, i) => `${lo.toFixed(1)}–${h.edges[i + 1].toFixed(1)}`);
      const traces = h.steps.length ? [{
        type: "heatmap", name: "pass rate", x: h.steps, y: labels, z: h.pass_rate, zmin: 0, zmax: 1,
        colorscale: PASS_RATE_COLORS, colorbar: { title: { text: "pass rate" } },
        customdata: h.attempts, hovertemplate: "step %{x}<br>difficulty %{y}<br>pass rate %{z:.2f} of %{customdata} attempts<extra></extra>",
      }] : [];
      Plotly.react(el, traces, R.baseLayout("step", "difficulty bucket (the dataset's)"), R.PLOT_CONFIG);
      if (!el.dataset.clickable && traces.length) {
        el.dataset.clickable = "1";
        el.on("plotly_click", (e) => e.points[0] && samples.ofStep(e.points[0].x));
      }
      R.setPoints(el, h.steps.length * labels.length);
    },
  };
  // The table's starting order, marked like a clicked one.
  $("prompt-table").querySelector(`th[data-order="${difficulty.ordering.replace(/^-/, "")}"]`)
    .setAttribute("aria-sort", difficulty.ordering.startsWith("-") ? "descending" : "ascending");
  for (const th of document.querySelectorAll("#prompt-table th[data-order]")) {
    th.classList.add("sortable");
    th.addEventListener("click", () => {
      const field = th.dataset.order;
      difficulty.ordering = difficulty.ordering === `-${field}` ? field : `-${field}`;
      for (const other of document.querySelectorAll("#prompt-table th")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", difficulty.ordering.startsWith("-") ? "descending" : "ascending");
      difficulty.offset = 0;
      difficulty.loadTable().catch(console.error);
    });
  }
  $("prompt-prev").addEventListener("click", () => { difficulty.offset = Math.max(0, difficulty.offset - PROMPTS_PAGE); difficulty.loadTable(); });
  $("prompt-next").addEventListener("click", () => { difficulty.offset += PROMPTS_PAGE; difficulty.loadTable(); });

  // Drill-down: a prompt's latest samples, or one step's: each prompt's text and reference
  // answer, then its samples side by side with text, verdict, reward, length, status.
  const samples = {
    asked: 0,
    async show(url, title) {
      const mine = ++this.asked;
      showTab("difficulty");
      $("samples-title").textContent = title;
      const answer = await R.getJSON(url);
      if (mine !== this.asked) return; // a later click won
      const list = $("samples");
      list.textContent = "";
      const newest = answer.results.length ? answer.results[0].step : null;
      const shown = answer.results.filter((r) => r.step === newest);
      const byPrompt = new Map(); // in the order the engine sent them
      for (const s of shown) {
        if (!byPrompt.has(s.prompt_id)) byPrompt.set(s.prompt_id, []);
        byPrompt.get(s.prompt_id).push(s);
      }
      for (const [promptId, group] of byPrompt) list.appendChild(this.promptGroup(promptId, group));
      list.dataset.samples = String(shown.length);
      $("samples-empty").hidden = shown.length > 0;
      $("samples-empty").textContent = "No samples kept for it (only the newest steps keep theirs).";
    },
    promptGroup(promptId, group) {
      const li = document.createElement("li");
      li.className = "prompt-group";
      li.dataset.promptId = promptId;
      const head = document.createElement("div");
      head.className = "prompt-meta";
      const { prompt, answer } = group[0]; // the same on every sample of a prompt
      head.textContent = answer === null ? `prompt ${promptId} · text not recorded (the run reported none)`
        : `prompt ${promptId} · reference answer: ${answer}`;
      li.appendChild(head);
      if (prompt !== null) {
        const text = document.createElement("pre");
        text.className = "prompt-text";
        text.textContent = prompt;
        li.appendChild(text);
      }
      const row = document.createElement("ol");
      row.className = "prompt-samples";
      for (const s of group) {
        const item = document.createElement("li");
        item.className = `sample status-${s.status} ${s.reward > 0 ? "verdict-right" : "verdict-wrong"}`;
        const meta = document.createElement("div");
        meta.className = "sample-meta";
        // The verifiers score 1 (right) or 0 (wrong), before shaping.
        meta.textContent = `${s.prompt_id} · step ${s.step} (${s.split}) · ${s.reward > 0 ? "✓ right" : "✗ wrong"}, reward ${s.reward} · ${count(s.length, "token")} · ${s.status} · policy v${s.first_version}–v${s.last_version}`;
        const text = document.createElement("pre");
        text.className = "sample-text";
        text.textContent = s.response;
        item.append(meta, text);
        row.appendChild(item);
      }
      li.appendChild(row);
      return li;
    },
    ofPrompt(promptId) {
      return this.show(R.urlWith(`${config.prompts_url}${encodeURIComponent(promptId)}/samples/`, { limit: 32 }), `prompt ${promptId}, latest step`);
    },
    ofStep(step) {
      return this.show(R.urlWith(config.samples_url, { step: Math.round(step), limit: 32 }), `step ${Math.round(step)}`);
    },
  };

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
          const ids = chartsOf(name);
          if (!ids.length) continue;
          if (!knownNames.has(name)) { knownNames.add(name); for (const id of ids) charts[id].reset(); }
          const s = seriesOf(name);
          if (s.x.length && event.step <= s.x[s.x.length - 1]) continue;
          s.x.push(event.step);
          s.y.push(value);
          s.t.push(event.wall_time);
          markDirty(...ids);
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
        if (!fromHistory) difficulty.refresh();
        break;
      case "difficulty":
      case "samples":
        if (!fromHistory) difficulty.refresh();
        break;
      case "span":
        state.spans.push(event);
        if (state.spans.length > MAX_SPANS) state.spans.shift();
        markDirty("chart-timeline");
        break;
      case "checkpoint":
        if (!fromHistory) refreshOverviewSoon();
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
    const names = [...new Set(Object.keys(config.line_charts).flatMap(namesOf))];
    const metrics = await R.getJSON(R.urlWith(config.metrics_url, { name: names, max_points: config.max_points }));
    // One request per distinct (kinds, latest): the histogram and heatmap share theirs.
    const requests = {};
    for (const { kinds, latest } of Object.values(config.event_charts)) {
      const url = R.urlWith(config.events_url, { kind: kinds, latest });
      requests[url] = requests[url] || R.getJSON(url);
    }
    const answers = await Promise.all(Object.values(requests));

    for (const key of Object.keys(series)) delete series[key];
    for (const [name, s] of Object.entries(metrics.series)) {
      series[name] = { x: s.steps.slice(), y: s.values.slice(), t: (s.wall_times || []).slice() };
    }
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
    difficulty.refresh();
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
      document.dispatchEvent(new CustomEvent("rollyard:run-message", { detail: data })); // alerts.js
      if (data.type === "hello") {
        attempt = 0;
        if (data.run.status !== run.status) refreshOverviewSoon(); // it changed before we joined
        Object.assign(run, data.run);
        runDirty = true;
        setLive("live");
        reload(); // now in the group: the history can miss nothing
        refreshQueue().catch(console.error);
      } else if (data.type === "events") {
        onPush(data.events);
      } else if (data.type === "status") {
        if (data.status !== run.status) refreshOverviewSoon();
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
  showTab(window.location.hash.slice(1) || "overview");

  window.setInterval(() => {
    for (const c of Object.values(charts)) {
      if (!c.dirty) continue;
      c.dirty = false;
      c.draw();
    }
    if (runDirty) { runDirty = false; renderRun(); }
  }, REDRAW_MS);
  window.setInterval(() => { $("run-eta").textContent = eta(); }, 5000);
  window.setInterval(() => refreshQueue().catch(console.error), 5000);

  renderRun();
  connect();
  // Without a websocket (blocked by a proxy), still show the history.
  window.setTimeout(() => { if (!loaded) reload(); }, 3000);
})();

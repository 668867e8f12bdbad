/* The accelerators tab's savings estimate (GET /api/runs/<id>/savings/, runs.savings):
 * what APRIL (cutting the rollout tail) and async training (overlapping generation and
 * training) would save this synchronous run, with the assumptions it rests on. Loaded
 * with the page, again when the tab is opened or the share changes; a reply to an older
 * request is dropped. */
(function () {
  "use strict";

  const { count } = window.RollyardText;
  const config = JSON.parse(document.getElementById("run-config").textContent);
  const card = document.getElementById("savings");
  const empty = document.getElementById("savings-empty");
  const body = document.getElementById("savings-body");
  const share = document.getElementById("savings-share");
  let asked = 0;

  const seconds = (value) => `${value.toFixed(1)} s`;
  const percent = (value) => (value === null ? "—" : `${(100 * value).toFixed(1)}%`);
  const times = (value) => (value === null ? "—" : `×${value.toFixed(2)}`);

  function row(label, estimate, note) {
    const tr = document.createElement("tr");
    tr.dataset.estimate = label;
    const cells = estimate === null
      ? [label, "—", note, "—"]
      : [label, seconds(estimate.step_s), `${seconds(estimate.saved_s)} (${percent(estimate.saved_fraction)})`,
        times(estimate.speedup) + (note ? ` · ${note}` : "")];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  function show(state, text) {
    card.dataset.state = state;
    empty.hidden = state === "ready";
    body.hidden = state !== "ready";
    if (text) empty.textContent = text;
  }

  async function load() {
    const mine = ++asked;
    const url = `${config.savings_url}?share=${encodeURIComponent(share.value)}`;
    document.getElementById("savings-raw").href = url;
    let data;
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error(String(response.status));
      data = await response.json();
    } catch (error) {
      if (mine === asked) show("error", `Could not load the estimate (${error.message}).`);
      return;
    }
    if (mine !== asked) return;
    if (!data.applies) { show("not-applicable", `No estimate: ${data.reason}.`); return; }
    if (!data.steps) {
      show("empty", "No estimate yet: it needs steps that reported busy/idle spans and response-length percentiles.");
      return;
    }
    const m = data.measured;
    document.querySelector("#savings-table tbody").replaceChildren(
      row("measured (synchronous)", { step_s: m.step_s, saved_s: 0, saved_fraction: 0, speedup: 1 }, ""),
      row("APRIL (cut the tail)", data.april, data.april === null ? "the run uses APRIL already" : ""),
      row("async (overlap generation and training)", data.async,
        data.async.phase_speedup === null ? "" : `generation + training ×${data.async.phase_speedup.toFixed(2)} faster`),
    );
    document.getElementById("savings-measured").textContent =
      `Over ${count(data.steps, "step")}: ${seconds(m.gen_s)} generating, ${seconds(m.train_s)} training, ` +
      `${seconds(m.step_s)} in all (evaluation left out).`;
    document.getElementById("savings-assumptions").replaceChildren(...data.assumptions.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
    show("ready");
  }

  share.addEventListener("change", load);
  const tab = document.getElementById("tab-accelerators");
  if (tab) tab.addEventListener("click", load);
  load();
})();

/* Metric-threshold alert rules in the browser (runs.alerts, the REST endpoints of
 * runs/api/alerts.py).
 *
 * 1. Rollyard.ruleFields(): the fields of one rule (metric, above/below, threshold,
 *    consecutive steps, emails), shared by the run page's card and the launch form's
 *    alert-rules section (launch.js), with each field's problems shown at it.
 * 2. The run page's "Alert rules" card: whoever may change the run adds a rule
 *    (POST alert-rules/; a 400 is shown field by field) and deletes one (DELETE
 *    alert-rules/<id>/); a viewer sees the card without the controls. The tables and the
 *    open-alerts banner are drawn by the server at page load, then here: again from the
 *    REST API after a change and on every socket hello (a reconnect may have missed
 *    pushes), and from the socket's "alerts" pushes (an alert opened or resolved), which
 *    run.js passes on as "rollyard:run-message" events.
 */
(function () {
  "use strict";

  const R = window.Rollyard;
  const RULE_FIELDS = ["metric", "comparison", "threshold", "consecutive", "emails"];
  const HISTORY_ROWS = 10; // as many as the server renders

  // ------------------------------------------------------------ 1. one rule's fields
  // The names a rule may watch, offered once per page: `reported` (the run's own metric
  // names) first, then the documented ones (docs/metrics.md; a {placeholder} to fill in).
  function metricList(reported, documented) {
    let list = document.getElementById("alert-metric-names");
    if (list) return list.id;
    list = document.createElement("datalist");
    list.id = "alert-metric-names";
    for (const name of [...new Set([...reported.slice().sort(), ...documented])]) {
      const option = document.createElement("option");
      option.value = name;
      list.appendChild(option);
    }
    document.body.appendChild(list);
    return list.id;
  }

  function field(wrap, key, title, input) {
    const label = document.createElement("label");
    label.dataset.field = key;
    const name = document.createElement("span");
    name.className = "field-name";
    name.textContent = title;
    const error = document.createElement("small");
    error.className = "field-error";
    error.hidden = true;
    input.dataset.field = key;
    label.append(name, input, error);
    wrap.appendChild(label);
    return { input, error };
  }

  function textInput(type, attributes) {
    const input = document.createElement("input");
    input.type = type;
    Object.assign(input, attributes);
    return input;
  }

  /* The fields of one rule in a .form-grid. `metrics`: {reported: [...], documented: [...]}.
   * read() gives the rule as the API takes it; showProblems({field: [reasons]}, prefix)
   * puts each reason at its field (`prefix` + field, e.g. "alert_rules.0.") and returns
   * the reasons under `prefix` that no field of the rule holds (an unknown key). */
  function ruleFields(metrics) {
    const element = document.createElement("div");
    element.className = "form-grid rule-fields";
    const listId = metricList(metrics.reported, metrics.documented);
    const comparison = document.createElement("select");
    for (const [value, text] of [["below", "below (alert while lower)"], ["above", "above (alert while higher)"]]) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = text;
      comparison.appendChild(option);
    }
    const fields = {
      metric: field(element, "metric", "metric", textInput("text", { placeholder: "e.g. val/acc/mean@1", autocomplete: "off" })),
      comparison: field(element, "comparison", "when the metric is", comparison),
      threshold: field(element, "threshold", "threshold", textInput("number", { step: "any" })),
      consecutive: field(element, "consecutive", "for reported steps in a row", textInput("number", { min: 1, step: 1, value: 1 })),
      emails: field(element, "emails", "also mail (optional, comma-separated)", textInput("text", { placeholder: "lead@example.com" })),
    };
    fields.metric.input.setAttribute("list", listId);

    function read() {
      const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
      return {
        metric: fields.metric.input.value.trim(),
        comparison: fields.comparison.input.value,
        threshold: number(fields.threshold.input),
        consecutive: number(fields.consecutive.input) ?? 1,
        emails: fields.emails.input.value.split(/[,\s]+/).filter(Boolean),
      };
    }

    function fill(rule) {
      fields.metric.input.value = rule.metric ?? "";
      fields.comparison.input.value = rule.comparison === "above" ? "above" : "below";
      fields.threshold.input.value = rule.threshold ?? "";
      fields.consecutive.input.value = rule.consecutive ?? 1;
      fields.emails.input.value = (rule.emails || []).join(", ");
    }

    function showProblems(problems, prefix) {
      const rest = [];
      for (const key of RULE_FIELDS) {
        const reasons = problems[`${prefix}${key}`] || [];
        fields[key].error.hidden = reasons.length === 0;
        fields[key].error.textContent = reasons.join(" ");
        if (reasons.length) fields[key].input.setAttribute("aria-invalid", "true");
        else fields[key].input.removeAttribute("aria-invalid");
      }
      for (const [key, reasons] of Object.entries(problems)) {
        if (key.startsWith(prefix) && !RULE_FIELDS.some((name) => key === `${prefix}${name}`)) {
          rest.push(...reasons.map((reason) => `${key}: ${reason}`));
        }
      }
      return rest;
    }

    return { element, read, fill, showProblems };
  }

  R.ruleFields = ruleFields;

  // ------------------------------------------------------------ 2. the run page's card
  const card = document.getElementById("run-alert-rules");
  if (!card) return; // the launch form: launch.js uses ruleFields
  const config = JSON.parse(document.getElementById("run-config").textContent);
  const $ = (id) => document.getElementById(id);
  let rules = null; // from the REST API once loaded; the server's rows until then
  let alerts = null;

  const minute = (iso) => iso.slice(0, 16).replace("T", " "); // the API's times are UTC
  const clock = (iso) => iso.slice(11, 16);

  function cell(tr, content) {
    const td = document.createElement("td");
    if (content instanceof Node) td.appendChild(content);
    else td.textContent = content;
    tr.appendChild(td);
    return td;
  }

  function code(text) {
    const el = document.createElement("code");
    el.textContent = text;
    return el;
  }

  function emptyRow(tbody, columns, text) {
    const tr = document.createElement("tr");
    cell(tr, text).className = "empty";
    tr.firstChild.colSpan = columns;
    tbody.appendChild(tr);
  }

  function renderRules() {
    const tbody = $("run-alert-rule-table").querySelector("tbody");
    tbody.textContent = "";
    const columns = config.may_change_rules ? 7 : 6;
    if (!rules.length) { emptyRow(tbody, columns, "No alert rules on this run."); return; }
    for (const rule of rules) {
      const tr = document.createElement("tr");
      tr.dataset.rule = rule.id;
      cell(tr, code(rule.metric));
      cell(tr, `${rule.comparison} ${rule.threshold}`);
      cell(tr, `${rule.consecutive} step${rule.consecutive === 1 ? "" : "s"}`);
      cell(tr, rule.emails.join(", ") || "the owner");
      cell(tr, rule.checked_step ? `step ${rule.checked_step}` : "—");
      const state = cell(tr, "");
      tr.dataset.state = rule.open_alert ? "alerting" : "quiet";
      if (rule.open_alert) {
        const strong = document.createElement("strong");
        strong.textContent = "alerting";
        const open = alerts.find((alert) => alert.id === rule.open_alert);
        state.append(strong, open ? ` since ${clock(open.opened_at)}` : "");
      } else {
        state.textContent = "quiet";
      }
      if (config.may_change_rules) cell(tr, deleteButton(rule.id));
      tbody.appendChild(tr);
    }
  }

  function deleteButton(ruleId) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.dataset.deleteRule = ruleId;
    button.textContent = "delete";
    return button;
  }

  function renderAlerts() {
    const tbody = $("run-alert-history").querySelector("tbody");
    tbody.textContent = "";
    if (!alerts.length) emptyRow(tbody, 4, "No alerts so far.");
    for (const alert of alerts.slice(0, HISTORY_ROWS)) {
      const tr = document.createElement("tr");
      tr.dataset.kind = alert.kind;
      tr.dataset.alert = alert.id;
      for (const text of [minute(alert.opened_at), config.alert_kinds[alert.kind] || alert.kind, alert.message,
        alert.resolved_at ? clock(alert.resolved_at) : "open"]) cell(tr, text);
      tbody.appendChild(tr);
    }
    // The overview's banner: the alerts open now.
    const banner = $("run-alerts");
    const open = alerts.filter((alert) => !alert.resolved_at);
    banner.hidden = open.length === 0;
    banner.textContent = "";
    for (const alert of open) {
      const p = document.createElement("p");
      p.dataset.kind = alert.kind;
      const strong = document.createElement("strong");
      strong.textContent = config.alert_kinds[alert.kind] || alert.kind;
      p.append(strong, ` since ${minute(alert.opened_at)} UTC: ${alert.message}`);
      banner.appendChild(p);
    }
  }

  async function refresh() {
    [rules, alerts] = await Promise.all([R.getJSON(config.alert_rules_url), R.getJSON(config.alerts_url)]);
    renderRules();
    renderAlerts();
  }

  // An "alerts" push: each alert replaces its older copy (or is new), and a metric alert
  // sets its rule's state.
  function pushed(changed) {
    if (alerts === null) { refresh().catch(console.error); return; }
    for (const alert of changed) {
      const index = alerts.findIndex((known) => known.id === alert.id);
      if (index >= 0) alerts[index] = Object.assign({}, alerts[index], alert);
      else alerts.push(alert);
      const rule = rules.find((known) => known.id === alert.rule);
      if (rule && !alert.resolved_at) rule.open_alert = alert.id;
      else if (rule && rule.open_alert === alert.id) rule.open_alert = null;
    }
    alerts.sort((a, b) => (a.opened_at === b.opened_at ? b.id - a.id : a.opened_at < b.opened_at ? 1 : -1));
    renderRules();
    renderAlerts();
  }

  document.addEventListener("rollyard:run-message", (event) => {
    const message = event.detail;
    if (message.type === "hello") refresh().catch(console.error);
    else if (message.type === "alerts") pushed(message.alerts);
  });

  if (!config.may_change_rules) return;

  // ------------------------------------------------------------ adding and deleting
  const form = $("alert-rule-form");
  const editor = ruleFields({ reported: config.metric_names, documented: config.documented_metrics });
  form.prepend(editor.element);
  const formErrors = $("alert-rule-errors");

  function showFormErrors(lines) {
    formErrors.hidden = lines.length === 0;
    formErrors.textContent = lines.join(" ");
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("alert-rule-add");
    button.disabled = true;
    try {
      const answer = await R.postJSON(config.alert_rules_url, editor.read());
      if (answer.status === 201) {
        editor.fill({});
        editor.showProblems({}, "");
        showFormErrors([]);
        await refresh();
      } else {
        // A 400 names each bad field; a 403 (no longer allowed) only says why.
        const error = answer.body.error || {};
        const fields = error.fields || {};
        const unplaced = editor.showProblems(fields, "");
        showFormErrors(Object.keys(fields).length ? unplaced : [error.message || `answered ${answer.status}`]);
      }
    } finally {
      button.disabled = false;
    }
  });

  card.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-delete-rule]");
    if (!button) return;
    button.disabled = true;
    const response = await fetch(`${config.alert_rules_url}${button.dataset.deleteRule}/`, {
      method: "DELETE", credentials: "same-origin", headers: { Accept: "application/json", "X-CSRFToken": R.csrfToken() },
    });
    if (response.ok || response.status === 404) {
      showFormErrors([]);
    } else {
      const body = await response.json().catch(() => ({}));
      showFormErrors([(body.error && body.error.message) || `deleting rule #${button.dataset.deleteRule}: answered ${response.status}`]);
    }
    await refresh(); // a 404: someone deleted it already; the table shows what is left
  });
})();

/* The launch form, built from the engine's JSON schema (/api/spec/schema/ as rendered into
 * the page) and its registries' choices: no hand-written list of settings here.
 *
 * The spec being edited lives in `spec` (plain data). Form → spec → the YAML editor
 * (#spec, the advanced view, which is what the form submits); YAML edits → the validate
 * endpoint parses them → spec → form. Every change is validated by the server
 * (POST /api/spec/validate/, the launch's own checks, nothing stored) and its problems are
 * shown next to the field they name. A registry select that changes (algorithm,
 * curriculum, rollout strategy, orchestration) drops its section's other settings so the
 * new choice's defaults apply. The spec holds only what the user set; the form shows
 * every other setting's default as the server resolved it (greyed).
 */
(function () {
  "use strict";

  const R = window.Rollyard;
  const config = JSON.parse(document.getElementById("launch-config").textContent);
  const schema = config.schema;
  const textarea = document.getElementById("spec");
  const $ = (id) => document.getElementById(id);
  const VALIDATE_MS = 350;

  // Fields whose values come from a registry, by path: the choices' key.
  const REGISTRY = {
    "algorithm.name": "algorithm", "curriculum.strategy": "curriculum", "rollout.strategy": "rollout_strategy",
    "orchestration.mode": "orchestration", "backends.generation": "generation_backend",
    "backends.training": "training_backend",
  };
  const ESSENTIALS = ["name", "model.path", "dataset", "algorithm.name", "curriculum.strategy", "rollout.strategy",
    "orchestration.mode", "training.steps", "rollout.prompts_per_step", "rollout.n", "rollout.max_new_tokens",
    "training.eval_every", "training.lr"];

  let spec = {}; // what the user set (the YAML editor's content): the rest takes defaults
  let resolved = {}; // the last valid spec with every default, as the server resolved it
  const inputs = {}; // path → input element

  // ------------------------------------------------------------ schema reading
  function deref(node) {
    if (node && node.$ref) return schema.$defs[node.$ref.split("/").pop()];
    return node;
  }

  // A field's type, without the "or null" of an optional one.
  function fieldKind(node) {
    const options = node.anyOf ? node.anyOf.filter((o) => o.type !== "null") : [node];
    const nullable = !!node.anyOf && node.anyOf.some((o) => o.type === "null");
    const main = deref(options[0] || {});
    if (main.enum) return { kind: "enum", values: main.enum, nullable };
    if (main.type === "array" && ["integer", "number"].includes((main.items || {}).type)) return { kind: "numbers", nullable };
    return { kind: main.type || "string", nullable, minimum: main.minimum, maximum: main.maximum };
  }

  function sectionOf(name) {
    return deref(schema.properties[name]);
  }

  // ------------------------------------------------------------ spec data
  function get(data, path) {
    return path.split(".").reduce((node, key) => (node && typeof node === "object" ? node[key] : undefined), data);
  }

  function set(path, value) {
    const keys = path.split(".");
    let node = spec;
    for (const key of keys.slice(0, -1)) {
      if (!node[key] || typeof node[key] !== "object") node[key] = {};
      node = node[key];
    }
    node[keys[keys.length - 1]] = value;
  }

  // ------------------------------------------------------------ YAML out (the advanced view)
  const PLAIN = /^[A-Za-z_][A-Za-z0-9_\-./]*$/;
  const RESERVED = /^(true|false|null|yes|no|on|off|y|n|~)$/i;

  function scalar(value) {
    if (value === null || value === undefined) return "null";
    if (typeof value === "string") return PLAIN.test(value) && !RESERVED.test(value) ? value : JSON.stringify(value);
    if (Array.isArray(value) || typeof value === "object") return JSON.stringify(value); // JSON is YAML's flow style
    const text = String(value);
    // YAML 1.1 (PyYAML) reads 1e-7 as a string: a float needs its dot.
    return typeof value === "number" && /e/.test(text) && !/\./.test(text) ? text.replace("e", ".0e") : text;
  }

  function toYAML(data, indent) {
    const pad = "  ".repeat(indent || 0);
    return Object.entries(data).map(([key, value]) => {
      if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
        return `${pad}${key}:\n${toYAML(value, (indent || 0) + 1)}`;
      }
      return `${pad}${key}: ${scalar(value)}`;
    }).join("\n");
  }

  // ------------------------------------------------------------ building the form
  function label(text, help) {
    const el = document.createElement("label");
    const title = document.createElement("span");
    title.className = "field-name";
    title.textContent = text;
    el.appendChild(title);
    if (help) {
      const small = document.createElement("small");
      small.className = "help";
      small.textContent = help;
      el.appendChild(small);
    }
    return el;
  }

  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text || value;
    select.appendChild(o);
  }

  function fieldFor(path, node) {
    const { kind, values, nullable, minimum, maximum } = fieldKind(node);
    const help = [node.description, node.default !== undefined && node.default !== null ? `default ${scalar(node.default)}` : nullable ? "unset by default" : ""]
      .filter(Boolean).join(" · ");
    const wrap = label(path, help);
    wrap.dataset.path = path;
    let input;
    if (REGISTRY[path] || kind === "enum") {
      input = document.createElement("select");
      if (nullable) option(input, "", "(default)");
      const names = REGISTRY[path] ? config.choices[REGISTRY[path]].map((c) => c.name) : values;
      for (const name of names) {
        const choice = REGISTRY[path] && config.choices[REGISTRY[path]].find((c) => c.name === name);
        option(input, name, choice && choice.description ? `${name} — ${choice.description}` : name);
      }
    } else if (kind === "boolean") {
      input = document.createElement("input");
      input.type = "checkbox";
    } else {
      input = document.createElement("input");
      if (kind === "integer" || kind === "number") {
        input.type = "number";
        input.step = kind === "integer" ? "1" : "any";
        if (minimum !== undefined) input.min = minimum;
        if (maximum !== undefined) input.max = maximum;
      }
      if (path === "model.path") {
        input.setAttribute("list", "model-choices");
      }
      if (nullable) input.placeholder = "(default)";
    }
    input.id = `field-${path.replace(/\./g, "-")}`;
    input.name = ""; // the form submits the YAML editor, not these
    input.dataset.path = path;
    input.dataset.kind = kind;
    input.addEventListener(input.tagName === "SELECT" || input.type === "checkbox" ? "change" : "input", () => edited(path, input));
    const error = document.createElement("small");
    error.className = "field-error";
    error.id = `${input.id}-error`;
    error.hidden = true;
    wrap.append(input, error);
    inputs[path] = input;
    return wrap;
  }

  function datasetPicker() {
    const wrap = label("dataset", "a built-in task or a dataset of your teams' catalog");
    const select = document.createElement("select");
    select.id = "field-dataset";
    for (const d of config.choices.dataset) option(select, `builtin:${d.name}`, `${d.name} (built-in)`);
    for (const reference of config.catalog_datasets) option(select, `catalog:${reference}`, `${reference} (catalog)`);
    option(select, "path", "a file path (set dataset.path below)");
    select.addEventListener("change", () => {
      const [kind, value] = [select.value.split(":")[0], select.value.split(":").slice(1).join(":")];
      const section = Object.assign({}, spec.dataset || {});
      delete section.catalog;
      if (kind === "builtin") { section.name = value; section.path = null; }
      if (kind === "catalog") { section.catalog = value; delete section.path; delete section.name; }
      spec.dataset = section;
      changed();
    });
    const error = document.createElement("small");
    error.className = "field-error";
    error.id = "field-dataset-error";
    error.hidden = true;
    wrap.append(select, error);
    wrap.dataset.path = "dataset";
    inputs.dataset = select;
    return wrap;
  }

  function build() {
    const list = document.createElement("datalist");
    list.id = "model-choices";
    for (const m of config.choices.model) option(list, m.name);
    document.body.appendChild(list);

    const essentials = $("form-essentials");
    const sections = $("form-sections");
    const nameNode = schema.properties.name || { type: "string", description: "the run's name" };
    for (const path of ESSENTIALS) {
      if (path === "dataset") { essentials.appendChild(datasetPicker()); continue; }
      const [section, key] = path.includes(".") ? path.split(".") : [null, path];
      const node = section ? sectionOf(section).properties[key] : nameNode;
      essentials.appendChild(fieldFor(path, node));
    }
    // Every other scalar setting, by section, with its default and help text.
    for (const [name, node] of Object.entries(schema.properties)) {
      const section = deref(node);
      if (!section || !section.properties) continue;
      const details = document.createElement("details");
      details.className = "spec-section";
      details.dataset.section = name;
      const summary = document.createElement("summary");
      summary.textContent = name;
      details.appendChild(summary);
      const grid = document.createElement("div");
      grid.className = "form-grid";
      for (const [key, field] of Object.entries(section.properties)) {
        const path = `${name}.${key}`;
        if (ESSENTIALS.includes(path) || inputs[path]) continue;
        const { kind } = fieldKind(field);
        if (!["integer", "number", "string", "boolean", "enum", "numbers"].includes(kind)) continue; // nested: the YAML view
        grid.appendChild(fieldFor(path, field));
      }
      if (grid.children.length) { details.appendChild(grid); sections.appendChild(details); }
    }
  }

  // ------------------------------------------------------------ spec ⇄ form
  function fill() {
    for (const [path, input] of Object.entries(inputs)) {
      if (path === "dataset") {
        const d = Object.assign({}, resolved.dataset, spec.dataset);
        input.value = d.catalog ? `catalog:${d.catalog}` : d.path ? "path" : `builtin:${d.name}`;
        continue;
      }
      if (document.activeElement === input) continue; // never rewrite what the user is typing
      const own = get(spec, path);
      const value = own === undefined ? get(resolved, path) : own;
      input.classList.toggle("is-default", own === undefined);
      if (input.type === "checkbox") input.checked = !!value;
      else if (input.dataset.kind === "numbers") input.value = Array.isArray(value) ? value.join(", ") : "";
      else input.value = value === null || value === undefined ? "" : value;
    }
  }

  function valueOf(input) {
    const kind = input.dataset.kind;
    if (input.type === "checkbox") return input.checked;
    const text = input.value.trim();
    if (text === "") return null;
    if (kind === "integer" || kind === "number") return Number(text);
    if (kind === "numbers") return text.split(/[,\s]+/).filter(Boolean).map(Number);
    return input.value;
  }

  function edited(path, input) {
    set(path, valueOf(input));
    if (REGISTRY[path]) {
      // A new choice: its section's other settings fall back to that choice's defaults.
      const [section, key] = path.split(".");
      spec[section] = { [key]: spec[section][key] };
    }
    changed();
  }

  function changed() {
    writeYAML();
    schedule({ spec });
  }

  function writeYAML() {
    textarea.value = `${YAML_HEAD}${toYAML(spec)}\n`;
  }
  const YAML_HEAD = "# What you set; every other setting takes the engine's default (shown in the form).\n";

  // ------------------------------------------------------------ validation
  let timer = null;
  let asked = 0;
  function schedule(body) {
    window.clearTimeout(timer);
    asked++; // an answer still on its way is about the spec before this edit: drop it, or it would undo the edit
    showPending();
    timer = window.setTimeout(() => validate(body).catch(console.error), VALIDATE_MS);
  }

  function showPending() {
    $("validation-state").dataset.state = "pending";
    $("validation-state").textContent = "checking…";
  }

  async function validate(body) {
    const mine = ++asked;
    showPending();
    const team = $("team") ? $("team").value : null;
    // No pool listed yet (none made, as on a fresh install): leave it to the server's default,
    // which the launch creates, rather than send a blank name.
    const pool = $("pool").value || undefined;
    const answer = await R.postJSON(config.validate_url, Object.assign({ pool, team }, body));
    if (mine !== asked) return; // a later edit's answer will come
    let problems = {};
    if (answer.status === 200) {
      problems = answer.body.problems;
      // spec null: the text holds no spec (not YAML, not a mapping); the form keeps the last one.
      if (answer.body.spec !== null) {
        spec = answer.body.spec;
        if (answer.body.resolved) resolved = answer.body.resolved;
        fill();
      }
    } else {
      problems = (answer.body.error && answer.body.error.fields) || { spec: [answer.body.error ? answer.body.error.message : "invalid"] };
    }
    showProblems(problems);
  }

  function showProblems(problems) {
    for (const el of document.querySelectorAll(".field-error")) { el.hidden = true; el.textContent = ""; }
    for (const input of Object.values(inputs)) input.removeAttribute("aria-invalid");
    // YAML that does not parse: the validate endpoint names it "text" (its body's key), the
    // launch "spec" (the editor's name); shown as "spec", at the editor, opened.
    if (problems.text) {
      problems = Object.assign({ spec: problems.text }, problems);
      delete problems.text;
    }
    if (problems.spec) {
      textarea.setAttribute("aria-invalid", "true");
      $("yaml-advanced").open = true;
    } else {
      textarea.removeAttribute("aria-invalid");
    }
    const unplaced = [];
    for (const [field, reasons] of Object.entries(problems)) {
      // The field itself, else its nearest parent shown in the form (dataset.catalog → dataset).
      let path = field;
      while (path && !inputs[path]) path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
      if (path) {
        const error = $(`${inputs[path].id}-error`);
        error.hidden = false;
        error.textContent = (error.textContent ? error.textContent + " " : "") + (path === field ? "" : `${field}: `) + reasons.join(" ");
        inputs[path].setAttribute("aria-invalid", "true");
        inputs[path].closest("details")?.setAttribute("open", "");
      }
      unplaced.push([field, reasons]);
    }
    const box = $("live-errors");
    box.hidden = unplaced.length === 0;
    box.querySelector("ul").textContent = "";
    for (const [field, reasons] of unplaced) {
      const li = document.createElement("li");
      li.dataset.field = field;
      const code = document.createElement("code");
      code.textContent = field;
      li.append(code, document.createTextNode(` — ${reasons.join(" ")}`));
      box.querySelector("ul").appendChild(li);
    }
    const n = unplaced.length;
    $("validation-state").dataset.state = n ? "invalid" : "valid";
    $("validation-state").textContent = n ? `${n} problem${n > 1 ? "s" : ""}` : "valid: ready to launch";
    $("launch-button").disabled = false; // the server decides at launch as well
  }

  // ------------------------------------------------------------ alert rules
  // Rows of alerts.js's rule fields, sent beside the spec as the form's hidden
  // `alert_rules` (JSON). They start from that field: a clone's rules, or what a refused
  // launch sent, whose problems (alert_rules.<i>.<field>) are shown at each rule's field
  // and listed with the spec's at the top.
  const ruleRows = [];
  const rulesInput = $("launch-alert-rules-json");

  function addRuleRow(rule) {
    const editor = R.ruleFields({ reported: [], documented: config.documented_metrics });
    if (rule) editor.fill(rule);
    const row = document.createElement("div");
    row.className = "rule-row";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link-button";
    remove.textContent = "remove this rule";
    const entry = { editor, row };
    remove.addEventListener("click", () => { ruleRows.splice(ruleRows.indexOf(entry), 1); row.remove(); });
    row.append(editor.element, remove);
    $("launch-rule-list").appendChild(row);
    ruleRows.push(entry);
  }

  function startRules() {
    let saved = [];
    try { saved = JSON.parse(rulesInput.value || "[]"); } catch (error) { /* listed at the top as alert_rules */ }
    if (Array.isArray(saved)) saved.forEach((rule) => addRuleRow(rule && typeof rule === "object" ? rule : {}));
    const problems = {};
    for (const [field, reason] of config.rule_problems) (problems[field] = problems[field] || []).push(reason);
    ruleRows.forEach((entry, index) => entry.editor.showProblems(problems, `alert_rules.${index}.`));
  }

  $("launch-rule-add").addEventListener("click", () => addRuleRow(null));
  $("launch-form").addEventListener("submit", () => {
    rulesInput.value = JSON.stringify(ruleRows.map((entry) => entry.editor.read()));
  });

  textarea.addEventListener("input", () => schedule({ text: textarea.value }));
  $("pool").addEventListener("change", () => schedule({ spec }));
  if ($("team")) $("team").addEventListener("change", () => schedule({ spec }));

  build();
  startRules();
  if (config.fresh) {
    // A new run starts from nothing set: the form shows the defaults the server resolves.
    writeYAML();
    validate({ spec: {} }).catch(console.error);
  } else {
    // A clone's spec, or what a refused launch sent, is the start.
    validate({ text: textarea.value }).catch(console.error);
  }
})();

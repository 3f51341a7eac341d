// #/new: create a rollout from a form. The strategy's fields, their defaults and their
// meanings come from the API's own document (the Strategy schema of
// /api/v1/openapi.json, written from the one table of the keys, STRATEGY_TABLE), so the
// form cannot drift from the API. The server validates: "Preview plan" sends the form to
// POST /api/v1/rollouts/plan (which writes nothing) and shows the waves and appliances, or
// each refusal next to its field; "Create rollout" is offered once the preview matches the
// form, and creates it (DRAFT) with POST /api/v1/rollouts.

import { api, ApiError, randomKey } from "./api.js";
import { h, plural, replace, uid } from "./dom.js";
import { loading, problemBox } from "./widgets.js";

// shown first; the others are under "More settings"
const MAIN_KEYS = ["waves", "max_concurrency", "per_site_concurrency", "max_failures", "approval", "order"];

let schemaCache = null;

async function strategySchema() {
  if (schemaCache === null) {
    const doc = await api("/api/v1/openapi.json");
    schemaCache = doc.components.schemas.Strategy.properties;
  }
  return schemaCache;
}

// ------------------------------------------------------------------ kinds of fields
function kindOf(prop) {
  const branches = prop.anyOf || [prop];
  const main = branches.find((b) => b.type !== "null") || prop;
  const nullable = branches.some((b) => b.type === "null");
  if (main.enum) return { kind: "choice", choices: main.enum, nullable };
  if (main.type === "boolean") return { kind: "bool", nullable };
  if (main.type === "array") {
    const items = main.items || {};
    return { kind: items.oneOf ? "sizes" : "words", nullable };
  }
  if (main.oneOf) return { kind: "size", nullable };
  if (main.type === "integer") return { kind: "int", nullable };
  if (main.type === "number") return { kind: "number", nullable };
  return { kind: "text", nullable };
}

function shown(value) {
  if (Array.isArray(value)) return value.join(", ");
  if (value === null || value === undefined) return "";
  return String(value);
}

const INTEGER = /^-?[0-9]+$/;
const NUMBER = /^-?[0-9]+(\.[0-9]+)?$/;

/** The JSON value of a field as typed; undefined: leave the key out (its default). A value
 * that is not what the key takes is sent as typed, for the server to refuse by name. */
function valueOf(kind, input) {
  if (kind.kind === "bool") return input.checked;
  const text = input.value.trim();
  if (kind.kind === "choice") return text === "" ? undefined : text;
  if (text === "") return undefined;
  if (kind.kind === "sizes" || kind.kind === "words") {
    return text.split(",").map((s) => s.trim()).filter(Boolean)
      .map((s) => (kind.kind === "sizes" && INTEGER.test(s) ? Number(s) : s));
  }
  if (kind.kind === "size") return INTEGER.test(text) ? Number(text) : text;
  if (kind.kind === "int") return INTEGER.test(text) ? Number(text) : text;
  if (kind.kind === "number") return NUMBER.test(text) ? Number(text) : text;
  return text;
}

function words(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** datetime-local (the browser's local time) as RFC 3339 with this browser's offset. */
function withOffset(local) {
  if (!local) return undefined;
  const date = new Date(local);
  if (Number.isNaN(date.getTime())) return local;
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  const hh = String(Math.floor(Math.abs(offset) / 60)).padStart(2, "0");
  const mm = String(Math.abs(offset) % 60).padStart(2, "0");
  const seconds = local.length === 16 ? ":00" : "";
  return `${local}${seconds}${sign}${hh}:${mm}`;
}

// ------------------------------------------------------------------ the page
export function createPage(view) {
  let disposed = false;
  view.replaceChildren(h("h1", {}, "New rollout"), loading());
  Promise.all([strategySchema(), api("/api/v1/sites")]).then(([props, sites]) => {
    if (!disposed) build(view, props, sites.items);
  }, (exc) => {
    if (!disposed) view.replaceChildren(h("h1", {}, "New rollout"), problemBox(exc, "Could not load"));
  });
  return { dispose() { disposed = true; } };
}

function build(view, props, sites) {
  const fields = new Map(); // "strategy.waves" -> {input, error, kind}
  let previewedBody = null; // the body the shown preview is for
  let idempotencyKey = randomKey();

  function field(path, label, input, { help, kind } = {}) {
    const error = h("p", { class: "field-error", id: uid("err"), hidden: true });
    const helpEl = help ? h("p", { class: "help", id: uid("help") }, help) : null;
    input.id = input.id || uid("f");
    input.setAttribute("aria-describedby", [helpEl?.id, error.id].filter(Boolean).join(" "));
    fields.set(path, { input, error, kind });
    const isCheck = input.type === "checkbox";
    return h("div", { class: `field${isCheck ? " field-check" : ""}`, dataset: { field: path } },
      isCheck ? [input, h("label", { for: input.id }, label)] : [h("label", { for: input.id }, label), input],
      helpEl, error);
  }

  // -------------------------------------------------------------- what and where
  const name = h("input", { type: "text", required: true, autocomplete: "off", maxlength: "200" });
  const version = h("input", { type: "text", required: true, autocomplete: "off", placeholder: "9.0.1-20020", spellcheck: "false" });
  const scheduleAt = h("input", { type: "datetime-local", step: "60" });
  const siteBoxes = sites.map((s) => h("input", { type: "checkbox", value: s.name, id: uid("site") }));
  const siteSet = h("fieldset", { class: "field", dataset: { field: "selector.sites" } },
    h("legend", {}, "Sites"),
    sites.length ? h("div", { class: "checks" }, siteBoxes.map((box, i) =>
      h("span", { class: "check" }, box, h("label", { for: box.id }, `${sites[i].name} (${plural(sites[i].appliances, "appliance")})`))))
      : h("p", { class: "muted" }, "The inventory is empty: import appliances first (orchestrator appliances import)."),
    h("p", { class: "help" }, "None ticked: every site."));
  const siteError = h("p", { class: "field-error", hidden: true });
  siteSet.appendChild(siteError);
  fields.set("selector.sites", { input: siteBoxes[0] || siteSet, error: siteError, kind: null });
  const tags = h("input", { type: "text", autocomplete: "off", placeholder: "prod, dr" });
  const names = h("textarea", { rows: "2", autocomplete: "off", spellcheck: "false", placeholder: "vr-ams-01 vr-ams-02" });
  const currentVersions = h("input", { type: "text", autocomplete: "off", placeholder: "8.8.0-100" });

  // -------------------------------------------------------------- strategy, from the document
  const strategyInputs = [];
  function strategyField(key) {
    const prop = props[key];
    const kind = kindOf(prop);
    let input;
    if (kind.kind === "choice") {
      input = h("select", {},
        kind.nullable ? h("option", { value: "", selected: prop.default === null }, "(unset: automatic)") : null,
        kind.choices.map((c) => h("option", { value: c, selected: c === prop.default }, c)));
    } else if (kind.kind === "bool") {
      input = h("input", { type: "checkbox", checked: prop.default === true });
    } else {
      input = h("input", {
        type: "text", value: shown(prop.default), autocomplete: "off", spellcheck: "false",
        inputmode: kind.kind === "int" ? "numeric" : kind.kind === "number" ? "decimal" : null,
        placeholder: kind.nullable ? "none" : null,
      });
    }
    strategyInputs.push([key, kind, input, prop.default]);
    const defaultText = prop.default === null ? "unset" : JSON.stringify(prop.default);
    return field(`strategy.${key}`, key, input, {
      kind,
      help: `${prop.description || ""} (default ${defaultText})`.replaceAll("`", ""),
    });
  }
  const mainKeys = MAIN_KEYS.filter((k) => k in props);
  const otherKeys = Object.keys(props).filter((k) => !mainKeys.includes(k));

  const formNotice = h("div", { class: "form-notice", "aria-live": "polite" });
  const preview = h("section", { class: "card preview", "aria-labelledby": "preview-title", hidden: true });
  const previewButton = h("button", { type: "submit", class: "button" }, "Preview plan");
  const createButton = h("button", { type: "button", class: "button", disabled: true }, "Create rollout");
  const createHint = h("p", { class: "help", id: "create-hint" }, "Preview the plan first: the rollout is created as it is previewed.");
  createButton.setAttribute("aria-describedby", "create-hint");

  const form = h("form", { class: "create-form", novalidate: true },
    h("section", { class: "card" },
      h("h2", {}, "What"),
      field("name", "Name", name, { help: "A name people will recognise." }),
      field("target_version", "Target version", version, { help: "The version to install." }),
      field("schedule_at", "Start no earlier than (optional)", scheduleAt, { help: "Your browser's local time. Empty: when you start it." })),
    h("section", { class: "card" },
      h("h2", {}, "Which appliances"),
      h("p", { class: "help" }, "All the conditions together (AND); any of the values within one (OR). Nothing given: every enabled appliance."),
      siteSet,
      field("selector.tags", "Tags (comma-separated)", tags),
      field("selector.names", "Appliance names", names, { help: "Separated by spaces, commas or lines." }),
      field("selector.current_versions", "Current versions (comma-separated)", currentVersions)),
    h("section", { class: "card" },
      h("h2", {}, "Strategy"),
      h("p", { class: "help" }, "The API's defaults are filled in."),
      h("div", { class: "strategy-grid" }, mainKeys.map(strategyField)),
      h("details", { class: "more" },
        h("summary", {}, "More settings"),
        h("div", { class: "strategy-grid" }, otherKeys.map(strategyField)))),
    formNotice,
    preview,
    h("div", { class: "form-actions" }, previewButton, createButton),
    createHint);

  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/rollouts" }, "Rollouts"), " / new"),
    h("h1", {}, "New rollout"),
    form);

  // -------------------------------------------------------------- the request
  function body() {
    const selector = {};
    const chosenSites = siteBoxes.filter((b) => b.checked).map((b) => b.value);
    if (chosenSites.length) selector.sites = chosenSites;
    const tagList = tags.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (tagList.length) selector.tags = tagList;
    const nameList = words(names.value);
    if (nameList.length) selector.names = nameList;
    const versions = currentVersions.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (versions.length) selector.current_versions = versions;
    const strategy = {};
    for (const [key, kind, input, fallback] of strategyInputs) {
      const value = valueOf(kind, input);
      if (value === undefined) continue;
      if (JSON.stringify(value) === JSON.stringify(fallback)) continue; // the default
      strategy[key] = value;
    }
    const out = { target_version: version.value.trim(), selector, strategy };
    return out;
  }

  function createBody(plan) {
    const out = { name: name.value.trim(), ...plan };
    const at = withOffset(scheduleAt.value);
    if (at) out.schedule_at = at;
    return out;
  }

  function clearErrors() {
    for (const { input, error } of fields.values()) {
      error.hidden = true;
      error.textContent = "";
      input.removeAttribute("aria-invalid");
    }
    replace(formNotice);
  }

  /** Each field error next to its field ("body.strategy.waves[1]" -> strategy.waves). */
  function showErrors(exc, heading) {
    let first = null;
    for (const err of exc.fieldErrors) {
      let path = String(err.field || "").replace(/^body\.?/, "").replace(/\[[0-9]+\]/g, "");
      while (path && !fields.has(path)) path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
      const target = fields.get(path);
      if (!target) continue;
      target.error.hidden = false;
      target.error.textContent = target.error.textContent ? `${target.error.textContent}; ${err.message}` : err.message;
      if (target.input.setAttribute) target.input.setAttribute("aria-invalid", "true");
      if (first === null) first = target;
    }
    replace(formNotice, problemBox(exc, heading));
    if (first !== null) {
      const details = first.input.closest?.("details");
      if (details) details.open = true;
      first.input.focus?.();
    }
  }

  function stale() {
    if (previewedBody === null || JSON.stringify(body()) === previewedBody) return;
    previewedBody = null;
    createButton.disabled = true;
    preview.classList.add("stale");
    createHint.textContent = "The form changed since the preview: preview it again.";
  }
  form.addEventListener("input", stale);
  form.addEventListener("change", stale);

  async function onPreview(event) {
    event.preventDefault();
    clearErrors();
    const plan = body();
    if (!plan.target_version) {
      showErrors(new ApiError(0, { detail: "body.target_version: give the version to install", errors: [{ field: "body.target_version", message: "give the version to install" }] }), "Missing");
      return;
    }
    previewButton.disabled = true;
    replace(formNotice, loading("Planning…"));
    try {
      const result = await api("/api/v1/rollouts/plan", { method: "POST", body: plan });
      renderPreview(result);
      previewedBody = JSON.stringify(plan);
      idempotencyKey = randomKey();
      createButton.disabled = false;
      createHint.textContent = `Creates the rollout (DRAFT) as previewed: ${plural(result.targeted, "appliance")} in ${plural(result.waves.length, "wave")}. Start it from its page.`;
      replace(formNotice);
      preview.hidden = false;
      preview.querySelector("h2").focus();
    } catch (exc) {
      preview.hidden = true;
      showErrors(exc, "Cannot plan");
    } finally {
      previewButton.disabled = false;
    }
  }

  function renderPreview(plan) {
    preview.classList.remove("stale");
    replace(preview,
      h("h2", { id: "preview-title", tabindex: "-1" }, "Plan preview"),
      h("p", {}, `${plural(plan.targeted, "appliance")} to ${plan.target_version}, in ${plural(plan.waves.length, "wave")}.`),
      h("ol", { class: "plan-waves", id: "plan-waves" }, plan.waves.map((w) =>
        h("li", { class: "plan-wave" },
          h("details", { open: plan.waves.length <= 3 && w.size <= 30 },
            h("summary", {},
              h("strong", {}, `Wave ${w.number}`), ` · ${plural(w.size, "appliance")} · ${plural(w.sites.length, "site")}`,
              w.requires_approval ? h("span", { class: "tag" }, "then waits for approval") : null),
            h("p", { class: "muted" }, `Sites: ${w.sites.join(", ")}`),
            h("ul", { class: "appliance-names inline-list" }, w.appliances.map((a) => h("li", {}, a))))))));
  }

  async function onCreate() {
    if (previewedBody === null) return;
    clearErrors();
    const plan = JSON.parse(previewedBody);
    if (!name.value.trim()) {
      showErrors(new ApiError(0, { detail: "body.name: give the rollout a name", errors: [{ field: "body.name", message: "give the rollout a name" }] }), "Missing");
      return;
    }
    createButton.disabled = true;
    replace(formNotice, loading("Creating…"));
    try {
      const created = await api("/api/v1/rollouts", {
        method: "POST", body: createBody(plan), headers: { "Idempotency-Key": idempotencyKey },
      });
      location.hash = `#/rollouts/${created.id}`;
    } catch (exc) {
      createButton.disabled = false;
      showErrors(exc, "Not created");
    }
  }

  form.addEventListener("submit", onPreview);
  createButton.addEventListener("click", onCreate);
  name.focus();
}

// #/appliances, #/windows and #/audit: the inventory with each appliance's last task, the
// maintenance windows with their next openings, and the audit log (admins).

import { api, query } from "./api.js";
import { duration, h, relative, replace, time, uid } from "./dom.js";
import { loading, pagedList, problemBox, stateBadge, table } from "./widgets.js";

async function siteNames() {
  try {
    return (await api("/api/v1/sites")).items.map((s) => s.name);
  } catch {
    return [];
  }
}

function labelled(label, input) {
  input.id = input.id || uid("f");
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input);
}

// ------------------------------------------------------------------ appliances
const applianceFilters = { site: "", tag: "", version: "" };

function lastTask(a) {
  const t = a.last_task;
  if (!t) return h("span", { class: "muted" }, "none");
  const rolloutId = t.rollout_id ?? t.rollout;
  return h("span", { class: "last-task" },
    stateBadge(t.state), " ",
    Number.isInteger(rolloutId) ? h("a", { href: `#/rollouts/${rolloutId}` }, `rollout #${rolloutId}`) : null,
    t.target_version ? h("span", { class: "muted" }, ` to ${t.target_version}`) : null,
    t.error_code ? h("span", { class: "block" }, h("code", { class: "error-code" }, t.error_code)) : null,
    t.finished_at ? h("span", { class: "muted block" }, time(t.finished_at)) : null);
}

export function appliancesPage(view) {
  const site = h("select", {}, h("option", { value: "" }, "All sites"));
  const tag = h("input", { type: "text", value: applianceFilters.tag, autocomplete: "off" });
  const version = h("input", { type: "text", value: applianceFilters.version, autocomplete: "off", spellcheck: "false" });
  const list = h("div", {});
  const form = h("form", { class: "filters", novalidate: true },
    labelled("Site", site), labelled("Tag", tag), labelled("Current version", version),
    h("div", { class: "field field-button" }, h("button", { type: "submit", class: "button" }, "Filter")));
  view.replaceChildren(h("h1", {}, "Appliances"), form, list);
  siteNames().then((names) => {
    for (const n of names) site.appendChild(h("option", { value: n, selected: n === applianceFilters.site }, n));
  });

  const columns = [
    { label: "Name", cell: (a) => h("span", { class: "name" }, a.name) },
    { label: "Site", cell: (a) => a.site },
    { label: "Tags", cell: (a) => (a.tags.length ? a.tags.join(", ") : h("span", { class: "muted" }, "—")) },
    { label: "Version", cell: (a) => (a.current_version ? h("code", {}, a.current_version) : h("span", { class: "muted" }, "unknown")) },
    { label: "Enabled", cell: (a) => (a.enabled ? "yes" : h("span", { class: "warn-text" }, "no (disabled)")) },
    { label: "Last seen", cell: (a) => time(a.last_seen_at) },
    { label: "Last task", cell: lastTask },
  ];
  function load() {
    const params = { site: applianceFilters.site, tag: applianceFilters.tag, version: applianceFilters.version, limit: 100 };
    return pagedList(list,
      (cursor) => api(`/api/v1/appliances${query({ ...params, cursor })}`),
      (items) => table(columns, items, { caption: "Appliances", empty: "No appliance matches." }));
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applianceFilters.site = site.value;
    applianceFilters.tag = tag.value.trim();
    applianceFilters.version = version.value.trim();
    load();
  });
  load();
  return { dispose() {} };
}

// ------------------------------------------------------------------ windows
/** An opening on the window's own wall clock ("2026-11-30 22:00–02:00 Europe/Amsterdam"),
 * and how far off it is; the UTC times in the tooltip. */
function openingItem(o) {
  return h("li", {},
    h("span", { title: `${o.opens} – ${o.closes} (UTC)` },
      `${o.opens_local.slice(0, 16).replace("T", " ")}–${o.closes_local.slice(11, 16)} ${o.timezone}`),
    h("span", { class: "muted" }, ` · ${relative(o.opens)}`));
}

export function windowsPage(view) {
  const list = h("div", {}, loading());
  const site = h("select", {}, h("option", { value: "" }, "Choose a site"));
  const tag = h("input", { type: "text", autocomplete: "off" });
  const answer = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "filters", novalidate: true },
    labelled("Site", site), labelled("Tag (optional)", tag),
    h("div", { class: "field field-button" }, h("button", { type: "submit", class: "button" }, "Show next openings")));
  view.replaceChildren(
    h("h1", {}, "Maintenance windows"),
    h("p", { class: "help" }, "A rollout bound to windows starts installs on an appliance only while one of its windows is open with at least the cutoff left."),
    list,
    h("section", { class: "card" }, h("h2", {}, "Next openings for a site"), form, answer));
  siteNames().then((names) => names.forEach((n) => site.appendChild(h("option", { value: n }, n))));

  api("/api/v1/maintenance-windows").then((data) => {
    replace(list, table([
      { label: "Window", cell: (w) => h("span", { class: "name" }, w.name) },
      { label: "When", cell: (w) => h("span", {}, h("code", {}, w.cron), ` for ${duration(w.duration)}`, w.cutoff ? h("span", { class: "muted" }, ` (cutoff ${duration(w.cutoff)})`) : null) },
      { label: "Zone", cell: (w) => w.timezone },
      { label: "Covers", cell: (w) => [...w.sites.map((s) => `site ${s}`), ...w.tags.map((t) => `tag ${t}`)].join(", ") },
      { label: "Next openings", cell: (w) => (w.next.length ? h("ul", { class: "openings" }, w.next.map(openingItem)) : h("span", { class: "muted" }, "none")) },
    ], data.items, { caption: "Maintenance windows", empty: "No maintenance window: installs may start at any time." }));
  }, (exc) => replace(list, problemBox(exc, "Could not load")));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!site.value) {
      replace(answer, h("p", { class: "field-error", role: "alert" }, "Choose a site."));
      return;
    }
    replace(answer, loading());
    try {
      const data = await api(`/api/v1/maintenance-windows:next${query({ site: site.value, tag: tag.value.trim(), count: 5 })}`);
      replace(answer, data.covered
        ? h("ol", { class: "openings" }, data.items.map((o) => h("li", {}, h("strong", {}, o.window), " ", openingItem(o))))
        : h("p", {}, `No window covers ${data.site}: its appliances are not restricted.`));
    } catch (exc) {
      replace(answer, problemBox(exc, "Refused"));
    }
  });
  return { dispose() {} };
}

// ------------------------------------------------------------------ audit
export function auditPage(view) {
  const list = h("div", {});
  view.replaceChildren(h("h1", {}, "Audit log"),
    h("p", { class: "help" }, "Every change, newest first, with who made it and through what (cli, api, engine, schedule)."),
    list);
  pagedList(list,
    (cursor) => api(`/api/v1/audit${query({ limit: 100, cursor })}`),
    (items) => table([
      { label: "When", cell: (e) => time(e.at) },
      { label: "Who", cell: (e) => h("span", {}, e.actor, h("span", { class: "muted" }, ` via ${e.via}`)) },
      { label: "Action", cell: (e) => h("code", {}, e.action) },
      { label: "Target", cell: (e) => `${e.target_type}${e.target_id ? ` ${e.target_id}` : ""}` },
      { label: "Detail", class: "col-detail", cell: (e) => h("span", { class: "detail-json" }, JSON.stringify(e.detail)) },
    ], items, { caption: "Audit log", empty: "Nothing audited yet." }));
  return { dispose() {} };
}

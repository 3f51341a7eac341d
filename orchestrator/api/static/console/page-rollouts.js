// #/rollouts: every rollout, newest first, with its state, target version, progress per
// outcome, ETA and start time; filtered by state.

import { api, can, query } from "./api.js";
import { h, relative, time } from "./dom.js";
import { pagedList, progressBar, stateBadge, table } from "./widgets.js";

export const ROLLOUT_STATES = [
  "DRAFT", "SCHEDULED", "RUNNING", "PAUSED", "WAITING_WINDOW", "SUCCEEDED",
  "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED",
];

const FILTERS = [
  ["", "All states"],
  ["active", "Active (scheduled, running, paused, waiting)"],
  ...ROLLOUT_STATES.map((s) => [s, s.replaceAll("_", " ")]),
];
const ACTIVE = ["SCHEDULED", "RUNNING", "PAUSED", "WAITING_WINDOW"];

let chosen = ""; // the filter, kept while the page is open

export function countsOf(item) {
  const counts = item.counts;
  if (!counts) return null;
  return counts.by_state && typeof counts.by_state === "object" ? counts.by_state : counts;
}

export function etaCell(rollout) {
  const forecast = rollout.forecast;
  if (rollout.finished_at) return h("span", { class: "muted" }, "finished");
  if (!forecast) return h("span", { class: "muted" }, "—");
  if (!forecast.eta) return h("span", { class: "muted" }, forecast.blocked ? "blocked" : "—");
  return h("span", {}, time(forecast.eta), " ", h("span", { class: "muted" }, `(${relative(forecast.eta)})`),
    forecast.blocked ? h("span", { class: "warn-text" }, " · no engine") : null);
}

export function rolloutsPage(view) {
  const select = h("select", { id: "state-filter" },
    FILTERS.map(([value, label]) => h("option", { value, selected: value === chosen }, label)));
  const list = h("div", { class: "rollout-list" });
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h1", {}, "Rollouts"),
      can("operator") ? h("a", { class: "button", href: "#/new" }, "New rollout") : null),
    h("div", { class: "filters" },
      h("label", { for: "state-filter" }, "State"), select,
      h("button", { type: "button", class: "button secondary", onclick: () => load() }, "Refresh")),
    list);

  const columns = [
    { label: "Rollout", cell: (r) => h("a", { href: `#/rollouts/${r.id}`, class: "rollout-link" }, `#${r.id} ${r.name}`) },
    { label: "State", cell: (r) => stateBadge(r.state) },
    { label: "Version", cell: (r) => h("code", {}, r.target_version) },
    {
      label: "Progress", class: "col-progress", cell: (r) => {
        const counts = countsOf(r);
        return counts ? progressBar(counts, { total: r.targeted, compact: true }) : `${r.targeted} targeted`;
      },
    },
    { label: "ETA", cell: etaCell },
    { label: "Started", cell: (r) => time(r.started_at) },
  ];

  function load() {
    const states = chosen === "active" ? ACTIVE : chosen ? [chosen] : [];
    return pagedList(list,
      (cursor) => api(`/api/v1/rollouts${query({ state: states, limit: 50, cursor, forecast: "true" })}`),
      (items) => table(columns, items, {
        caption: "Rollouts",
        empty: chosen ? "No rollout in this state." : "No rollout yet.",
      }));
  }
  select.addEventListener("change", () => {
    chosen = select.value;
    load();
  });
  load();
  return { dispose() {} };
}

// Pieces several pages share: state badges, progress bars, tables, notices, the
// confirmation dialog and "load more" lists.

import { h, replace, setWidth } from "./dom.js";

// ------------------------------------------------------------------ states
// Each state is shown as its name AND a colour (never the colour alone).
const TONE = {
  // rollouts
  DRAFT: "neutral", SCHEDULED: "wait", RUNNING: "run", PAUSED: "warn",
  WAITING_WINDOW: "wait", SUCCEEDED: "ok", COMPLETED_WITH_FAILURES: "warn",
  FAILED: "bad", CANCELLED: "neutral",
  // waves
  SOAKING: "run", AWAITING_APPROVAL: "warn",
  // tasks
  PENDING: "neutral", DISPATCHING: "run", INSTALLING: "run", VERIFYING: "run",
  TIMED_OUT: "bad", SKIPPED: "neutral",
};

export function stateBadge(state) {
  const text = String(state ?? "—");
  return h("span", { class: `state tone-${TONE[text] || "neutral"}` }, text.replaceAll("_", " "));
}

export const TERMINAL_ROLLOUT = new Set(["SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED"]);

// ------------------------------------------------------------------ progress
// The segments of a progress bar, in order; pending is the empty track.
const SEGMENTS = [
  ["succeeded", ["SUCCEEDED"]],
  ["skipped", ["SKIPPED"]],
  ["failed", ["FAILED"]],
  ["timed out", ["TIMED_OUT"]],
  ["cancelled", ["CANCELLED"]],
  ["in flight", ["DISPATCHING", "INSTALLING", "VERIFYING"]],
];
const DONE = ["SUCCEEDED", "SKIPPED", "FAILED", "TIMED_OUT", "CANCELLED"];

export function sum(counts, states) {
  return states.reduce((n, s) => n + (Number(counts?.[s]) || 0), 0);
}

export function tally(counts, total) {
  const all = total ?? Object.values(counts || {}).reduce((n, v) => n + (Number(v) || 0), 0);
  return { done: sum(counts, DONE), total: all };
}

/** "12 / 40 done" and the share of each outcome as a stacked bar, with the numbers as text
 * (the bar itself is decoration: aria-hidden). */
export function progressBar(counts, { total, label = "", compact = false } = {}) {
  const { done, total: all } = tally(counts, total);
  const bar = h("div", { class: "bar", "aria-hidden": "true" });
  for (const [name, states] of SEGMENTS) {
    const n = sum(counts, states);
    if (!n || !all) continue;
    const seg = h("span", { class: `seg seg-${name.replace(" ", "-")}` });
    setWidth(seg, n / all);
    bar.appendChild(seg);
  }
  const parts = [];
  for (const [name, states] of SEGMENTS) {
    const n = sum(counts, states);
    if (n) parts.push(h("span", { class: `legend legend-${name.replace(" ", "-")}` }, `${name} ${n}`));
  }
  const pending = sum(counts, ["PENDING"]);
  if (pending) parts.push(h("span", { class: "legend legend-pending" }, `pending ${pending}`));
  return h("div", { class: compact ? "progress compact" : "progress" },
    h("div", { class: "progress-head" },
      label ? h("span", { class: "progress-label" }, label) : null,
      h("span", { class: "progress-count", dataset: { done: String(done), total: String(all) } },
        `${done} / ${all} done`)),
    bar,
    parts.length ? h("div", { class: "legends" }, parts) : null);
}

// ------------------------------------------------------------------ tables
/**
 * columns: [{label, cell: (row) => node|string, class?}]. On a narrow screen each row
 * becomes a card whose cells carry their column's label (data-label).
 */
export function table(columns, rows, { caption, empty = "Nothing to show." } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)));
  const body = rows.map((row) => h("tr", {}, columns.map((c) =>
    h("td", { class: c.class, dataset: { label: c.label } }, h("div", { class: "cell" }, c.cell(row))))));
  return h("div", { class: "table-wrap" },
    h("table", { class: "grid" },
      caption ? h("caption", { class: "visually-hidden" }, caption) : null,
      h("thead", {}, head), h("tbody", {}, body)));
}

// ------------------------------------------------------------------ notices
/** A refusal or error: the server's detail exactly as written. */
export function problemBox(error, heading) {
  const status = error.status ? ` (${error.status})` : "";
  return h("div", { class: "notice notice-bad", role: "alert" },
    h("strong", {}, `${heading || "Refused"}${status}: `),
    h("span", { class: "problem-detail" }, error.message));
}

export function okBox(text) {
  return h("div", { class: "notice notice-ok", role: "status" }, text);
}

export function loading(text = "Loading…") {
  return h("p", { class: "muted", role: "status" }, text);
}

// ------------------------------------------------------------------ confirmation
/** Ask with the page's <dialog>: resolves true when the user confirms. */
export function confirmDialog({ title, body, confirm, danger = false }) {
  const dialog = document.getElementById("confirm");
  const opener = document.activeElement;
  replace(dialog.querySelector(".dialog-title"), title);
  replace(dialog.querySelector(".dialog-body"), ...(Array.isArray(body) ? body : [body]));
  const ok = dialog.querySelector(".dialog-confirm");
  ok.textContent = confirm;
  ok.classList.toggle("danger", danger);
  return new Promise((resolve) => {
    const done = (value) => {
      ok.removeEventListener("click", onOk);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      if (opener instanceof HTMLElement && opener.isConnected) opener.focus();
      resolve(value);
    };
    const onOk = () => done(true);
    const onClose = () => done(false);
    ok.addEventListener("click", onOk);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    dialog.querySelector(".dialog-cancel").focus();
  });
}

// ------------------------------------------------------------------ paged lists
/**
 * A list read page by page: `fetchPage(cursor)` resolves to {items, next_cursor};
 * `render(items)` gives the node for all items read so far. A "Load more" button reads the
 * next page.
 */
export function pagedList(container, fetchPage, render) {
  const items = [];
  let cursor = null;
  const status = h("div", { class: "paged-status" });
  const more = h("button", { type: "button", class: "button secondary", hidden: true }, "Load more");
  const body = h("div", {});
  replace(container, body, status, more);
  async function load() {
    more.disabled = true;
    replace(status, loading());
    try {
      const page = await fetchPage(cursor);
      items.push(...page.items);
      cursor = page.next_cursor;
      replace(body, render(items));
      replace(status);
      more.hidden = !cursor;
    } catch (exc) {
      replace(status, problemBox(exc, "Could not load"));
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener("click", load);
  return load();
}

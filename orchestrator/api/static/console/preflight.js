// The rollout page's pre-flight panel (docs/preflight.md): the latest pre-flight results of
// the rollout's appliances, counted per result, when they were checked and by which run,
// and the appliances that fail or warn with their code and message (GET
// /api/v1/rollouts/ID/preflight?result=fail&result=warn). Operators also get "Run
// pre-flight" (POST, after the console's confirmation step; a refusal is shown as the
// server wrote it).
//
// A run is unfinished while the summary's `run.state` is "requested" (asked for, no engine
// has taken it yet) or "running" (`done` of `total` appliances checked); then "finished".
// A pre-flight sends no task event, so the event stream says nothing of it: while a run is
// unfinished the panel reads the GET again every 2 s, until it is finished.

import { api, ApiError, can, query } from "./api.js";
import { h, plural, replace, time } from "./dom.js";
import { TERMINAL_ROLLOUT, confirmDialog, loading, okBox, problemBox } from "./widgets.js";

const POLL_MS = 2000;
const PROBLEMS_READ = 100; // appliances that fail or warn, listed
const RESULTS = ["ok", "warn", "fail", "skip"];
const TONE = { ok: "ok", warn: "warn", fail: "bad", skip: "neutral" };
const TRIGGER = { start: "at the start", window: "before a window", operator: "asked for" };

/** Whether the summary's latest run has not finished ("requested" or "running"). */
export function unfinished(summary) {
  return Boolean(summary && summary.run && summary.run.state !== "finished");
}

// what the panel shows, in short: a different key means something new to read
function keyOf(summary) {
  if (!summary) return "none";
  const run = summary.run || {};
  return JSON.stringify([run.id, run.state, run.done, summary.checked_at, summary.counts]);
}

function resultBadge(result) {
  return h("span", { class: `state tone-${TONE[result] || "neutral"}` }, result);
}

/**
 * The panel: `element` to place on the page; `update(summary)` with the rollout detail's
 * `preflight` (reads the results again when they changed); `dispose()`.
 * rollout(): the rollout as the page last read it; onFinished(): a run just finished.
 */
export function preflightPanel(id, { rollout, onFinished }) {
  let disposed = false;
  let timer = null;
  let busy = false; // a GET is on its way
  let again = false; // and another was asked for meanwhile
  let lastKey = null;
  let open = false; // the latest run read is unfinished

  const button = can("operator")
    ? h("button", { type: "button", class: "button secondary", id: "run-preflight", onclick: run }, "Run pre-flight")
    : null;
  const status = h("div", { class: "preflight-status", role: "status" }, loading());
  const counts = h("div", {});
  const problems = h("div", {});
  const note = h("div", { class: "preflight-result", "aria-live": "polite" });
  const element = h("section", { class: "card preflight", id: "preflight", "aria-labelledby": "preflight-title" },
    h("div", { class: "section-head" }, h("h2", { id: "preflight-title" }, "Pre-flight"), button),
    status, counts, problems, note);

  function runText(r) {
    const trigger = TRIGGER[r.trigger] || r.trigger;
    if (r.state === "requested") {
      return h("p", { class: "warn-text" }, `Run ${r.id} (${trigger} by ${r.requested_by}) is waiting for an engine to take it.`);
    }
    if (r.state === "running") {
      return h("p", { class: "warn-text" }, `Run ${r.id} (${trigger} by ${r.requested_by}) is running: ${r.done} of ${r.total} checked.`);
    }
    return h("p", { class: "muted" },
      `Run ${r.id} (${trigger} by ${r.requested_by}) finished `, time(r.finished_at),
      `: ${plural(r.total, "appliance")} checked`,
      r.left_out ? `, ${r.left_out} left out of the plan (SKIPPED)` : "", ".");
  }

  function render(answer) {
    const summary = answer.summary;
    if (!summary) {
      replace(status, h("p", { class: "empty" }, "Never checked: no pre-flight of this rollout has run."));
      replace(counts);
      replace(problems);
      return;
    }
    const run = summary.run;
    replace(status,
      run ? runText(run) : null,
      run && run.error ? h("p", { class: "notice notice-bad" }, h("strong", {}, "The run ended with an error: "), run.error) : null,
      summary.checked_at ? h("p", { class: "muted" }, "Results checked ", time(summary.checked_at), ".") : null);
    replace(counts, h("ul", { class: "preflight-counts", id: "preflight-counts", "aria-label": "Appliances by pre-flight result" },
      RESULTS.map((r) => h("li", { dataset: { result: r } },
        resultBadge(r), " ", h("span", { class: "count" }, String(summary.counts[r] ?? 0))))));
    const items = answer.items;
    replace(problems,
      h("h3", { class: "subhead" }, "Failing and warning appliances"),
      items.length ? h("ul", { class: "preflight-problems", id: "preflight-problems" }, items.map((item) =>
        h("li", { dataset: { appliance: item.appliance, result: item.result } },
          h("span", { class: "name" }, item.appliance), h("span", { class: "muted" }, ` ${item.site} `),
          resultBadge(item.result), " ",
          h("code", { class: item.result === "fail" ? "error-code" : "warn-code" }, item.code || "—"),
          item.message ? h("span", { class: "muted block" }, item.message) : null)))
        : h("p", { class: "empty" }, "None: no appliance fails or warns."),
      answer.next_cursor !== null
        ? h("p", { class: "muted" }, `The first ${PROBLEMS_READ} are listed; the CSV report lists every appliance's result.`)
        : null);
  }

  async function load() {
    if (disposed) return;
    if (busy) {
      again = true;
      return;
    }
    clearTimeout(timer);
    timer = null;
    busy = true;
    try {
      const answer = await api(`/api/v1/rollouts/${id}/preflight${query({ result: ["fail", "warn"], limit: PROBLEMS_READ })}`);
      if (disposed) return;
      render(answer);
      lastKey = keyOf(answer.summary);
      const wasOpen = open;
      open = unfinished(answer.summary);
      if (wasOpen && !open) onFinished();
    } catch (exc) {
      if (disposed) return;
      replace(status, problemBox(exc, "Could not load"));
    } finally {
      busy = false;
      if (!disposed) {
        if (again) {
          again = false;
          load();
        } else if (open && timer === null) {
          timer = setTimeout(load, POLL_MS);
        }
      }
    }
  }

  async function run() {
    const r = rollout();
    const active = r && !TERMINAL_ROLLOUT.has(r.state) && !["DRAFT", "SCHEDULED"].includes(r.state);
    const yes = await confirmDialog({
      title: `Run pre-flight: rollout #${id}?`,
      body: [
        h("p", {}, "Each appliance of the rollout that has not started, or ended without the target, is asked whether an install could work: login and TLS, its version, key services, a pending reconfigure, its update repository and the target version offered. Nothing is installed."),
        h("p", {}, "An engine runs it; meanwhile no install of this rollout starts."),
        r && r.strategy && r.strategy.preflight === "required" && active
          ? h("p", {}, h("strong", {}, "preflight: required"), ": the appliances that fail are left out of the plan (SKIPPED).")
          : null,
      ],
      confirm: "Run pre-flight",
    });
    if (!yes || disposed) return;
    replace(note, loading("Asking for a pre-flight…"));
    try {
      const answer = await api(`/api/v1/rollouts/${id}/preflight`, { method: "POST" });
      if (disposed) return;
      replace(note, okBox(answer.message));
    } catch (exc) {
      if (disposed) return;
      replace(note, problemBox(exc, exc instanceof ApiError && exc.status === 403 ? "Not allowed" : "Refused"));
    }
    open = true; // its end (or the other run's, on a refusal) refreshes the page
    load();
  }

  return {
    element,
    /** The rollout detail's `preflight`: read the results again when it shows a change. */
    update(summary) {
      if (disposed || busy || timer !== null) return; // a read is on its way or due
      if (keyOf(summary) !== lastKey) load();
    },
    dispose() {
      disposed = true;
      clearTimeout(timer);
    },
  };
}

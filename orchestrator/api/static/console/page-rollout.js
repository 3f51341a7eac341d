// #/rollouts/ID: one rollout, live. Its waves and sites with progress bars, the overall
// progress, the forecast, the adaptive pace (when on), the pre-flight results
// (preflight.js), failures grouped by error code with their appliances, the live event
// feed, report downloads, and the controls the token's role allows (each with a
// confirmation step; a refusal is shown as the server wrote it).

import { api, ApiError, can, download, query } from "./api.js";
import { h, plural, relative, replace, time } from "./dom.js";
import { LiveStream } from "./live.js";
import { preflightPanel } from "./preflight.js";
import {
  TERMINAL_ROLLOUT, confirmDialog, loading, okBox, problemBox, progressBar, stateBadge, sum,
} from "./widgets.js";

const FEED_SIZE = 200; // transitions kept in the feed
const REFRESH_MS = 1500; // the detail (waves, sites) is read again at most this often
const FORECAST_MS = 10_000; // and the forecast at most this often
const FAILED_STATES = ["FAILED", "TIMED_OUT"];
const FAILURES_READ = 500; // failed tasks read for the grouping

// The controls, in the order shown; `when`: the states in which the state machine allows
// them, which get the prominent button (the others are offered too: the server decides,
// and its refusal is shown as it wrote it).
const CONTROLS = [
  {
    name: "start", label: "Start", when: ["DRAFT", "SCHEDULED"],
    explain: "It begins installing on its appliances (a DRAFT with a start time is scheduled for it).",
  },
  {
    name: "pause", label: "Pause", when: ["SCHEDULED", "RUNNING", "WAITING_WINDOW"],
    explain: "No new installs start; installs the appliances already accepted run to their end.",
  },
  { name: "resume", label: "Resume", when: ["PAUSED"], explain: "Installs start again." },
  {
    name: "approve", label: "Approve next wave", when: (r) => (r.counts.waves || []).some((w) => w.state === "AWAITING_APPROVAL"),
    explain: "Opens the gate of the wave that waits for an operator: the next wave may start.",
  },
  {
    name: "retry-failed", label: "Retry failed", when: ["SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED"],
    explain: "Failed, timed-out and cancelled tasks go back into the queue as fresh tasks; the rollout runs again.",
  },
  {
    name: "cancel", label: "Cancel rollout", danger: true,
    when: ["DRAFT", "SCHEDULED", "RUNNING", "PAUSED", "WAITING_WINDOW"],
    explain: "Tasks that never started are cancelled; installs already accepted cannot be stopped and run to their end.",
  },
];

const IN_FLIGHT = ["DISPATCHING", "INSTALLING", "VERIFYING"];

function waveTitle(wave, count) {
  if (wave.number === 0 && count > 1) return "Wave 0 · canary";
  return `Wave ${wave.number}`;
}

/** "pace: 15 installs at once — healthy (...)": the adaptive pace now (null: off). */
function paceLine(pace) {
  if (!pace) return null;
  return h("p", { class: "pace-line", id: "pace-line" },
    h("span", { class: "pace-text" },
      `pace: ${plural(pace.concurrency, "install")} at once${pace.reason ? ` — ${pace.reason}` : ""}`),
    pace.changed_at ? h("span", { class: "muted block" }, "since ", time(pace.changed_at)) : null);
}

function detailText(detail) {
  if (!detail || typeof detail !== "object") return "";
  return Object.entries(detail)
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" · ");
}

export function rolloutPage(view, id) {
  let rollout = null;
  let disposed = false;
  let refreshTimer = null;
  let lastRefresh = 0;
  let lastForecast = 0;
  let forecast = null;
  let failedSeen = -1;
  let failuresTimer = null;
  const feed = []; // newest last
  let feedDirty = false;

  // the page's regions, filled in as data arrives
  const head = h("div", { class: "rollout-head" }, loading());
  const controls = h("section", { class: "card controls", "aria-labelledby": "controls-title", hidden: true });
  const result = h("div", { class: "control-result", "aria-live": "polite" });
  const overall = h("section", { class: "card", "aria-labelledby": "progress-title" });
  const waves = h("section", { class: "card", "aria-labelledby": "waves-title" });
  const sites = h("section", { class: "card", "aria-labelledby": "sites-title" });
  const failures = h("section", { class: "card", "aria-labelledby": "failures-title" });
  const reports = h("section", { class: "card", "aria-labelledby": "reports-title" });
  const preflight = preflightPanel(id, {
    rollout: () => rollout,
    onFinished: () => !disposed && refresh({ withForecast: true }),
  });
  const streamStatus = h("span", { class: "stream-status", role: "status" });
  const feedList = h("ol", { class: "feed", "aria-label": "Task transitions, newest first" });
  const feedSection = h("section", { class: "card feed-card", "aria-labelledby": "feed-title" },
    h("div", { class: "section-head" }, h("h2", { id: "feed-title" }, "Live events"), streamStatus),
    feedList);

  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/rollouts" }, "Rollouts"), " / ", `#${id}`),
    head, controls, result,
    h("div", { class: "columns" },
      h("div", { class: "column" }, overall, preflight.element, waves, sites),
      h("div", { class: "column" }, failures, feedSection, reports)));

  // ---------------------------------------------------------------- rendering
  function renderHead() {
    const r = rollout;
    document.title = `#${r.id} ${r.name} · Fleet update orchestrator`;
    const facts = [
      ["Target version", h("code", {}, r.target_version)],
      ["Targeted", plural(r.targeted, "appliance")],
      ["Created", h("span", {}, time(r.created_at), ` by ${r.created_by}`)],
      ["Started", time(r.started_at)],
      r.schedule_at ? ["Scheduled for", time(r.schedule_at)] : null,
      r.finished_at ? ["Finished", time(r.finished_at)] : null,
    ].filter(Boolean);
    replace(head,
      h("div", { class: "title-row" },
        h("h1", { id: "rollout-title" }, `#${r.id} ${r.name}`),
        h("span", { id: "rollout-state" }, stateBadge(r.state))),
      r.abort_reason ? h("p", { class: "notice notice-bad" }, h("strong", {}, "Stopped: "), r.abort_reason) : null,
      r.engine && r.engine.live_engines === 0 && !TERMINAL_ROLLOUT.has(r.state) && r.state !== "DRAFT"
        ? h("p", { class: "notice notice-warn" }, "No engine is running: nothing progresses until one runs (orchestrator run or orchestrator serve).")
        : null,
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  }

  // the buttons are made once and only restyled as the state changes, so that the
  // keyboard focus stays where it is while the rollout progresses
  const controlButtons = new Map();
  function renderControls() {
    if (!can("operator")) {
      controls.hidden = true;
      return;
    }
    if (!controlButtons.size) {
      for (const c of CONTROLS) {
        controlButtons.set(c, h("button", { type: "button", dataset: { control: c.name }, onclick: () => runControl(c) }, c.label));
      }
      replace(controls,
        h("h2", { id: "controls-title", class: "visually-hidden" }, "Controls"),
        h("div", { class: "control-buttons" }, [...controlButtons.values()]));
    }
    controls.hidden = false;
    for (const [c, button] of controlButtons) {
      const fits = typeof c.when === "function" ? c.when(rollout) : c.when.includes(rollout.state);
      button.className = `button ${c.danger ? "danger-outline" : fits ? "" : "secondary"}`;
    }
  }

  function renderOverall() {
    const r = rollout;
    const counts = r.counts.by_state;
    const inFlight = sum(counts, IN_FLIGHT);
    const eta = forecast ? forecast : null;
    replace(overall,
      h("h2", { id: "progress-title" }, "Progress"),
      h("div", { id: "overall-progress" }, progressBar(counts, { total: r.targeted })),
      h("dl", { class: "facts" },
        h("dt", {}, "In flight"), h("dd", { id: "in-flight" }, String(inFlight)),
        h("dt", {}, "Current wave"), h("dd", {}, r.current_wave === null ? "—" : String(r.current_wave)),
        h("dt", {}, "Forecast"), h("dd", { id: "forecast" }, forecastText(eta))),
      paceLine(r.pace));
  }

  function forecastText(f) {
    if (!f) return h("span", { class: "muted" }, "…");
    const parts = [];
    if (f.eta && !rollout.finished_at) {
      parts.push(h("span", {}, "done ", time(f.eta), ` (${relative(f.eta)})`));
    } else if (rollout.finished_at) {
      parts.push(h("span", {}, "finished"));
    } else parts.push(h("span", { class: "muted" }, "no estimate yet"));
    if (f.basis && !rollout.finished_at) parts.push(h("span", { class: "muted block" }, f.basis));
    if (f.blocked) parts.push(h("span", { class: "warn-text block" }, f.blocked));
    return h("span", {}, parts);
  }

  function renderWaves() {
    const list = rollout.counts.waves || [];
    const byWave = rollout.counts.by_wave || {};
    replace(waves,
      h("h2", { id: "waves-title" }, "Waves"),
      list.length ? h("ol", { class: "wave-list", id: "wave-list" }, list.map((w) => {
        const counts = byWave[String(w.number)] || {};
        return h("li", { class: `wave${w.number === rollout.current_wave ? " current" : ""}`, dataset: { wave: String(w.number) } },
          h("div", { class: "wave-head" },
            h("span", { class: "wave-name" }, waveTitle(w, list.length)),
            stateBadge(w.state),
            w.requires_approval ? h("span", { class: "tag" }, w.approved_by ? `approved by ${w.approved_by}` : "then waits for approval") : null),
          progressBar(counts, { total: w.planned_size, compact: true }));
      })) : h("p", { class: "empty" }, "No waves."));
  }

  function renderSites() {
    const bySite = rollout.counts.by_site || {};
    const names = Object.keys(bySite).sort();
    replace(sites,
      h("h2", { id: "sites-title" }, "Sites"),
      names.length ? h("ul", { class: "site-list" }, names.map((name) =>
        h("li", {}, progressBar(bySite[name], { label: name, compact: true }))))
        : h("p", { class: "empty" }, "No tasks."));
  }

  function renderReports() {
    const note = h("div", { "aria-live": "polite" });
    const button = (fmt, label) => h("button", {
      type: "button", class: "button secondary", dataset: { report: fmt },
      onclick: async (event) => {
        const b = event.currentTarget;
        b.disabled = true;
        try {
          const name = await download(`/api/v1/rollouts/${id}/report${query({ format: fmt })}`, `rollout-${id}-report.${fmt}`);
          replace(note, h("p", { class: "muted" }, `Downloaded ${name}.`));
        } catch (exc) {
          replace(note, problemBox(exc, "No report"));
        } finally {
          b.disabled = false;
        }
      },
    }, label);
    replace(reports,
      h("h2", { id: "reports-title" }, "Reports"),
      h("p", { class: "muted" }, "Summary, waves, sites, durations, failures and timeline."),
      h("div", { class: "inline" }, button("html", "HTML"), button("csv", "CSV (per appliance)"), button("json", "JSON")),
      note);
  }

  async function loadFailures() {
    try {
      const page = await api(`/api/v1/rollouts/${id}/tasks${query({ state: FAILED_STATES, limit: FAILURES_READ })}`);
      if (disposed) return;
      renderFailures(page.items, page.next_cursor !== null);
    } catch (exc) {
      if (!disposed) replace(failures, h("h2", { id: "failures-title" }, "Failures"), problemBox(exc, "Could not load"));
    }
  }

  const openGroups = new Set(); // the error codes whose appliances the user opened
  function renderFailures(tasks, more) {
    const groups = new Map();
    for (const t of tasks) {
      const code = t.error_code || (t.state === "TIMED_OUT" ? "TIMED_OUT" : "no error code");
      if (!groups.has(code)) groups.set(code, []);
      groups.get(code).push(t);
    }
    const sorted = [...groups.entries()].sort((a, b) => b[1].length - a[1].length);
    replace(failures,
      h("h2", { id: "failures-title" }, "Failures"),
      sorted.length ? h("ul", { class: "failure-groups", id: "failure-groups" }, sorted.map(([code, items]) => {
        const messages = [...new Set(items.map((t) => t.error_message).filter(Boolean))];
        return h("li", { class: "failure-group" },
          h("details", {
            open: openGroups.has(code),
            ontoggle: (event) => (event.currentTarget.open ? openGroups.add(code) : openGroups.delete(code)),
          },
            h("summary", {}, h("code", { class: "error-code" }, code), " ", h("span", { class: "count" }, plural(items.length, "appliance"))),
            messages.length ? h("p", { class: "muted" }, messages.slice(0, 3).join(" · ")) : null,
            h("ul", { class: "appliance-names" }, items.map((t) =>
              h("li", {}, h("span", { class: "name" }, t.appliance), h("span", { class: "muted" }, ` ${t.site} · wave ${t.wave}`),
                t.error_message && messages.length > 1 ? h("span", { class: "muted block" }, t.error_message) : null)))));
      })) : h("p", { class: "empty" }, "No failed or timed-out task."),
      more ? h("p", { class: "muted" }, `The first ${FAILURES_READ} failed tasks are grouped; the CSV report lists every one.`) : null);
  }

  function renderFeed() {
    feedDirty = false;
    if (!feed.length) {
      replace(feedList, h("li", { class: "empty" }, "Waiting for transitions…"));
      return;
    }
    replace(feedList, feed.slice().reverse().map((e) =>
      h("li", { class: "feed-item", dataset: { eventId: String(e.id) } },
        time(e.at, { clock: true }), " ",
        h("span", { class: "name" }, e.appliance), " ",
        h("span", { class: "transition" }, e.from_state ? stateBadge(e.from_state) : null, e.from_state ? " → " : null, stateBadge(e.to_state)),
        h("span", { class: "muted" }, ` ${e.site} · wave ${e.wave}`),
        detailText(e.detail) ? h("span", { class: "muted block" }, detailText(e.detail)) : null)));
  }

  function renderAll() {
    renderHead();
    renderControls();
    renderOverall();
    renderWaves();
    renderSites();
  }

  // ---------------------------------------------------------------- data
  async function refresh({ withForecast = false } = {}) {
    lastRefresh = Date.now();
    const wantForecast = withForecast || Date.now() - lastForecast >= FORECAST_MS;
    try {
      const detail = await api(`/api/v1/rollouts/${id}${wantForecast ? "?forecast=true" : ""}`);
      if (disposed) return;
      rollout = detail;
      if (detail.forecast) {
        forecast = detail.forecast;
        lastForecast = Date.now();
      }
      renderAll();
      preflight.update(detail.preflight);
      const failed = sum(detail.counts.by_state, FAILED_STATES);
      if (failed !== failedSeen) {
        failedSeen = failed;
        scheduleFailures();
      }
    } catch (exc) {
      if (disposed) return;
      if (rollout === null) {
        replace(head, h("h1", {}, `Rollout #${id}`), problemBox(exc, exc.status === 404 ? "Not found" : "Could not load"));
        throw exc;
      }
    }
  }

  function scheduleRefresh() {
    if (refreshTimer !== null || disposed) return;
    const wait = Math.max(0, REFRESH_MS - (Date.now() - lastRefresh));
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      await refresh();
    }, wait);
  }

  function scheduleFailures() {
    clearTimeout(failuresTimer);
    failuresTimer = setTimeout(loadFailures, 300);
  }

  const stream = new LiveStream(id, {
    progress(p) {
      if (disposed || rollout === null) return;
      // the overall counts at once; waves and sites on the next read of the detail
      rollout.state = p.state;
      rollout.current_wave = p.current_wave;
      rollout.counts.by_state = p.counts;
      if ("pace" in p) rollout.pace = p.pace;
      replace(head.querySelector("#rollout-state") || head, stateBadge(p.state));
      renderOverall();
      renderControls();
      scheduleRefresh();
    },
    task(event) {
      feed.push(event);
      if (feed.length > FEED_SIZE) feed.splice(0, feed.length - FEED_SIZE);
      if (!feedDirty) {
        feedDirty = true;
        requestAnimationFrame(() => !disposed && renderFeed());
      }
    },
    end() {
      if (!disposed) refresh({ withForecast: true });
    },
    unauthorized() {
      // the token was revoked or expired: the next call says so (401) and signs out
      if (!disposed) api("/api/v1/me").catch(() => {});
    },
    status(text, kind) {
      streamStatus.className = `stream-status stream-${kind}`;
      streamStatus.textContent = text;
    },
  });

  // ---------------------------------------------------------------- controls
  async function runControl(control) {
    const r = rollout;
    const yes = await confirmDialog({
      title: `${control.label}: rollout #${r.id}?`,
      body: [h("p", {}, h("strong", {}, r.name), ` is ${r.state.replaceAll("_", " ")}.`), h("p", {}, control.explain)],
      confirm: control.label,
      danger: control.danger,
    });
    if (!yes || disposed) return;
    replace(result, loading(`${control.label}…`));
    try {
      const answer = await api(`/api/v1/rollouts/${id}/${control.name}`, { method: "POST" });
      if (disposed) return;
      replace(result, okBox(answer.message));
      await refresh({ withForecast: true });
      if (stream.ended && !TERMINAL_ROLLOUT.has(rollout.state)) stream.start(); // reopened
    } catch (exc) {
      if (disposed) return;
      replace(result, problemBox(exc, exc instanceof ApiError && exc.status === 403 ? "Not allowed" : "Refused"));
      refresh();
    }
  }

  // ---------------------------------------------------------------- start
  renderReports();
  replace(failures, h("h2", { id: "failures-title" }, "Failures"), loading());
  renderFeed();
  refresh({ withForecast: true }).then(() => {
    if (!disposed) stream.start();
  }, () => {});

  return {
    dispose() {
      disposed = true;
      stream.stop();
      preflight.dispose();
      clearTimeout(refreshTimer);
      clearTimeout(failuresTimer);
      document.title = "Fleet update orchestrator";
    },
  };
}

// A rollout's live event stream. EventSource cannot send an Authorization header, so each
// connection first gets a short-lived, single-use stream ticket (POST
// /api/v1/stream-tickets, with the bearer token) and opens
// /api/v1/rollouts/ID/events?ticket=T&last_event_id=N: the token itself never goes into a
// URL. A used ticket cannot open a second connection, so EventSource's own reconnection
// would fail: on any error the console closes the EventSource, waits (a backoff of 1, 2,
// 4 ... 30 s), gets a new ticket and reconnects after the last task event it saw. The
// server sends every transition after that id, none twice; the console also drops any id
// it has seen, so nothing is shown twice.

import { api, ApiError } from "./api.js";

const BACKOFF_FIRST = 1000;
const BACKOFF_MAX = 30_000;

export class LiveStream {
  /**
   * handlers: progress(data), task(event), end(data), status(text, kind) where kind is
   * "live", "connecting", "retrying", "ended" or "stopped".
   */
  constructor(rolloutId, handlers) {
    this.rolloutId = rolloutId;
    this.handlers = handlers;
    this.lastEventId = 0;
    this.source = null;
    this.timer = null;
    this.backoff = BACKOFF_FIRST;
    this.stopped = false;
    this.ended = false;
    this.generation = 0;
  }

  start() {
    this.stopped = false;
    this.ended = false;
    this.connect();
  }

  /** Close for good (leaving the page, signing out). */
  stop() {
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.timer);
    this.timer = null;
    this.close();
  }

  close() {
    if (this.source !== null) {
      this.source.close();
      this.source = null;
    }
  }

  status(text, kind) {
    this.handlers.status?.(text, kind);
  }

  async connect() {
    const generation = ++this.generation;
    this.close();
    this.status("connecting…", "connecting");
    let ticket;
    try {
      ticket = await api("/api/v1/stream-tickets", { method: "POST" });
    } catch (exc) {
      if (generation !== this.generation || this.stopped) return;
      if (exc instanceof ApiError && (exc.status === 401 || exc.status === 403)) {
        this.status(`stopped: ${exc.message}`, "stopped");
        return;
      }
      this.retry(exc.message);
      return;
    }
    if (generation !== this.generation || this.stopped) return;
    const params = new URLSearchParams({ ticket: ticket.ticket, last_event_id: String(this.lastEventId) });
    const source = new EventSource(`/api/v1/rollouts/${this.rolloutId}/events?${params}`);
    this.source = source;
    source.addEventListener("open", () => {
      if (source !== this.source) return;
      this.status("live", "live");
    });
    source.addEventListener("progress", (e) => {
      if (source !== this.source) return;
      this.backoff = BACKOFF_FIRST; // data flows: the next drop starts the backoff afresh
      this.handlers.progress?.(JSON.parse(e.data));
    });
    source.addEventListener("task", (e) => {
      if (source !== this.source) return;
      const event = JSON.parse(e.data);
      const id = Number(e.lastEventId || event.id);
      if (!(id > this.lastEventId)) return; // seen already
      this.lastEventId = id;
      this.handlers.task?.(event);
    });
    source.addEventListener("end", (e) => {
      if (source !== this.source) return;
      this.ended = true;
      this.close();
      this.status("ended: the rollout is finished", "ended");
      this.handlers.end?.(JSON.parse(e.data));
    });
    source.addEventListener("unauthorized", (e) => {
      if (source !== this.source) return;
      this.close();
      const data = JSON.parse(e.data);
      this.status(`stopped: ${data.detail}`, "stopped");
      this.handlers.unauthorized?.(data);
    });
    source.addEventListener("error", () => {
      if (source !== this.source) return;
      // a dropped connection (or a refused one): the ticket is spent, so never let
      // EventSource retry with it; close, and reconnect with a new ticket
      this.close();
      if (!this.stopped && !this.ended) this.retry("the connection dropped");
    });
  }

  retry(reason) {
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX);
    this.status(`${reason}; reconnecting in ${Math.round(wait / 1000)} s`, "retrying");
    clearTimeout(this.timer);
    const generation = this.generation;
    this.timer = setTimeout(() => {
      if (generation === this.generation && !this.stopped) this.connect();
    }, wait);
  }
}

// Talking to the orchestrator's API. The bearer token lives in this module's memory only:
// never in a URL, a cookie, localStorage or sessionStorage (reloading the page forgets it
// and asks again). Every call sends it as `Authorization: Bearer ...`; errors are the
// server's RFC 9457 problems, whose `detail` the console shows exactly as written.

let token = null;
let onUnauthorized = () => {};

/** Who is signed in: {name, role, expires_at} from GET /api/v1/me, or null. */
export const session = { me: null };

const RANK = { viewer: 0, operator: 1, admin: 2 };

/** Whether the signed-in token's role is at least `role`. */
export function can(role) {
  return session.me !== null && (RANK[session.me.role] ?? -1) >= RANK[role];
}

export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

/** An answer other than 2xx: `status` and the problem document (`detail` as written). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }

  /** The field errors: [{field, message}] (e.g. field "body.strategy.waves[1]"). */
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

async function problemOf(resp) {
  const type = resp.headers.get("Content-Type") || "";
  if (type.includes("json")) {
    try {
      const body = await resp.json();
      if (body && typeof body === "object") return body;
    } catch {
      // not JSON after all: fall through
    }
  }
  return { title: resp.statusText, status: resp.status, detail: `HTTP ${resp.status} ${resp.statusText}` };
}

/** Call the API. `body` is sent as JSON. Resolves to the parsed JSON (null for 204), or
 * the Response itself with `raw: true`; rejects with an ApiError. */
export async function api(path, { method = "GET", body, headers = {}, raw = false } = {}) {
  const init = {
    method,
    headers: { Accept: raw ? "*/*" : "application/json", ...headers },
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  };
  if (token !== null) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, { title: "No answer", detail: `the orchestrator did not answer: ${exc.message}` });
  }
  if (!resp.ok) {
    const problem = await problemOf(resp);
    const error = new ApiError(resp.status, problem);
    if (resp.status === 401 && token !== null) onUnauthorized(error);
    throw error;
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  return resp.json();
}

/** Check a pasted token with GET /api/v1/me; keep it (in memory) when it is good. */
export async function signIn(candidate) {
  const previous = token;
  token = candidate;
  try {
    session.me = await api("/api/v1/me");
  } catch (exc) {
    token = previous;
    throw exc;
  }
  return session.me;
}

export function signOut() {
  token = null;
  session.me = null;
}

export function signedIn() {
  return token !== null && session.me !== null;
}

/** A query string from an object; arrays repeat the key, empty values are left out. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => q.append(key, v));
    else q.append(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

/** An Idempotency-Key: 128 random bits (crypto.getRandomValues works on plain HTTP too,
 * where crypto.randomUUID does not). */
export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** Fetch a report with the token and hand it to the browser as a download (a blob URL
 * behind an <a download>: the token never goes into a link). */
export async function download(path, fallbackName) {
  const resp = await api(path, { raw: true });
  const disposition = resp.headers.get("Content-Disposition") || "";
  const match = /filename="([A-Za-z0-9._-]+)"/.exec(disposition);
  const blob = await resp.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = match ? match[1] : fallbackName;
  link.hidden = true;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return link.download;
}

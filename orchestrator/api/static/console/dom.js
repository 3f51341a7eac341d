// DOM helpers of the console. Every text that comes from the API goes into the page as a
// text node (textContent), never as markup: a name such as "<img onerror=...>" stays text.
// No inline style attributes either (the page's Content-Security-Policy forbids them):
// widths of progress bars are set through the CSSOM (element.style.setProperty).

/** An element: h("a", {href: "#/rollouts", class: "x"}, "text", child, [more]). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "style") throw new Error("no inline style (CSP): use a class");
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "text") el.textContent = String(value);
    else if (typeof value === "boolean") el.toggleAttribute(key, value);
    else if (key === "value") el.value = String(value);
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Append children: strings and numbers as text, arrays flattened, null/false skipped. */
export function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A bar's share, through the CSSOM (allowed by the CSP, unlike a style attribute). */
export function setWidth(el, fraction) {
  const pct = Math.max(0, Math.min(1, fraction)) * 100;
  el.style.setProperty("width", `${pct.toFixed(3)}%`);
}

/** A unique id for label/aria wiring. */
let serial = 0;
export function uid(prefix) {
  serial += 1;
  return `${prefix}-${serial}`;
}

// ------------------------------------------------------------------ times and numbers
const TIME = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
});
const CLOCK = new Intl.DateTimeFormat(undefined, {
  hour: "2-digit", minute: "2-digit", second: "2-digit",
});

/** A <time> element: local time, the ISO value in its datetime and title. */
export function time(iso, { clock = false } = {}) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h("span", {}, iso);
  return h("time", { datetime: iso, title: iso }, (clock ? CLOCK : TIME).format(date));
}

/** "in 12 min", "in 3 h 5 min", "2 min ago". */
export function relative(iso, now = Date.now()) {
  if (!iso) return "";
  const seconds = Math.round((new Date(iso).getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  let text;
  if (abs < 60) text = `${abs} s`;
  else if (abs < 3600) text = `${Math.round(abs / 60)} min`;
  else if (abs < 86400) {
    const hours = Math.floor(abs / 3600);
    const minutes = Math.round((abs % 3600) / 60);
    text = minutes ? `${hours} h ${minutes} min` : `${hours} h`;
  } else text = `${Math.round(abs / 86400)} d`;
  return seconds >= 0 ? `in ${text}` : `${text} ago`;
}

/** Seconds as "4 h", "30 min", "1 h 30 min", "45 s". */
export function duration(seconds) {
  const s = Math.round(Number(seconds));
  if (!Number.isFinite(s)) return String(seconds);
  const parts = [];
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  if (d) parts.push(`${d} d`);
  if (hh) parts.push(`${hh} h`);
  if (mm) parts.push(`${mm} min`);
  if (ss || !parts.length) parts.push(`${ss} s`);
  return parts.join(" ");
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

// The operator console: sign-in, navigation and the router (hash routes, so that every
// page is a link and the browser's back button works). Served by `orchestrator serve` at
// `/`; no build step, nothing loaded from the network.
//
//   #/rollouts            rollouts, filtered by state
//   #/rollouts/ID         one rollout, live
//   #/new                 create a rollout (operator)
//   #/appliances          the inventory with each appliance's last task
//   #/windows             maintenance windows and their next openings
//   #/audit               the audit log (admin)

import { api, can, session, setUnauthorizedHandler, signIn, signOut, signedIn } from "./api.js";
import { h, replace, time } from "./dom.js";
import { problemBox } from "./widgets.js";
import { rolloutsPage } from "./page-rollouts.js";
import { rolloutPage } from "./page-rollout.js";
import { createPage } from "./page-create.js";
import { appliancesPage, auditPage, windowsPage } from "./page-inventory.js";

const view = document.getElementById("view");
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signInSection = document.getElementById("sign-in");

// the page being shown: its cleanup (a live stream to close) runs before the next one
let current = { dispose() {} };

const ROUTES = [
  [/^#\/rollouts\/?$/, () => rolloutsPage(view), "rollouts"],
  [/^#\/rollouts\/([0-9]{1,19})$/, (m) => rolloutPage(view, Number(m[1])), "rollouts"],
  [/^#\/new$/, () => createPage(view), "new", "operator"],
  [/^#\/appliances$/, () => appliancesPage(view), "appliances"],
  [/^#\/windows$/, () => windowsPage(view), "windows"],
  [/^#\/audit$/, () => auditPage(view), "audit", "admin"],
];

function notFound(hash) {
  replace(view, h("h1", {}, "Not found"),
    h("p", {}, `There is no page ${hash}. `, h("a", { href: "#/rollouts" }, "See the rollouts.")));
  return { dispose() {} };
}

function forbidden(role) {
  replace(view, h("h1", {}, "Not for this token"),
    h("p", {}, `This page needs the ${role} role; you are signed in as ${session.me.name} (${session.me.role}).`));
  return { dispose() {} };
}

function route() {
  current.dispose();
  current = { dispose() {} };
  if (!signedIn()) {
    showSignIn();
    return;
  }
  if (!location.hash) history.replaceState(null, "", "#/rollouts");
  const hash = location.hash;
  let active = null;
  for (const [pattern, render, section, role] of ROUTES) {
    const match = pattern.exec(hash);
    if (!match) continue;
    active = section;
    current = role && !can(role) ? forbidden(role) : render(match) || { dispose() {} };
    break;
  }
  if (active === null) current = notFound(hash);
  for (const link of nav.querySelectorAll("a")) {
    if (link.dataset.section === active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// ------------------------------------------------------------------ signing in
function showSignIn(message) {
  nav.hidden = true;
  who.hidden = true;
  replace(view);
  signInSection.hidden = false;
  const notice = signInSection.querySelector(".sign-in-notice");
  replace(notice, message ? problemBox(message, "Signed out") : null);
  signInSection.querySelector("input").focus();
}

function renderHeader() {
  const me = session.me;
  replace(nav,
    h("a", { href: "#/rollouts", dataset: { section: "rollouts" } }, "Rollouts"),
    can("operator") ? h("a", { href: "#/new", dataset: { section: "new" } }, "New rollout") : null,
    h("a", { href: "#/appliances", dataset: { section: "appliances" } }, "Appliances"),
    h("a", { href: "#/windows", dataset: { section: "windows" } }, "Windows"),
    can("admin") ? h("a", { href: "#/audit", dataset: { section: "audit" } }, "Audit log") : null);
  replace(who,
    h("span", { class: "who-name" }, me.name),
    h("span", { class: `role role-${me.role}` }, me.role),
    me.expires_at ? h("span", { class: "who-expires" }, "until ", time(me.expires_at)) : null,
    h("button", { type: "button", class: "button secondary small", onclick: () => leave() }, "Sign out"));
  nav.hidden = false;
  who.hidden = false;
}

function leave(message) {
  current.dispose();
  current = { dispose() {} };
  signOut();
  showSignIn(message);
}

async function onSignIn(event) {
  event.preventDefault();
  const input = signInSection.querySelector("input");
  const notice = signInSection.querySelector(".sign-in-notice");
  const button = signInSection.querySelector("button[type=submit]");
  const pasted = input.value.trim();
  if (!pasted) {
    replace(notice, h("p", { class: "field-error", role: "alert" }, "Paste a token first."));
    return;
  }
  button.disabled = true;
  try {
    await signIn(pasted);
  } catch (exc) {
    replace(notice, problemBox(exc, "Not signed in"));
    button.disabled = false;
    input.focus();
    return;
  }
  button.disabled = false;
  input.value = "";
  replace(notice);
  signInSection.hidden = true;
  renderHeader();
  route();
  main.focus();
}

setUnauthorizedHandler((error) => {
  // the token was revoked or expired while the page was open
  if (signedIn()) leave(error);
});

// ------------------------------------------------------------------ wiring
signInSection.querySelector("form").addEventListener("submit", onSignIn);
const dialog = document.getElementById("confirm");
dialog.querySelector(".dialog-cancel").addEventListener("click", () => dialog.close());
document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", () => {
  route();
  if (signedIn()) main.focus({ preventScroll: true });
});
route();

// for the API's reference in the footer: the version the server reports (no token needed)
api("/healthz").then((health) => {
  const el = document.getElementById("version");
  if (el && health && health.version) el.textContent = `orchestrator ${health.version}`;
}).catch(() => {});

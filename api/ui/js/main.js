// The dashboard's entry point: asks for a token (unless the service runs without
// authentication), routes /ui/... paths to their page modules, and follows links in the page.

import { api, ApiError, forgetToken, getToken, service, setToken } from "./api.js";
import { clear, h } from "./dom.js";
import { navigate, onNavigate, route } from "./router.js";

const PAGES = {
  jobs: () => import("./pages/jobs.js"),
  run: () => import("./pages/run.js"),
  compare: () => import("./pages/compare.js"),
  leaderboard: () => import("./pages/leaderboard.js"),
  submit: () => import("./pages/submit.js"),
};
const NAV = { run: "jobs" };

const main = document.getElementById("main");
let current = null;
let loginMessage = "";

async function show({ focus = false } = {}) {
  current?.abort();
  const controller = new AbortController();
  current = controller;
  const { name, params } = route(location.pathname);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === (NAV[name] || name)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  renderWho();
  if (!service.authOff && !getToken()) {
    renderLogin();
    return;
  }
  if (!name) {
    document.title = "Not found · cssl";
    clear(main, h("h1", {}, "No such page"), h("p", {}, h("a", { href: "/ui/" }, "Back to the jobs")));
    return;
  }
  try {
    const page = await PAGES[name]();
    if (controller.signal.aborted) return;
    clear(main);
    await page.render(main, { params, query: new URLSearchParams(location.search), signal: controller.signal });
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error instanceof ApiError && error.status === 401) return; // the login form is shown
    console.error(error);
    clear(main, h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, error.message || String(error)));
  }
  if (focus) main.focus({ preventScroll: false });
}

onNavigate(show);

function renderWho() {
  const who = document.getElementById("who");
  if (service.authOff) {
    clear(who, h("span", { class: "muted" }, "local owner"));
  } else if (getToken()) {
    clear(who, h("button", { class: "secondary small", type: "button", onclick: signOut }, "Sign out"));
  } else {
    clear(who);
  }
}

function signOut() {
  forgetToken();
  loginMessage = "Signed out.";
  show({ focus: true });
}

function renderLogin() {
  current?.abort();
  document.title = "Sign in · cssl";
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true,
    spellcheck: "false", "aria-describedby": "token-help token-error" });
  const errorLine = h("p", { id: "token-error", class: "field-error", role: "alert" }, loginMessage);
  const form = h("form", { class: "login-form", novalidate: true },
    h("label", { for: "token" }, "API token"),
    input,
    h("small", { id: "token-help", class: "muted" },
      "Kept in this browser tab only (session storage) and sent as Authorization: Bearer. Create one with ",
      h("code", {}, "cssl token create --owner NAME"), "."),
    errorLine,
    h("div", {}, h("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      errorLine.textContent = "Enter a token.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    setToken(token);
    try {
      await api("/v1/jobs?limit=1", { signIn: true });
    } catch (error) {
      forgetToken();
      errorLine.textContent = error instanceof ApiError && error.status === 401 ? "That token was refused: it is unknown or revoked." : error.message;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    loginMessage = "";
    show({ focus: true });
  });
  clear(main, h("section", { class: "login" }, h("h1", {}, "Sign in to the cssl dashboard"), form));
  input.focus();
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download") || link.origin !== location.origin) return;
  if (!link.pathname.startsWith("/ui")) return;
  if (link.hash && link.pathname === location.pathname && link.search === location.search) return; // a jump within the page
  event.preventDefault();
  navigate(link.pathname + link.search);
});

window.addEventListener("popstate", () => show({ focus: true }));
window.addEventListener("cssl:unauthorized", (event) => {
  loginMessage = `Your token was refused (${event.detail || "unauthorized"}); sign in again.`;
  renderWho();
  renderLogin();
});

async function boot() {
  // The page's module loads while /readyz answers.
  const { name } = route(location.pathname);
  if (name) PAGES[name]().catch(() => {});
  try {
    // /readyz needs no token and says whether the service checks them.
    const response = await fetch("/readyz", { cache: "no-store" });
    const ready = await response.json();
    service.authOff = ready.authentication === "off";
  } catch {
    service.authOff = false;
  }
  if (service.authOff) {
    const banner = document.getElementById("banner");
    banner.textContent = "Authentication is off: this is an embedded service, and every request acts as the local owner. No token is needed.";
    banner.hidden = false;
  }
  await show();
}

boot();

// Which page a /ui/... path shows, and moving to another without a reload. The pages call
// navigate(); main.js, which loads the pages, says how a page is shown (onNavigate).

const ROUTES = [
  [/^\/ui\/?$/, "jobs"],
  [/^\/ui\/jobs\/([0-9a-fA-F]{32})\/?$/, "run"],
  [/^\/ui\/compare\/?$/, "compare"],
  [/^\/ui\/leaderboard\/?$/, "leaderboard"],
  [/^\/ui\/submit\/?$/, "submit"],
];

let show = () => {};

/** {name, params} of the page at `pathname`; name null where no page matches. */
export function route(pathname) {
  for (const [pattern, name] of ROUTES) {
    const match = pathname.match(pattern);
    if (match) return { name, params: match.slice(1) };
  }
  return { name: null, params: [] };
}

export function onNavigate(handler) {
  show = handler;
}

export function navigate(url, { replace = false } = {}) {
  history[replace ? "replaceState" : "pushState"]({}, "", url);
  show({ focus: true });
}

// The event streams of the running jobs on a page, at most `max` at once (a browser opens only a
// few connections per server, across tabs): follow() keeps those asked for and closes the rest.

import { watchJob } from "../api.js";

/** onEvent(id, event) gets each event of a followed job. */
export function jobFollower({ max, signal, onEvent }) {
  const followed = new Map(); // job id -> AbortController

  return function follow(ids) {
    const wanted = new Set(ids.slice(0, max));
    for (const [id, controller] of followed) {
      if (!wanted.has(id)) {
        controller.abort();
        followed.delete(id);
      }
    }
    for (const id of wanted) {
      if (followed.has(id)) continue;
      const controller = new AbortController();
      signal.addEventListener("abort", () => controller.abort(), { once: true });
      followed.set(id, controller);
      watchJob(id, { signal: controller.signal, onEvent: (event) => onEvent(id, event), onEnd: () => followed.delete(id) });
    }
  };
}

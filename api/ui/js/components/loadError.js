// A request that failed, shown where its answer would have been: what could not be loaded, the
// API's reason, and a button to ask again. The rest of the page stays usable.

import { clear, errorText, h } from "../dom.js";

export function loadError(what, error, retry) {
  return h(
    "div",
    { class: "load-error", role: "alert" },
    h("p", {}, `Could not load ${what}: ${errorText(error)}`),
    retry ? h("button", { type: "button", class: "secondary small", onclick: retry }, "Try again") : null,
  );
}

/**
 * Fill `box` with the elements `load()` resolves to, or with the error when its request fails
 * (Try again calls it once more). Resolves true once loaded; a page left meanwhile stays as it is.
 */
export async function fill(box, what, load, signal) {
  try {
    const content = await load();
    if (signal?.aborted) return false;
    clear(box, content);
    return true;
  } catch (error) {
    if (signal?.aborted) return false;
    clear(
      box,
      loadError(what, error, () => fill(box, what, load, signal)),
    );
    return false;
  }
}

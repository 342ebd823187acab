// The API's refusal of a form: each error beside the field its loc names (or the nearest enclosing
// one shown), marked invalid, and all of them in a summary that links to them.

import { clear, h } from "../dom.js";

export function errorSummary(form) {
  const element = h("div", { class: "alert", role: "alert", tabindex: "-1", hidden: true });

  function reset() {
    element.hidden = true;
    clear(element);
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  /** `error`: an ApiError (its errors[] with loc and msg), or anything with a message. */
  function show(error) {
    const errors = error.errors?.length ? error.errors : [{ loc: [], msg: error.message }];
    let first = null;
    const items = errors.map(({ loc = [], msg }) => {
      const target = fieldOf(loc);
      const control = target?.querySelector("input, select");
      if (target) {
        const line = target.querySelector(".field-error");
        line.textContent = line.textContent ? `${line.textContent} ${msg}` : msg;
        control?.setAttribute("aria-invalid", "true");
        first ??= control;
      }
      const where = loc.filter((p) => p !== "body").join(".") || "request";
      return h("li", {}, control?.id ? h("a", { href: `#${control.id}` }, where) : where, `: ${msg}`);
    });
    clear(
      element,
      h("strong", {}, error.errors?.length ? "The API refused the job:" : "The job could not be submitted:"),
      h("ul", {}, items),
    );
    element.hidden = false;
    (first || element).focus();
  }

  // The field of `loc` or of its nearest enclosing loc, among those shown.
  function fieldOf(loc) {
    for (let n = loc.length; n > 1; n--) {
      const found = form.querySelector(`[data-loc="${CSS.escape(loc.slice(0, n).join("."))}"]`);
      if (found && !found.closest("[hidden]")) return found;
    }
    return null;
  }

  return { element, reset, show };
}

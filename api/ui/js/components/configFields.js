// A job form's config fields: the run's keys (those every method has) and the chosen method's own,
// rebuilt when the method changes (values typed in are kept). An empty field shows, as its
// placeholder, the value the job gets: the method's default, its ViT values on a ViT backbone, or
// its small-image recipe where the data set's recipe (from GET /v1/datasets) is small_images.

import { clear, h } from "../dom.js";
import { configField, configProperties, display, parse } from "./fields.js";

/** `dataset()` gives the chosen data set's entry of GET /v1/datasets. */
export function configFields(methods, { dataset }) {
  const shared = methods.map((m) => Object.keys(configProperties(m))).reduce((a, b) => a.filter((k) => b.includes(k)));
  const runBox = h("div", { class: "form-grid" });
  const ownLegend = h("legend");
  const ownBox = h("div", { class: "form-grid" });
  const note =
    "Empty fields keep the value shown: the method's default, or the value its recipe for the data set's " +
    "images gives (the recipe is named under Data set).";
  const element = [
    h("fieldset", {}, h("legend", {}, "Run"), h("p", { class: "muted" }, note), runBox),
    h("fieldset", {}, ownLegend, ownBox),
  ];
  let method = null;
  let inputs = {}; // config key -> {input, prop}

  function build(chosen) {
    method = chosen;
    const kept = Object.fromEntries(Object.entries(inputs).map(([k, { input }]) => [k, input.value]));
    inputs = {};
    const props = configProperties(method);
    const make = (key) => {
      inputs[key] = configField(key, props[key], `body.config.${key}`, `c-${key}`);
      if (kept[key]) inputs[key].input.value = kept[key];
      return inputs[key].element;
    };
    clear(runBox, shared.filter((k) => k in props).map(make));
    ownLegend.textContent = `${method.name}'s own`;
    const own = Object.keys(props).filter((k) => !shared.includes(k));
    clear(ownBox, own.length ? own.map(make) : h("p", { class: "muted" }, "None beyond the run's."));
    for (const key of ["recipe", "backbone"]) inputs[key]?.input.addEventListener("input", refresh);
    refresh();
  }

  /** A key's value when its field is left empty, for this method, data set and backbone. */
  function defaultOf(key) {
    const chosen = inputs.recipe?.input.value || "auto";
    const recipe = chosen === "auto" ? dataset()?.recipe : chosen;
    const backbone = inputs.backbone?.input.value || method.defaults.backbone;
    if (backbone?.startsWith("vit") && key in (method.vit_defaults || {})) return method.vit_defaults[key];
    if (recipe === "small_images" && key in (method.small_image_recipe || {})) return method.small_image_recipe[key];
    return method.defaults[key];
  }

  function refresh() {
    for (const [key, { input }] of Object.entries(inputs)) {
      const value = defaultOf(key);
      const text = value === null || value === undefined ? "none" : display(value);
      if (input.tagName === "SELECT") input.options[0].textContent = `default (${text})`;
      else input.placeholder = text;
    }
  }

  /** The keys given, typed by their schemas. */
  function values() {
    const given = Object.entries(inputs).filter(([, { input }]) => input.value.trim() !== "");
    return Object.fromEntries(given.map(([key, { input, prop }]) => [key, parse(input.value, prop)]));
  }

  /** Fill in a job's config where it differs from what an empty field gives; `skip`: keys that are not the run's. */
  function set(config, skip) {
    for (const [key, value] of Object.entries(config || {})) {
      if (!inputs[key] || skip.has(key)) continue;
      if (key === "recipe") continue; // stored resolved (small_images or paper): auto chooses it again
      if (JSON.stringify(value) !== JSON.stringify(defaultOf(key))) inputs[key].input.value = display(value);
    }
    refresh();
  }

  return { element, build, refresh, values, set };
}

// The job form's field widgets, generated from JSON schemas: a labelled control per key with its
// description and valid range as help, and a line under it for the API's error about it.

import { h } from "../dom.js";

/** A labelled field; the API's errors whose loc is `loc` (or starts with it) appear under it. */
export function field(loc, id, label, control, help) {
  const helpEl = typeof help === "string" ? h("small", { id: `${id}-help` }, help) : help || null;
  return h(
    "div",
    { class: "field", "data-loc": loc },
    h("label", { for: id }, label),
    control,
    helpEl,
    h("p", { class: "field-error", id: `${id}-error` }),
  );
}

/** A key's field from its schema: {input, prop, element}. An empty input means "the default". */
export function configField(key, prop, loc, id, labelPrefix = null) {
  const type = typeOf(prop);
  let input;
  if (type === "boolean") {
    input = h(
      "select",
      { id, name: key },
      h("option", { value: "" }, "default"),
      h("option", { value: "true" }, "true"),
      h("option", { value: "false" }, "false"),
    );
  } else if (type === "integer" || type === "number") {
    // Text, not type=number: for what it cannot parse a number input gives "", and the value would be dropped silently.
    input = h("input", {
      id,
      name: key,
      type: "text",
      inputmode: type === "integer" ? "numeric" : "decimal",
      autocomplete: "off",
    });
  } else {
    input = h("input", { id, name: key, type: "text", autocomplete: "off", spellcheck: "false" });
  }
  input.setAttribute("aria-describedby", `${id}-help ${id}-error`);
  return { input, prop, element: field(loc, id, labelPrefix ? [labelPrefix, key] : key, input, describe(prop, id)) };
}

function describe(prop, id) {
  const range = [];
  if (prop.minimum !== undefined) range.push(`≥ ${prop.minimum}`);
  if (prop.exclusiveMinimum !== undefined) range.push(`> ${prop.exclusiveMinimum}`);
  if (prop.maximum !== undefined) range.push(`≤ ${prop.maximum}`);
  if (prop.exclusiveMaximum !== undefined) range.push(`< ${prop.exclusiveMaximum}`);
  const text = [prop.description, range.length ? `(${range.join(", ")})` : ""].filter(Boolean).join(" ");
  return h("small", { id: `${id}-help` }, text || typeOf(prop));
}

/** A method's config keys (its config_schema's, which are every key a job's config takes) with their schemas. */
export function configProperties(method) {
  const out = {};
  for (const [key, prop] of Object.entries(method.config_schema?.properties || {})) {
    out[key] = { ...inferred(method.defaults?.[key]), ...prop };
  }
  return out;
}

/** A schema for a value, where the declared one says less. */
export function inferred(value) {
  if (typeof value === "boolean") return { type: "boolean" };
  if (Number.isInteger(value)) return { type: "integer" };
  if (typeof value === "number") return { type: "number" };
  if (Array.isArray(value)) return { type: "array" };
  return { type: "string" };
}

function typeOf(prop) {
  if (prop.type) return prop.type;
  const options = (prop.anyOf || []).map((p) => p.type).filter((t) => t && t !== "null");
  return options[0] || "string";
}

/** A field's text as the JSON value its schema wants; what does not parse goes as typed, for the API to name. */
export function parse(text, prop) {
  const value = text.trim();
  const type = typeOf(prop);
  if (value === "none" || value === "null") return null;
  if (type === "integer" && /^[+-]?\d+$/.test(value)) return Number(value);
  if (type === "number" && value !== "" && Number.isFinite(Number(value))) return Number(value);
  if (type === "boolean" && (value === "true" || value === "false")) return value === "true";
  if (type === "array" || type === "object") {
    try {
      return JSON.parse(value);
    } catch {
      return value;
    }
  }
  return value;
}

/** A value as a field's text. */
export function display(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

// The protocols to evaluate a job's final checkpoint with (GET /v1/protocols): a checkbox each,
// and its parameters' fields, folded away.

import { h } from "../dom.js";
import { configField, display, inferred, parse } from "./fields.js";

export function protocolPicker(protocols, { checked }) {
  const boxes = protocols.map((protocol) => protocolBox(protocol, checked.includes(protocol.name)));
  const element = [h("p", { class: "field-error", id: "f-evaluate-error" }), boxes.map((b) => b.element)];

  return {
    element,
    /** The protocols ticked. */
    chosen: () => boxes.filter((b) => b.checkbox.checked).map((b) => b.name),
    /** The parameters given, as a job's config takes them: {knn: {k: 20}}. */
    parameters() {
      const config = {};
      for (const box of boxes) {
        const given = Object.entries(box.params).filter(([, { input }]) => input.value.trim() !== "");
        if (given.length)
          config[box.name] = Object.fromEntries(given.map(([key, { input, prop }]) => [key, parse(input.value, prop)]));
      }
      return config;
    },
    /** Tick `names` and fill in `parameters` ({knn: {k: 20}}), as a job had them. */
    set(names, parameters) {
      for (const box of boxes) {
        box.checkbox.checked = names.includes(box.name);
        for (const [key, value] of Object.entries(parameters[box.name] || {})) {
          if (box.params[key]) box.params[key].input.value = display(value);
        }
      }
    },
  };
}

function protocolBox(protocol, checked) {
  const id = `p-${protocol.name}`;
  const checkbox = h("input", { type: "checkbox", id, name: "evaluate", value: protocol.name, checked });
  const schema = protocol.parameters_schema?.properties || {};
  const params = {};
  for (const [name, value] of Object.entries(protocol.parameters || {})) {
    params[name] = configField(
      name,
      { ...inferred(value), ...(schema[name] || {}) },
      `body.config.${protocol.name}.${name}`,
      `${id}-${name}`,
      h("span", { class: "sr" }, `${protocol.name} `),
    );
    params[name].input.placeholder = value === null ? "none" : String(value);
  }
  const element = h(
    "div",
    { class: "protocol", "data-loc": `body.config.${protocol.name}` },
    h("label", { for: id }, checkbox, protocol.name),
    protocol.summary ? h("small", { class: "muted" }, ` ${protocol.summary}`) : null,
    h("p", { class: "field-error", id: `${id}-error` }),
    Object.keys(params).length
      ? h(
          "details",
          {},
          h("summary", {}, `${protocol.name} parameters`),
          h(
            "div",
            { class: "form-grid" },
            Object.values(params).map((p) => p.element),
          ),
        )
      : null,
  );
  return { name: protocol.name, checkbox, params, element };
}

// /ui/submit (and ?from=<job> to run a job again with changes): a pretraining job's form,
// generated from GET /v1/methods (keys, types, defaults, valid ranges, small-image recipe),
// GET /v1/datasets and your uploads, and GET /v1/protocols. The API validates; each error it
// names (errors[].loc) is shown beside its field.

import { ApiError, api, apiOr } from "../api.js";
import { clear, h, shortId } from "../dom.js";
import { navigate } from "../main.js";

// Set through the job's method and dataset fields, not its config.
const NOT_CONFIG = new Set(["method", "dataset", "data"]);
const SMALL_IMAGE_MAX_SIZE = 64;
const FALLBACK_PROTOCOLS = [{ name: "knn", parameters: {} }, { name: "linear", parameters: {} }];
const DEFAULT_PROTOCOLS = ["knn", "linear"];

export async function render(main, { query, signal }) {
  document.title = "Submit a job · cssl";
  const [methods, datasets, uploads, protocols] = await Promise.all([
    api("/v1/methods", { signal }),
    api("/v1/datasets", { signal }),
    apiOr([], "/v1/datasets/uploads", { signal }),
    apiOr(FALLBACK_PROTOCOLS, "/v1/protocols", { signal }),
  ]);
  const source = query.get("from") ? await api(`/v1/jobs/${encodeURIComponent(query.get("from"))}`, { signal }) : null;
  const byName = Object.fromEntries(methods.map((m) => [m.name, m]));
  // Keys every method has are the run's; the rest are each method's own.
  const shared = methods.map((m) => Object.keys(properties(m))).reduce((a, b) => a.filter((k) => b.includes(k)));

  const summary = h("div", { class: "alert", role: "alert", tabindex: "-1", hidden: true });
  const methodSelect = h("select", { id: "f-method", name: "method", "aria-describedby": "f-method-help f-method-error" },
    methods.map((m) => h("option", { value: m.name }, m.name)));
  const methodHelp = h("small", { id: "f-method-help" });
  const datasetSelect = h("select", { id: "f-dataset", name: "dataset", "aria-describedby": "f-dataset-help f-dataset-error" },
    h("optgroup", { label: "Built in" }, datasets.map((d) => h("option", { value: `builtin:${d.name}` }, d.name))),
    uploads.length ? h("optgroup", { label: "Your uploads" },
      uploads.filter((u) => u.status === "ready").map((u) => h("option", { value: `upload:${u.id}` }, `${u.name} (${shortId(u.id)})`))) : null);
  const datasetHelp = h("small", { id: "f-dataset-help" });
  const readerSelect = h("select", { id: "f-reader", name: "reader", "aria-describedby": "f-reader-error" },
    datasets.filter((d) => d.needs_path).map((d) => h("option", { value: d.name }, d.name)));
  const pathInput = h("input", { id: "f-path", name: "path", type: "text", placeholder: "e.g. cifar10-jpeg.tar.gz",
    "aria-describedby": "f-path-help f-path-error" });
  const readerField = field("body.dataset.name", "f-reader", "Read the upload as", readerSelect);
  const pathField = field("body.dataset.path", "f-path", "Path in the service's data folder", pathInput,
    "relative to the first data root");
  const runBox = h("div", { class: "form-grid" });
  const ownLegend = h("legend");
  const ownBox = h("div", { class: "form-grid" });
  const priorityInput = h("input", { id: "f-priority", name: "priority", type: "number", min: 0, max: 9, step: 1, placeholder: "5",
    "aria-describedby": "f-priority-help f-priority-error" });
  const protocolBoxes = protocols.map((p) => protocolBox(p));
  const submitButton = h("button", { type: "submit" }, "Submit job");
  const status = h("p", { class: "muted", role: "status" });

  const form = h("form", { id: "submit-form", novalidate: true, "data-loc": "body" },
    h("fieldset", {}, h("legend", {}, "What to train"),
      h("div", { class: "form-grid" },
        field("body.method", "f-method", "Method", methodSelect, methodHelp),
        field("body.dataset", "f-dataset", "Data set", datasetSelect, datasetHelp),
        readerField, pathField)),
    h("fieldset", {}, h("legend", {}, "Run"), h("p", { class: "muted" }, "Empty fields keep the value shown: the method's default, or its small-image recipe on images of 64 px or less."), runBox),
    h("fieldset", {}, ownLegend, ownBox),
    h("fieldset", { "data-loc": "body.evaluate" }, h("legend", {}, "Evaluate the final checkpoint"),
      h("p", { class: "field-error", id: "f-evaluate-error" }), protocolBoxes.map((b) => b.element)),
    h("div", { class: "form-grid" }, field("body.priority", "f-priority", "Priority", priorityInput, "0 (lowest) to 9 (highest)")),
    h("div", { class: "actions" }, submitButton, status));

  clear(main,
    h("h1", {}, source ? `Run again with changes` : "Submit a pretraining job"),
    source ? h("p", { class: "muted" }, "Prefilled from job ", h("a", { href: `/ui/jobs/${source.id}`, class: "mono" }, shortId(source.id)),
      ": its method, data set and every value that differs from the defaults.") : null,
    summary, form);

  let inputs = {}; // config key -> {input, prop}

  function currentDataset() {
    const [kind, value] = datasetSelect.value.split(":");
    if (kind === "upload") return { upload: value, name: readerSelect.value, info: datasets.find((d) => d.name === readerSelect.value) };
    return { name: value, info: datasets.find((d) => d.name === value) };
  }

  /** A key's value when its field is left empty, for this method, data set and backbone. */
  function effectiveDefault(method, key) {
    const recipe = inputs.recipe?.input.value || "auto";
    const backbone = inputs.backbone?.input.value || method.defaults.backbone;
    const size = currentDataset().info?.image_size ?? 0;
    const small = recipe === "small_images" || (recipe === "auto" && size && size <= SMALL_IMAGE_MAX_SIZE);
    if (backbone?.startsWith("vit") && key in (method.vit_defaults || {})) return method.vit_defaults[key];
    if (small && key in (method.small_image_recipe || {})) return method.small_image_recipe[key];
    return method.defaults[key];
  }

  function refreshPlaceholders() {
    const method = byName[methodSelect.value];
    for (const [key, { input }] of Object.entries(inputs)) {
      const value = effectiveDefault(method, key);
      const text = value === null || value === undefined ? "none" : typeof value === "object" ? JSON.stringify(value) : String(value);
      if (input.tagName === "SELECT") input.options[0].textContent = `default (${text})`;
      else input.placeholder = text;
    }
    const { info, upload } = currentDataset();
    readerField.hidden = !upload;
    pathField.hidden = Boolean(upload) || !info?.needs_path;
    datasetHelp.textContent = upload ? "one of your uploads" : info?.description || "";
  }

  function buildConfigFields() {
    const method = byName[methodSelect.value];
    const kept = Object.fromEntries(Object.entries(inputs).map(([k, { input }]) => [k, input.value]));
    inputs = {};
    methodHelp.textContent = `${method.paper}${method.arxiv ? `, arXiv ${method.arxiv}` : ""}`;
    const props = properties(method);
    const make = (key) => {
      const built = configField(key, props[key], `body.config.${key}`, `c-${key}`);
      inputs[key] = built;
      if (kept[key]) built.input.value = kept[key];
      return built.element;
    };
    clear(runBox, shared.filter((k) => k in props).map(make));
    ownLegend.textContent = `${method.name}'s own`;
    const own = Object.keys(props).filter((k) => !shared.includes(k));
    clear(ownBox, own.length ? own.map(make) : h("p", { class: "muted" }, "None beyond the run's."));
    for (const key of ["recipe", "backbone"]) inputs[key]?.input.addEventListener("input", refreshPlaceholders);
    refreshPlaceholders();
  }

  function protocolBox(protocol) {
    const id = `p-${protocol.name}`;
    const checkbox = h("input", { type: "checkbox", id, name: "evaluate", value: protocol.name, checked: DEFAULT_PROTOCOLS.includes(protocol.name) });
    const schema = protocol.parameters_schema?.properties || {};
    const params = {};
    for (const [name, value] of Object.entries(protocol.parameters || {})) {
      params[name] = configField(name, { ...inferred(value), ...(schema[name] || {}) }, `body.config.${protocol.name}.${name}`, `${id}-${name}`,
        h("span", { class: "sr" }, `${protocol.name} `));
      params[name].input.placeholder = value === null ? "none" : String(value);
    }
    const element = h("div", { class: "protocol", "data-loc": `body.config.${protocol.name}` },
      h("label", { for: id }, checkbox, protocol.name),
      h("p", { class: "field-error", id: `${id}-error` }),
      Object.keys(params).length ? h("details", {}, h("summary", {}, `${protocol.name} parameters`),
        h("div", { class: "form-grid" }, Object.values(params).map((p) => p.element))) : null);
    return { name: protocol.name, checkbox, params, element };
  }

  function body() {
    const method = byName[methodSelect.value];
    const { name, upload } = currentDataset();
    const dataset = { name };
    if (upload) dataset.upload = upload;
    else if (!pathField.hidden && pathInput.value.trim()) dataset.path = pathInput.value.trim();
    const config = {};
    for (const [key, { input, prop }] of Object.entries(inputs)) {
      if (input.value.trim() !== "" && key in properties(method)) config[key] = parse(input.value, prop);
    }
    for (const box of protocolBoxes) {
      const params = {};
      for (const [key, { input, prop }] of Object.entries(box.params)) if (input.value.trim() !== "") params[key] = parse(input.value, prop);
      if (Object.keys(params).length) config[box.name] = params;
    }
    const request = { kind: "pretrain", method: method.name, dataset, config, evaluate: protocolBoxes.filter((b) => b.checkbox.checked).map((b) => b.name) };
    if (priorityInput.value.trim() !== "") request.priority = parse(priorityInput.value, { type: "integer" });
    return request;
  }

  function clearErrors() {
    summary.hidden = true;
    clear(summary);
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  /** Each error beside the field its loc names (or the nearest enclosing one), and all of them in the summary. */
  function showErrors(error) {
    const items = [];
    let first = null;
    for (const { loc = [], msg } of error.errors.length ? error.errors : [{ loc: [], msg: error.message }]) {
      let target = null;
      for (let n = loc.length; n > 1 && !target; n--) {
        const found = form.querySelector(`[data-loc="${CSS.escape(loc.slice(0, n).join("."))}"]`);
        if (found && !found.closest("[hidden]")) target = found;
      }
      const control = target?.querySelector("input, select");
      if (target) {
        const line = target.querySelector(".field-error");
        line.textContent = line.textContent ? `${line.textContent} ${msg}` : msg;
        control?.setAttribute("aria-invalid", "true");
        first ??= control;
      }
      const where = loc.filter((p) => p !== "body").join(".");
      items.push(h("li", {}, control?.id ? h("a", { href: `#${control.id}` }, where || "request") : where || "request", `: ${msg}`));
    }
    clear(summary, h("strong", {}, error.errors.length ? "The API refused the job:" : "The job could not be submitted:"), h("ul", {}, items));
    summary.hidden = false;
    (first || summary).focus();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    submitButton.disabled = true;
    status.textContent = "Submitting…";
    try {
      const job = await api("/v1/jobs", { method: "POST", body: body(), headers: { "Idempotency-Key": randomKey() } });
      status.textContent = "";
      navigate(`/ui/jobs/${job.id}`);
    } catch (error) {
      status.textContent = "";
      if (error instanceof ApiError) showErrors(error);
      else showErrors({ errors: [], message: error.message });
    } finally {
      submitButton.disabled = false;
    }
  });
  methodSelect.addEventListener("change", buildConfigFields);
  datasetSelect.addEventListener("change", refreshPlaceholders);
  readerSelect.addEventListener("change", refreshPlaceholders);

  if (source) prefill(source);
  else {
    methodSelect.value = byName.simclr ? "simclr" : methods[0].name;
    datasetSelect.value = datasets.some((d) => d.name === "digits") ? "builtin:digits" : datasetSelect.options[0].value;
    buildConfigFields();
  }

  function prefill(job) {
    methodSelect.value = job.method;
    const upload = job.dataset?.upload;
    if (upload && [...datasetSelect.options].some((o) => o.value === `upload:${upload}`)) {
      datasetSelect.value = `upload:${upload}`;
      readerSelect.value = job.dataset.name;
    } else {
      datasetSelect.value = `builtin:${job.dataset?.name}`;
      pathInput.value = job.dataset?.path || "";
    }
    buildConfigFields();
    const method = byName[job.method];
    const protocolNames = new Set(protocolBoxes.map((b) => b.name));
    for (const [key, value] of Object.entries(job.config || {})) {
      if (NOT_CONFIG.has(key)) continue;
      if (protocolNames.has(key) && value && typeof value === "object") {
        const box = protocolBoxes.find((b) => b.name === key);
        for (const [name, v] of Object.entries(value)) if (box.params[name]) box.params[name].input.value = show(v);
        continue;
      }
      if (!inputs[key]) continue;
      if (key === "recipe") continue; // stored resolved (small_images or paper): auto chooses it again
      if (JSON.stringify(value) !== JSON.stringify(effectiveDefault(method, key))) inputs[key].input.value = show(value);
    }
    for (const box of protocolBoxes) box.checkbox.checked = (job.evaluate || []).includes(box.name);
    if (job.priority !== 5) priorityInput.value = String(job.priority);
    refreshPlaceholders();
  }
}

/** A method's config keys with their JSON schemas: the declared schema over types inferred from the defaults. */
function properties(method) {
  const out = {};
  for (const [key, value] of Object.entries(method.defaults || {})) if (!NOT_CONFIG.has(key)) out[key] = inferred(value);
  for (const [key, prop] of Object.entries(method.config_schema?.properties || {})) if (!NOT_CONFIG.has(key)) out[key] = { ...out[key], ...prop };
  return out;
}

function inferred(value) {
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

function parse(text, prop) {
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
  return value; // the API names what is wrong with it
}

function show(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** A labelled field; the API's errors whose loc is `loc` (or starts with it) appear under it. */
function field(loc, id, label, control, help) {
  const helpEl = typeof help === "string" ? h("small", { id: `${id}-help` }, help) : help || null;
  return h("div", { class: "field", "data-loc": loc },
    h("label", { for: id }, label), control, helpEl, h("p", { class: "field-error", id: `${id}-error` }));
}

function configField(key, prop, loc, id, labelPrefix = null) {
  const type = typeOf(prop);
  let input;
  if (type === "boolean") {
    input = h("select", { id, name: key }, h("option", { value: "" }, "default"), h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
  } else if (type === "integer" || type === "number") {
    // Text, not type=number: for what it cannot parse a number input gives "", and the value would be dropped silently.
    input = h("input", { id, name: key, type: "text", inputmode: type === "integer" ? "numeric" : "decimal", autocomplete: "off" });
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

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `ui-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

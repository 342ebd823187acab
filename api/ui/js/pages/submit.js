// /ui/submit (and ?from=<job> to run a job again with changes): a pretraining job's form, generated
// from GET /v1/methods (keys, types, defaults, valid ranges, small-image and ViT values), GET
// /v1/datasets (and your uploads; each data set's auto recipe) and GET /v1/protocols. The API
// validates; each error it names (errors[].loc) is shown beside its field.

import { ApiError, api, settle } from "../api.js";
import { clear, h, shortId } from "../dom.js";
import { datasetPicker } from "../components/datasetPicker.js";
import { errorSummary } from "../components/errorSummary.js";
import { configField, configProperties, display, field, parse } from "../components/fields.js";
import { loadError } from "../components/loadError.js";
import { protocolPicker } from "../components/protocolPicker.js";
import { navigate } from "../router.js";

// What the API evaluates when a job names no protocols.
const DEFAULT_PROTOCOLS = ["knn", "linear"];

export async function render(main, { query, signal }) {
  document.title = "Submit a job · cssl";
  const from = query.get("from");
  const [methods, datasets, uploads, protocols, source] = await Promise.all([
    api("/v1/methods", { signal }),
    api("/v1/datasets", { signal }),
    settle(api("/v1/datasets/uploads", { signal })),
    settle(api("/v1/protocols", { signal })),
    from ? api(`/v1/jobs/${encodeURIComponent(from)}`, { signal }) : null,
  ]);
  const byName = Object.fromEntries(methods.map((m) => [m.name, m]));
  // Keys every method has are the run's; the rest are each method's own.
  const shared = methods.map((m) => Object.keys(configProperties(m))).reduce((a, b) => a.filter((k) => b.includes(k)));

  const methodSelect = h(
    "select",
    { id: "f-method", name: "method", "aria-describedby": "f-method-help f-method-error" },
    methods.map((m) => h("option", { value: m.name }, m.name)),
  );
  const methodHelp = h("small", { id: "f-method-help" });
  const dataset = datasetPicker(datasets, uploads, { onChange: refreshPlaceholders });
  const config = configFields();
  const evaluate = protocols.value ? protocolPicker(protocols.value, { checked: DEFAULT_PROTOCOLS }) : null;
  const priorityInput = h("input", {
    id: "f-priority",
    name: "priority",
    type: "number",
    min: 0,
    max: 9,
    step: 1,
    placeholder: "5",
    "aria-describedby": "f-priority-help f-priority-error",
  });
  const submitButton = h("button", { type: "submit" }, "Submit job");
  const status = h("p", { class: "muted", role: "status" });
  const form = h(
    "form",
    { id: "submit-form", novalidate: true, "data-loc": "body" },
    h(
      "fieldset",
      {},
      h("legend", {}, "What to train"),
      h(
        "div",
        { class: "form-grid" },
        field("body.method", "f-method", "Method", methodSelect, methodHelp),
        dataset.element,
      ),
    ),
    config.element,
    h(
      "fieldset",
      { "data-loc": "body.evaluate" },
      h("legend", {}, "Evaluate the final checkpoint"),
      evaluate
        ? evaluate.element
        : loadError("the evaluation protocols; the job gets the API's default ones", protocols.error),
    ),
    h(
      "div",
      { class: "form-grid" },
      field("body.priority", "f-priority", "Priority", priorityInput, "0 (lowest) to 9 (highest)"),
    ),
    h("div", { class: "actions" }, submitButton, status),
  );
  const errors = errorSummary(form);
  clear(
    main,
    h("h1", {}, source ? "Run again with changes" : "Submit a pretraining job"),
    source
      ? h(
          "p",
          { class: "muted" },
          "Prefilled from job ",
          h("a", { href: `/ui/jobs/${source.id}`, class: "mono" }, shortId(source.id)),
          ": its method, data set and every value that differs from the defaults.",
        )
      : null,
    errors.element,
    form,
  );

  // The run's keys and the method's own, rebuilt for each method; values typed in are kept.
  function configFields() {
    const runBox = h("div", { class: "form-grid" });
    const ownLegend = h("legend");
    const ownBox = h("div", { class: "form-grid" });
    const element = [
      h(
        "fieldset",
        {},
        h("legend", {}, "Run"),
        h(
          "p",
          { class: "muted" },
          "Empty fields keep the value shown: the method's default, " +
            "or the value its recipe for the data set's images gives (the recipe is named under Data set).",
        ),
        runBox,
      ),
      h("fieldset", {}, ownLegend, ownBox),
    ];
    let inputs = {}; // config key -> {input, prop}
    function build(method) {
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
      for (const key of ["recipe", "backbone"]) inputs[key]?.input.addEventListener("input", refreshPlaceholders);
    }
    return { element, build, inputs: () => inputs };
  }

  /** A key's value when its field is left empty, for this method, data set and backbone. */
  function effectiveDefault(method, key) {
    const inputs = config.inputs();
    const chosen = inputs.recipe?.input.value || "auto";
    const recipe = chosen === "auto" ? dataset.current().info?.recipe : chosen;
    const backbone = inputs.backbone?.input.value || method.defaults.backbone;
    if (backbone?.startsWith("vit") && key in (method.vit_defaults || {})) return method.vit_defaults[key];
    if (recipe === "small_images" && key in (method.small_image_recipe || {})) return method.small_image_recipe[key];
    return method.defaults[key];
  }

  function refreshPlaceholders() {
    const method = byName[methodSelect.value];
    for (const [key, { input }] of Object.entries(config.inputs())) {
      const value = effectiveDefault(method, key);
      const text = value === null || value === undefined ? "none" : display(value);
      if (input.tagName === "SELECT") input.options[0].textContent = `default (${text})`;
      else input.placeholder = text;
    }
  }

  function chooseMethod() {
    const method = byName[methodSelect.value];
    methodHelp.textContent = `${method.paper}${method.arxiv ? `, arXiv ${method.arxiv}` : ""}`;
    config.build(method);
    refreshPlaceholders();
  }

  function request() {
    const values = {};
    for (const [key, { input, prop }] of Object.entries(config.inputs())) {
      if (input.value.trim() !== "") values[key] = parse(input.value, prop);
    }
    const body = {
      kind: "pretrain",
      method: methodSelect.value,
      dataset: dataset.request(),
      config: { ...values, ...evaluate?.parameters() },
    };
    if (evaluate) body.evaluate = evaluate.chosen();
    if (priorityInput.value.trim() !== "") body.priority = parse(priorityInput.value, { type: "integer" });
    return body;
  }

  // Its method, data set, protocols and every value that differs from what an empty field gives.
  function prefill(job) {
    methodSelect.value = job.method;
    dataset.set(job.dataset);
    chooseMethod();
    const method = byName[job.method];
    const inputs = config.inputs();
    for (const [key, value] of Object.entries(job.config || {})) {
      if (!inputs[key] || key in (job.evaluation_parameters || {})) continue;
      if (key === "recipe") continue; // stored resolved (small_images or paper): auto chooses it again
      if (JSON.stringify(value) !== JSON.stringify(effectiveDefault(method, key)))
        inputs[key].input.value = display(value);
    }
    evaluate?.set(job.evaluate || [], job.evaluation_parameters || {});
    if (job.priority !== 5) priorityInput.value = String(job.priority);
    refreshPlaceholders();
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.reset();
    submitButton.disabled = true;
    status.textContent = "Submitting…";
    try {
      const job = await api("/v1/jobs", {
        method: "POST",
        body: request(),
        headers: { "Idempotency-Key": randomKey() },
      });
      status.textContent = "";
      navigate(`/ui/jobs/${job.id}`);
    } catch (error) {
      status.textContent = "";
      errors.show(error instanceof ApiError ? error : { message: error.message });
    } finally {
      submitButton.disabled = false;
    }
  });
  methodSelect.addEventListener("change", chooseMethod);

  if (source) {
    prefill(source);
  } else {
    methodSelect.value = byName.simclr ? "simclr" : methods[0].name;
    dataset.set(null, ["digits"]);
    chooseMethod();
  }
}

function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `ui-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

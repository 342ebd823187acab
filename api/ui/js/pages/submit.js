// /ui/submit (and ?from=<job> to run a job again with changes): a pretraining job's form, generated
// from GET /v1/methods (keys, types, defaults, valid ranges, small-image and ViT values), GET
// /v1/datasets (and your uploads; each data set's auto recipe) and GET /v1/protocols. The API
// validates; each error it names (errors[].loc) is shown beside its field.

import { ApiError, api, settle } from "../api.js";
import { clear, h, shortId } from "../dom.js";
import { datasetPicker } from "../components/datasetPicker.js";
import { errorSummary } from "../components/errorSummary.js";
import { configFields } from "../components/configFields.js";
import { field, parse } from "../components/fields.js";
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

  const methodSelect = h(
    "select",
    { id: "f-method", name: "method", "aria-describedby": "f-method-help f-method-error" },
    methods.map((m) => h("option", { value: m.name }, m.name)),
  );
  const methodHelp = h("small", { id: "f-method-help" });
  const dataset = datasetPicker(datasets, uploads, { onChange: () => config.refresh() });
  const config = configFields(methods, { dataset: () => dataset.current().info });
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
  const nameInput = h("input", { id: "f-name", name: "name", maxlength: 200, "aria-describedby": "f-name-help f-name-error" });
  const tagsInput = h("input", {
    id: "f-tags",
    name: "tags",
    placeholder: "project:pets, sweep:lr",
    "aria-describedby": "f-tags-help f-tags-error",
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
      field("body.name", "f-name", "Name", nameInput, "optional; to find the run again"),
      field("body.tags", "f-tags", "Tags", tagsInput, "key:value pairs, separated by commas"),
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

  function chooseMethod() {
    const method = byName[methodSelect.value];
    methodHelp.textContent = `${method.paper}${method.arxiv ? `, arXiv ${method.arxiv}` : ""}`;
    config.build(method);
  }

  function request() {
    const body = {
      kind: "pretrain",
      method: methodSelect.value,
      dataset: dataset.request(),
      config: { ...config.values(), ...evaluate?.parameters() },
    };
    if (evaluate) body.evaluate = evaluate.chosen();
    if (priorityInput.value.trim() !== "") body.priority = parse(priorityInput.value, { type: "integer" });
    if (nameInput.value.trim() !== "") body.name = nameInput.value.trim();
    const tags = tagsInput.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (tags.length) body.tags = Object.fromEntries(tags.map((t) => [t.split(":")[0].trim(), t.split(":").slice(1).join(":").trim()]));
    return body;
  }

  // Its method, data set, protocols and every value that differs from what an empty field gives.
  function prefill(job) {
    methodSelect.value = job.method;
    dataset.set(job.dataset);
    chooseMethod();
    config.set(job.config, new Set(Object.keys(job.evaluation_parameters || {})));
    evaluate?.set(job.evaluate || [], job.evaluation_parameters || {});
    if (job.priority !== 5) priorityInput.value = String(job.priority);
    tagsInput.value = Object.entries(job.tags || {}).map(([k, v]) => `${k}:${v}`).join(", ");
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

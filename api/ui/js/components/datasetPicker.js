// What a job trains on: a built-in data set (GET /v1/datasets), with its path in the service's
// data folder where it needs files, or one of your uploads read as one of those; and which recipe
// recipe=auto gives it, as the API says (the data set's `recipe`).

import { clear, h, shortId } from "../dom.js";
import { field } from "./fields.js";
import { loadError } from "./loadError.js";

const RECIPES = { small_images: "the method's small-image recipe", paper: "the paper's values" };

/** `uploads`: {value} or {error} (the form stays usable with the built-in data sets). */
export function datasetPicker(datasets, uploads, { onChange }) {
  const ready = (uploads.value || []).filter((u) => u.status === "ready");
  const select = h(
    "select",
    { id: "f-dataset", name: "dataset", "aria-describedby": "f-dataset-help f-recipe-hint f-dataset-error" },
    h(
      "optgroup",
      { label: "Built in" },
      datasets.map((d) => h("option", { value: `builtin:${d.name}` }, d.name)),
    ),
    ready.length
      ? h(
          "optgroup",
          { label: "Your uploads" },
          ready.map((u) => h("option", { value: `upload:${u.id}` }, `${u.name} (${shortId(u.id)})`)),
        )
      : null,
  );
  const help = h("small", { id: "f-dataset-help" });
  const recipeHint = h("small", { id: "f-recipe-hint" });
  const reader = h(
    "select",
    { id: "f-reader", name: "reader", "aria-describedby": "f-reader-error" },
    datasets.filter((d) => d.needs_path).map((d) => h("option", { value: d.name }, d.name)),
  );
  const path = h("input", {
    id: "f-path",
    name: "path",
    type: "text",
    placeholder: "e.g. cifar10-jpeg.tar.gz",
    "aria-describedby": "f-path-help f-path-error",
  });
  const readerField = field("body.dataset.name", "f-reader", "Read the upload as", reader);
  const pathField = field(
    "body.dataset.path",
    "f-path",
    "Path in the service's data folder",
    path,
    "relative to the first data root",
  );
  const element = [
    field("body.dataset", "f-dataset", "Data set", select, [help, " ", recipeHint]),
    uploads.error ? loadError("your uploads (the built-in data sets are listed)", uploads.error) : null,
    readerField,
    pathField,
  ];

  /** {name, upload?, info}: `info` is the data set's entry in GET /v1/datasets. */
  function current() {
    const [kind, value] = select.value.split(":");
    if (kind === "upload")
      return { upload: value, name: reader.value, info: datasets.find((d) => d.name === reader.value) };
    return { name: value, info: datasets.find((d) => d.name === value) };
  }

  function refresh() {
    const { info, upload } = current();
    readerField.hidden = !upload;
    pathField.hidden = Boolean(upload) || !info?.needs_path;
    help.textContent = upload ? "one of your uploads" : info?.description || "";
    const size = info?.image_size ? ` (${info.image_size} px images)` : "";
    clear(
      recipeHint,
      info?.recipe
        ? ["With recipe auto", size, ": ", h("b", {}, info.recipe), ", ", RECIPES[info.recipe] || "", "."]
        : "",
    );
  }

  /** The dataset part of a job's request. */
  function request() {
    const { name, upload } = current();
    if (upload) return { name, upload };
    return !pathField.hidden && path.value.trim() ? { name, path: path.value.trim() } : { name };
  }

  /** Choose what a job named ({name, path, upload}), or the first of `preferred` there is. */
  function set(dataset, preferred = []) {
    if (dataset?.upload && ready.some((u) => u.id === dataset.upload)) {
      select.value = `upload:${dataset.upload}`;
      reader.value = dataset.name;
    } else if (dataset) {
      select.value = `builtin:${dataset.name}`;
      path.value = dataset.path || "";
    } else {
      const name = preferred.find((p) => datasets.some((d) => d.name === p));
      select.value = name ? `builtin:${name}` : select.options[0].value;
    }
    refresh();
  }

  for (const control of [select, reader]) {
    control.addEventListener("change", () => {
      refresh();
      onChange();
    });
  }
  return { element, current, request, set };
}

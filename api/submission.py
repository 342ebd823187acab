"""Turn a :class:`JobCreate` into a :class:`store.jobs.NewJob`, validated against cssl_core's
registry and typed configs, so a bad submission is a 422 now rather than a failed job later."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from sqlalchemy.orm import Session

from api.problems import ProblemError, field_error, invalid
from api.schemas import JobCreate
from cssl_core.config import build_config, common_field_names, did_you_mean
from cssl_core.data import dataset_has_labels, describe_datasets, locate_dataset
from cssl_core.errors import ConfigError, DataError
from cssl_core.evaluation import protocol_names, protocol_params
from cssl_core.methods import get_method, method_names
from dispatch.routing import Resources
from store import data_roots, datasets, jobs, records, webhooks
from store.jobs import NewJob
from store.models import TRACKING_KEY, Dataset
from store.settings import Settings

DEFAULT_PROTOCOLS = ["knn", "linear"]
# Set through `dataset`, not through `config`.
DATASET_KEYS = ("dataset", "data", "eval_dataset", "eval_data")
NO_LABELS = "no train/<class>/ and test/<class>/ folders"
# An eval job's config keys besides the protocols' parameters ({"knn": {"k": 20}}); a pretrain
# job's config holds those beside the run's keys.
EVAL_CONFIG_KEYS = ("device",)
# The same words for every path refused, whether it exists or not: a refusal tells nothing
# about the server's files.
UNREADABLE_PATH = (
    "not a path the service reads data from; name a file or folder in its data folder, relative to it "
    "(e.g. cifar10-jpeg.tar.gz), or upload your own with POST /v1/datasets/uploads and name it by its id as upload"
)


def request_hash(body: JobCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve(session: Session, owner: str, body: JobCreate, settings: Settings) -> NewJob:
    protocols = list(dict.fromkeys(DEFAULT_PROTOCOLS if body.evaluate is None else body.evaluate))
    if body.kind == "pretrain":
        return _pretrain(session, owner, settings, body, protocols)
    return _eval(session, owner, settings, body, protocols)


def _pretrain(session: Session, owner: str, settings: Settings, body: JobCreate, protocols: list[str]) -> NewJob:
    errors = []
    try:
        method = get_method(body.method)
    except ConfigError as exc:
        raise invalid([field_error(["body", "method"], str(exc))]) from None
    dataset_name, dataset_path, labelled = _check_dataset(session, owner, settings, body, errors)

    valid_keys = set(common_field_names()) | {f.name for f in dataclasses.fields(method.config_cls)}
    eval_params = _protocol_params(body.config, errors)
    overrides = {k: v for k, v in body.config.items() if k not in protocol_names()}
    for key in overrides:
        if key in DATASET_KEYS or key == "method":
            errors.append(
                field_error(["body", "config", key], f"set {key!r} through the job's dataset/method fields, not config")
            )
        elif key not in valid_keys:
            valid = sorted((valid_keys - set(DATASET_KEYS)) | set(protocol_names()))
            errors.append(
                field_error(
                    ["body", "config", key],
                    f"unknown option for {method.name}{did_you_mean(key, valid)}; valid options: {', '.join(valid)}",
                )
            )
    for key, value in body.dataset.options.items():
        if key not in valid_keys or key in DATASET_KEYS:
            errors.append(
                field_error(
                    ["body", "dataset", "options", key],
                    "unknown data option; data options are config keys such as subset",
                )
            )
        elif key in body.config and body.config[key] != value:
            errors.append(field_error(["body", "dataset", "options", key], f"conflicts with config.{key}"))
        else:
            overrides[key] = value
    _fit_run_time(overrides, settings, errors)
    tracking = _tracking(body, settings, errors)
    _check_webhooks(session, owner, body, errors)
    if errors:
        raise invalid(errors)

    overrides.update(dataset=dataset_name, data=dataset_path)
    if body.eval_dataset is not None:
        name, path, eval_labelled = _check_dataset(session, owner, settings, body, errors, "eval_dataset")
        overrides.update(eval_dataset=name, eval_data=path)
        if not eval_labelled:
            errors.append(field_error(["body", "eval_dataset"], f"{NO_LABELS}; name a labelled data set here"))
    elif not labelled and (protocols or int(overrides.get("knn_every") or 0)):
        errors.append(
            field_error(
                ["body", "eval_dataset"],
                f"the pretraining images have no labels ({NO_LABELS}), so the evaluations and knn_every need a "
                "labelled eval_dataset; name one, or set evaluate to [] and knn_every to 0",
            )
        )
    if errors:
        raise invalid(errors)
    try:
        config = build_config(method.name, overrides)
    except ConfigError as exc:
        message = str(exc)
        key = message.split(" ", 1)[0]
        loc = ["body", "config", key] if key in valid_keys else ["body", "config"]
        raise invalid([field_error(loc, message)]) from None
    if config.nproc > settings.max_nproc:
        raise invalid(
            [
                field_error(
                    ["body", "config", "nproc"],
                    f"nproc must be at most {settings.max_nproc}, the processes a worker of this service runs "
                    f"one job on (CSSL_MAX_NPROC), got {config.nproc}",
                )
            ]
        )
    resources = _resources(body, settings, config.device, config.nproc, config)
    return NewJob(
        kind="pretrain",
        method=method.name,
        dataset=dataset_name,
        dataset_path=dataset_path,
        config={**config.to_dict(), **eval_params, **tracking},
        evaluate=protocols,
        priority=body.priority,
        name=body.name,
        tags=body.tags,
        webhooks=tuple(body.webhooks),
        resources=resources,
    )


def _resources(body: JobCreate, settings: Settings, device: str, nproc: int, config=None) -> dict | None:
    """What the job asks of a worker, as its row stores it (``dispatch.routing``), or None for
    the default queue; ``device`` and ``nproc`` are the run's config values, ``config`` the
    pretraining run's (None: an evaluation)."""
    spec = body.resources
    if spec is None:
        return None
    errors = []
    wanted = spec.device or ("cpu" if device == "cpu" else "gpu")
    if wanted == "cpu" and device.startswith("cuda"):
        errors.append(
            field_error(
                ["body", "resources", "device"],
                f"cpu conflicts with config.device {device!r}; ask for gpu, or set config.device to cpu or auto",
            )
        )
    if wanted == "gpu" and device == "cpu":
        errors.append(
            field_error(
                ["body", "resources", "device"],
                "gpu conflicts with config.device 'cpu'; ask for cpu, or set config.device to cuda or auto",
            )
        )
    devices = spec.devices or nproc
    if wanted == "gpu" and devices < nproc:
        errors.append(
            field_error(
                ["body", "resources", "devices"],
                f"config.nproc {nproc} runs one process per GPU, so the job needs at least {nproc} devices",
            )
        )
    if spec.nodes > 1:
        errors.extend(_nodes_errors(spec.nodes, settings, nproc, config))
    if errors:
        raise invalid(errors)
    return Resources(wanted, devices, spec.nodes, spec.memory_gib, spec.pool).stored()


def _nodes_errors(nodes: int, settings: Settings, nproc: int, config) -> list:
    """Why a job cannot run on ``nodes`` workers at once, if it cannot."""
    loc = ["body", "resources", "nodes"]
    if nodes > settings.max_nodes:
        return [field_error(loc, f"nodes must be at most {settings.max_nodes} (CSSL_MAX_NODES), got {nodes}")]
    if config is None:
        return [field_error(loc, "an evaluation runs on one node; leave nodes out or set it to 1")]
    if not get_method(config.method).distributed:
        able = [name for name in method_names() if get_method(name).distributed]
        return [
            field_error(
                loc,
                f"{config.method} runs on one process only, so on one node; leave nodes out or set it to 1 "
                f"(the methods that run on several are: {', '.join(able) or 'none yet'})",
            )
        ]
    processes = nodes * nproc
    if config.batch_size % processes:
        return [
            field_error(
                loc,
                f"batch_size {config.batch_size} (the global batch) does not split evenly over {nodes} nodes of "
                f"{nproc} process{'es' if nproc > 1 else ''}; use a multiple of {processes}",
            )
        ]
    return []


def _tracking(body: JobCreate, settings: Settings, errors: list) -> dict[str, dict]:
    """The job's tracking overrides as its config stores them (``{TRACKING_KEY: {...}}``, or
    nothing); a sink turned on without a server or project, here or in the settings, is an error."""
    if body.tracking is None:
        return {}
    stored = body.tracking.model_dump(exclude_none=True)
    mlflow, wandb = stored.get("mlflow"), stored.get("wandb")
    if isinstance(mlflow, dict) and not (mlflow.get("tracking_uri") or settings.mlflow_tracking_uri):
        errors.append(
            field_error(
                ["body", "tracking", "mlflow", "tracking_uri"],
                "the service has no MLflow server (CSSL_MLFLOW_TRACKING_URI is unset); name one here",
            )
        )
    if isinstance(wandb, dict) and not (wandb.get("project") or settings.wandb_project):
        errors.append(
            field_error(
                ["body", "tracking", "wandb", "project"],
                "the service has no W&B project (CSSL_WANDB_PROJECT is unset); name one here",
            )
        )
    return {TRACKING_KEY: stored} if stored else {}


def _check_webhooks(session: Session, owner: str, body: JobCreate, errors: list) -> None:
    """Each endpoint the job names must be one of the owner's; another's reads as one that does not exist."""
    for webhook_id in webhooks.unknown_webhooks(session, owner, body.webhooks):
        errors.append(
            field_error(
                ["body", "webhooks", body.webhooks.index(webhook_id)],
                f"no webhook {webhook_id}; list yours with GET /v1/webhooks",
            )
        )


def _fit_run_time(overrides: dict, settings: Settings, errors: list) -> None:
    """A job runs for at most CSSL_MAX_RUN_SECONDS: one that asks for a longer time_budget is
    refused, one that asks for none gets that one (its schedules are fitted to it)."""
    most = settings.max_run_seconds
    if not most:
        return
    budget = overrides.get("time_budget")
    if budget is None:
        overrides["time_budget"] = most
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > most:
        errors.append(
            field_error(
                ["body", "config", "time_budget"],
                f"at most {most:g} seconds, the service's maximum "
                "run time (CSSL_MAX_RUN_SECONDS); ask for less, or leave it out to get the maximum",
            )
        )


def _protocol_params(config: dict, errors: list) -> dict[str, dict]:
    """The protocol parameter objects in ``config``, typed and checked; the given keys only."""
    checked = {}
    for protocol in protocol_names():
        if protocol not in config:
            continue
        value = config[protocol]
        if not isinstance(value, dict):
            errors.append(
                field_error(
                    ["body", "config", protocol],
                    f'{protocol} takes an object of protocol parameters, e.g. {{"k": 200}}',
                )
            )
            continue
        try:
            params = protocol_params(protocol, value)
        except ConfigError as exc:
            errors.append(field_error(["body", "config", protocol], str(exc)))
            continue
        checked[protocol] = {name: getattr(params, name) for name in value}
    return checked


def _check_dataset(
    session: Session, owner: str, settings: Settings, body: JobCreate, errors: list, field: str = "dataset"
) -> tuple[str, str | None, bool]:
    """The data set's name and its data path: the user's path, or ``uploads/<id>`` for an upload
    of theirs; either must resolve inside the data roots and hold the data set's files.
    ``field``: the body's field that names it (dataset, or eval_dataset). The flag: whether its
    files hold labels (True where that is not known)."""
    catalog = {d["name"]: d for d in describe_datasets()}
    spec = getattr(body, field)
    info = catalog.get(spec.name)
    if info is None:
        errors.append(
            field_error(["body", field, "name"], f"unknown data set {spec.name!r}; known: {', '.join(sorted(catalog))}")
        )
    if spec.upload is not None:
        loc = ["body", field, "upload"]
        upload = datasets.usable_dataset(session, spec.upload, owner)
        if upload is None and (not_ready := datasets.get_dataset(session, spec.upload, owner)) is not None:
            raise ProblemError(409, _not_ready(not_ready))
        if upload is None:
            errors.append(field_error(loc, f"no upload {spec.upload}; list yours with GET /v1/datasets/uploads"))
            return spec.name, None, True
        path = upload.path
    elif spec.path:
        loc, path = ["body", field, "path"], spec.path
    else:
        if info is not None and info["needs_path"]:
            errors.append(
                field_error(
                    ["body", field, "path"],
                    f"the data set {spec.name!r} needs a path in the service's "
                    "data folder (e.g. cifar10-jpeg.tar.gz) or an upload",
                )
            )
        return spec.name, None, True
    if info is None:
        return spec.name, path, True
    if not info["needs_path"]:
        errors.append(field_error(loc, f"the data set {spec.name!r} takes no files; leave out path and upload"))
        return spec.name, None, True
    if spec.upload is not None:
        resolved = data_roots.resolve_upload(settings, spec.upload)
    else:
        resolved = data_roots.resolve_data_path(settings, path)
    if resolved is None:
        gone = f"upload {spec.upload}'s files are gone; upload it again"
        errors.append(field_error(loc, UNREADABLE_PATH if spec.upload is None else gone))
        return spec.name, path, True
    labelled = True
    try:
        labelled = dataset_has_labels(spec.name, locate_dataset(spec.name, resolved))
    except DataError:
        errors.append(field_error(loc, f"the files there are not laid out as {spec.name} needs: {info['description']}"))
    return spec.name, path, labelled


def _not_ready(upload: Dataset) -> str:
    url = f"GET /v1/datasets/uploads/{upload.id}"
    if upload.status == "unpacking":
        return f"upload {upload.id} is still unpacking; submit the job once {url} says ready"
    if upload.status == "failed":
        return f"upload {upload.id} failed to unpack ({upload.error}); fix the archive and upload it again"
    return f"upload {upload.id} is being deleted; upload the data set again"


def _eval(session: Session, owner: str, settings: Settings, body: JobCreate, protocols: list[str]) -> NewJob:
    errors = []
    if not protocols:
        errors.append(
            field_error(["body", "evaluate"], "an eval job needs at least one protocol: " + ", ".join(protocol_names()))
        )
    eval_keys = [*EVAL_CONFIG_KEYS, *protocol_names()]
    for key in body.config:
        if key not in eval_keys:
            errors.append(field_error(["body", "config", key], f"an eval job's config takes {', '.join(eval_keys)}"))
    eval_params = _protocol_params(body.config, errors)
    tracking = _tracking(body, settings, errors)
    _check_webhooks(session, owner, body, errors)

    if body.checkpoint is not None:
        checkpoint = records.get_checkpoint(session, body.checkpoint, owner)
        if checkpoint is None:
            errors.append(
                field_error(
                    ["body", "checkpoint"], f"no checkpoint {body.checkpoint}; list yours with GET /v1/checkpoints"
                )
            )
        source = jobs.get_job(session, checkpoint.job_id) if checkpoint else None
    else:
        source = jobs.get_job(session, body.job, owner)
        checkpoint = None
        if source is None:
            errors.append(field_error(["body", "job"], f"no job {body.job}; list yours with GET /v1/jobs"))
        elif source.kind != "pretrain" or source.status != "succeeded":
            errors.append(
                field_error(
                    ["body", "job"],
                    f"job {source.id} is a {source.status} {source.kind} job; "
                    "name a succeeded pretrain job, or a checkpoint",
                )
            )
        else:
            checkpoint = records.latest_checkpoint(session, source.id)
            if checkpoint is None:
                errors.append(field_error(["body", "job"], f"job {source.id} recorded no checkpoint"))
    dataset_name, dataset_path = (source.dataset, source.dataset_path) if source else ("", None)
    if source is not None and source.config.get("eval_dataset"):  # the run's own evaluation set
        dataset_name, dataset_path = source.config["eval_dataset"], source.config.get("eval_data")
    if body.dataset is not None:
        dataset_name, dataset_path, labelled = _check_dataset(session, owner, settings, body, errors)
        if not labelled:
            errors.append(field_error(["body", "dataset"], f"{NO_LABELS}; evaluations need a labelled data set"))
    elif (upload := data_roots.upload_id(dataset_path)) and datasets.usable_dataset(session, upload, owner) is None:
        errors.append(
            field_error(["body", "dataset"], f"the pretraining data, upload {upload}, was deleted; name a data set")
        )
    if errors:
        raise invalid(errors)
    return NewJob(
        kind="eval",
        method=source.method,
        dataset=dataset_name,
        dataset_path=dataset_path,
        config={**({"device": body.config["device"]} if "device" in body.config else {}), **eval_params, **tracking},
        evaluate=protocols,
        priority=body.priority,
        source_checkpoint_id=checkpoint.id,
        name=body.name,
        tags=body.tags,
        webhooks=tuple(body.webhooks),
        resources=_resources(body, settings, str(body.config.get("device", "auto")), 1),
    )

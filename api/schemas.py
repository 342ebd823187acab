"""Request and response shapes of the HTTP API (the tables are in ``store/models.py``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)

from cssl_core.data import dataset_names
from cssl_core.evaluation import protocol_names
from cssl_core.methods import method_names
from cssl_core.provenance import GROUP_KEYS
from dispatch.routing import MAX_DEVICES, POOL_PATTERN
from store.models import WEBHOOK_DEFAULT_EVENTS
from store.settings import tracking_uri_problem

JobKind = Literal["pretrain", "eval"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Protocol = Literal[tuple(protocol_names())]  # type: ignore[valid-type]
ProvenanceGroup = Literal[GROUP_KEYS]  # type: ignore[valid-type]

# Bounds of what a request may name, so that an out-of-range number is a 422 and never reaches
# the database: checkpoint ids, offsets and event numbers are Postgres `integer`s, job ids uuid4 hex.
MAX_ROW_ID = 2**31 - 1
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
WEBHOOK_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_JOB_WEBHOOKS = 8


def _each_once(protocols: list[str]) -> list[str]:
    repeated = sorted({p for p in protocols if protocols.count(p) > 1})
    if repeated:
        raise ValueError(f"each protocol at most once; repeated: {', '.join(repeated)}")
    return protocols


def _no_nul(value: Any) -> Any:
    # Postgres stores no NUL in text or JSON, and a free-form config value would take it there.
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("text may not contain NUL (\\u0000)")
    for item in (
        [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else ()
    ):
        _no_nul(item)
    return value


ConfigValues = Annotated[dict[str, Any], AfterValidator(_no_nul)]

# Names and tag values are one line of printable text; tag keys are identifiers.
TAG_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
JobName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=_ONE_LINE)]
TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=200, pattern=_ONE_LINE)]
MAX_TAGS = 32
Tags = Annotated[
    dict[TagKey, TagValue],
    Field(
        max_length=MAX_TAGS,
        description=f"Key/value labels to find the job by (at most {MAX_TAGS})",
        json_schema_extra={"additionalProperties": False},
    ),
]

PRETRAIN_EXAMPLE = {
    "kind": "pretrain",
    "method": "simclr",
    "dataset": {"name": "cifar10", "path": "cifar10-jpeg.tar.gz"},
    "config": {"epochs": 200, "backbone": "resnet18", "batch_size": 512},
    "evaluate": ["knn", "linear"],
    "priority": 5,
    "name": "simclr r18 baseline",
    "tags": {"project": "pets", "sweep": "lr"},
}
# Runs anywhere: generated images, no files needed.
TRY_EXAMPLE = {
    "kind": "pretrain",
    "method": "simclr",
    "dataset": {"name": "synthetic"},
    "config": {"backbone": "small", "epochs": 1},
    "evaluate": ["knn"],
}
EVAL_EXAMPLE = {
    "kind": "eval",
    "job": "9f1c2e7a5b3d4e6f8a0b1c2d3e4f5a6b",
    "evaluate": ["linear"],
    "config": {"linear": {"epochs": 50}},
}


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="A name from GET /v1/datasets", examples=["cifar10"], json_schema_extra={"enum": dataset_names()}
    )
    path: str | None = Field(
        None,
        description="For data sets that need files: a file or folder under the service's data roots; "
        "a relative path is relative to the first root; webdataset shards may be a URL (s3://bucket/prefix) "
        "under a data root that is a bucket prefix",
        examples=["cifar10-jpeg.tar.gz"],
    )
    upload: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{32}$",
        description="Instead of a path: the id of one of your uploads (POST /v1/datasets/uploads)",
    )
    options: ConfigValues = Field(
        default_factory=dict,
        description='Data options that are config keys, e.g. {"subset": 5000}',
        examples=[{"subset": 5000}],
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if self.path is not None and self.upload is not None:
            raise ValueError("a data set comes from a path or from an upload, not both")
        return self


def _job_tracking_uri(uri: str | None) -> str | None:
    if uri is not None and (problem := tracking_uri_problem(uri)):
        raise ValueError(problem)
    return uri


class MlflowTracking(BaseModel):
    """A job's MLflow run: where, and in which experiment (each left out: the service's)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: Annotated[str | None, AfterValidator(_no_nul), AfterValidator(_job_tracking_uri)] = Field(
        None,
        max_length=2000,
        description="An MLflow tracking server, http(s)://host[:port]; default CSSL_MLFLOW_TRACKING_URI. "
        "Credentials go in the workers' environment, not here",
        examples=["http://mlflow:5000"],
    )
    experiment: Annotated[str | None, AfterValidator(_no_nul)] = Field(
        None, min_length=1, max_length=500, description="Default CSSL_MLFLOW_EXPERIMENT"
    )


class WandbTracking(BaseModel):
    """A job's Weights & Biases run (each field left out: the service's)."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[^/\\#?%:\x00]+$",
        description="Default CSSL_WANDB_PROJECT; no / \\ # ? % or :",
    )
    mode: Literal["online", "offline"] | None = Field(None, description="Default CSSL_WANDB_MODE")


def _object_or_false(model: type[BaseModel]) -> WrapValidator:
    # Validated as the object unless false, so that a 422 names the object's field, not a union branch.
    def validate(value: Any, handler) -> Any:
        if value is False or value is None or isinstance(value, model):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"an object of {', '.join(model.model_fields)}, or false to turn it off")
        return model.model_validate(value)

    return WrapValidator(validate)


class TrackingSpec(BaseModel):
    """Per job, overrides of the service's tracking servers: an object changes a sink's fields,
    false turns it off for this job, left out keeps the service's."""

    model_config = ConfigDict(extra="forbid")

    mlflow: Annotated[MlflowTracking | Literal[False] | None, _object_or_false(MlflowTracking)] = None
    wandb: Annotated[WandbTracking | Literal[False] | None, _object_or_false(WandbTracking)] = None


WebhookId = Annotated[str, StringConstraints(pattern=WEBHOOK_ID_PATTERN)]


def _once_each(values: list) -> list:
    return list(dict.fromkeys(values))


def _pool_name(pool: str | None) -> str | None:
    if pool is not None and not re.fullmatch(POOL_PATTERN, pool):
        raise ValueError(
            f"a pool is 1 to 32 lower-case letters, digits, _ and -, starting with a letter or digit, got {pool!r}"
        )
    return pool


class ResourcesSpec(BaseModel):
    """What a job needs of a worker; it picks the job's queue (README.md, "Run a fleet of workers")."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"device": "gpu", "devices": 2}]})

    device: Literal["cpu", "gpu"] | None = Field(
        None, description="cpu or gpu; default: cpu when config.device is cpu, else gpu"
    )
    devices: int | None = Field(
        None, ge=1, le=MAX_DEVICES, description="GPUs (or CPU processes) per node; default: config.nproc"
    )
    nodes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Workers (hosts) the job runs on at once, each with its config.nproc processes; more than 1 "
        "for the methods that run on several processes, at most CSSL_MAX_NODES",
    )
    memory_gib: float | None = Field(
        None, gt=0, le=1_000_000, description="Host memory the job needs, GiB; a worker that offers less does not fit"
    )
    pool: Annotated[str | None, AfterValidator(_pool_name)] = Field(
        None,
        description="A named pool of workers (their --queues gpu-<pool> or cpu-<pool>), e.g. a100",
        json_schema_extra={"pattern": POOL_PATTERN},
    )


class ResourcesPublic(BaseModel):
    device: Literal["cpu", "gpu"]
    devices: int
    nodes: int
    memory_gib: float | None = None
    pool: str | None = None


class JobCreate(BaseModel):
    """A pretraining job (method + dataset + config), or an evaluation of a checkpoint."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [PRETRAIN_EXAMPLE, EVAL_EXAMPLE]})

    kind: JobKind = "pretrain"
    method: str | None = Field(
        None, description="Pretrain: a name from GET /v1/methods", json_schema_extra={"enum": [*method_names(), None]}
    )
    dataset: DatasetSpec | None = Field(None, description="Pretrain: required. Eval: defaults to the pretraining data")
    eval_dataset: DatasetSpec | None = Field(
        None,
        description="Pretrain: the labelled data set of kNN during training and the final evaluations, brought to "
        "the training resolution; default: the pretraining data, which then needs labels (train/<class>/, "
        "test/<class>/). Needed when pretraining on unlabelled images",
    )
    config: ConfigValues = Field(
        default_factory=dict,
        description="Pretrain: overrides of the method's config, with the CLI's option names (see "
        "GET /v1/methods), and parameters of the final evaluations. Eval: `device` and per-protocol "
        'parameters. Protocol parameters are objects, e.g. {"knn": {"k": 200}, "linear": {"epochs": 50}, '
        '"finetune": {"label_fraction": 0.01}}',
    )
    evaluate: Annotated[list[Protocol], AfterValidator(_each_once)] | None = Field(
        None,
        max_length=len(protocol_names()),
        description="Protocols to run on the final checkpoint, each at most once; default knn and linear; [] for none",
    )
    checkpoint: int | None = Field(None, ge=1, le=MAX_ROW_ID, description="Eval: the checkpoint to evaluate")
    job: str | None = Field(
        None, pattern=JOB_ID_PATTERN, description="Eval: a succeeded pretrain job whose final checkpoint to evaluate"
    )
    priority: int = Field(5, ge=0, le=9, description="0 (lowest) to 9 (highest)")
    name: JobName | None = Field(None, description="A label for people; need not be unique")
    tags: Tags = Field(default_factory=dict)
    tracking: TrackingSpec | None = Field(
        None,
        description="Where the worker logs the run besides the service, overriding CSSL_MLFLOW_* and "
        'CSSL_WANDB_*, e.g. {"mlflow": {"experiment": "ablations"}, "wandb": false}',
    )
    webhooks: Annotated[list[WebhookId], AfterValidator(_once_each)] = Field(
        default_factory=list,
        max_length=MAX_JOB_WEBHOOKS,
        description="Ids of your webhook endpoints (POST /v1/webhooks) that hear of this job's events even "
        'if they were registered with jobs "named"; those registered with jobs "all" hear of it anyway',
    )
    resources: ResourcesSpec | None = Field(
        None,
        description="What the job needs of a worker, which picks its queue: cpu or gpu, GPUs per node, memory, a "
        "pool. Absent: the default queue, which workers started without --queues take",
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> JobCreate:
        if self.kind == "pretrain":
            missing = [name for name in ("method", "dataset") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"a pretrain job needs {' and '.join(missing)}")
            if self.checkpoint is not None or self.job is not None:
                raise ValueError("checkpoint and job belong to eval jobs; a pretrain job starts from scratch")
        elif self.eval_dataset is not None:
            raise ValueError("eval_dataset belongs to pretrain jobs; an eval job names its data set in dataset")
        elif (self.checkpoint is None) == (self.job is None):
            raise ValueError("an eval job names exactly one of checkpoint (an id) or job (a succeeded pretrain job)")
        return self


class JobUpdate(BaseModel):
    """Rename or retag a job: ``name`` null clears it; ``tags`` merges, a null value removes a key."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "keep", "tags": {"sweep": None, "best": "yes"}}]}
    )

    name: JobName | None = None
    tags: Annotated[
        dict[TagKey, TagValue | None], Field(max_length=MAX_TAGS, json_schema_extra={"additionalProperties": False})
    ] = Field(default_factory=dict)


class Progress(BaseModel):
    epoch: int = Field(description="0-based epoch in progress")
    epochs: int
    step: int = Field(description="optimiser steps done")
    total_steps: int
    loss: float | None = None
    lr: float | None = None
    images_per_second: float | None = None
    elapsed: float | None = Field(None, description="training seconds so far")


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
    queued_seconds: float | None = Field(None, description="from submission to the first start")
    run_seconds: float | None = Field(None, description="from the first start to the end, or to now")


class DatasetPublic(BaseModel):
    name: str
    path: str | None = None
    upload: str | None = Field(None, description="The upload the job reads, when it names one")


class JobLinks(BaseModel):
    self: str
    events: str
    metrics: str
    logs: str
    checkpoints: str
    evaluations: str


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    status: JobStatus
    name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    method: str
    dataset: DatasetPublic
    config: dict[str, Any] = Field(description="The full resolved config, enough to reproduce the run")
    evaluation_parameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The config's keys that are evaluation protocols' parameters, by protocol "
        '({"knn": {"k": 20}}); every other config key is the run\'s',
    )
    evaluate: list[Protocol]
    priority: int
    checkpoint: int | None = Field(None, description="Eval jobs: the checkpoint evaluated")
    attempt: int = Field(description="1 on the first run; more after a worker was lost")
    worker: str | None = None
    cancel_requested: bool
    error: str | None = Field(None, description="Why the job failed, and what to change")
    progress: Progress | None = None
    latest_metrics: dict[str, float | None] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = Field(
        None,
        description="What the latest attempt ran with, recorded by the worker when it started (null before): "
        "code (git commit or package version; code_source, code_dirty), python, torch, torchvision, cuda and "
        "cudnn (null on CPU builds), device (GPU name or CPU model) and device_type, determinism (torch's "
        "deterministic algorithms, cudnn benchmark and deterministic, TF32), host, and data (dataset, path, "
        "image_size and a fingerprint: a sha256 of a data set's file index, or of a built-in one's name and size)",
    )
    timings: Timings
    links: JobLinks
    webhooks: list[str] = Field(default_factory=list, description="The webhook endpoints the job named")
    resources: ResourcesPublic | None = Field(None, description="What the job asked for; null: the default queue")
    waiting_reason: str | None = Field(
        None,
        description="A queued job that no running worker can take says why, e.g. `waiting for a worker with 4 "
        "GPUs; none of the 2 running workers fits`; null when a worker that fits is running (or the job is not queued)",
    )


class JobList(BaseModel):
    items: list[JobPublic]
    next: str | None = Field(
        None, description="The next page (the same filters and a cursor after this page's last job), or null"
    )


class MetricPoint(BaseModel):
    step: int | None = Field(description="optimiser steps done; null for knn_top1")
    epoch: int
    value: float | None
    time: float | None = Field(None, description="seconds since the job was first claimed: wall time, across resumes")


class JobMetrics(BaseModel):
    job_id: str
    series: dict[str, list[MetricPoint]] = Field(
        description="loss, lr, images_per_second, the method's statistics per step; knn_top1 per evaluation epoch. "
        "Each in step order; with ?points=N, at most N points per step series (knn_top1 stays whole)"
    )


class CheckpointPublic(BaseModel):
    id: int
    job_id: str
    epoch: int = Field(description="completed epochs")
    step: int
    final: bool
    size_bytes: int
    created_at: datetime
    download: str


class EvaluationPublic(BaseModel):
    id: int
    job_id: str
    checkpoint_id: int | None = Field(None, description="null for periodic kNN during training")
    protocol: Protocol
    top1: float | None = Field(description="percent; null for a result without an accuracy (embedding)")
    top5: float | None = None
    epoch: int | None = Field(None, description="epochs of training the backbone had")
    dataset: str
    parameters: dict[str, Any]
    num_train: int = Field(description="labelled training images the protocol used")
    num_test: int
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="what the protocol reports besides accuracy, "
        "e.g. distill's teacher_top1, finetune's num_labelled and steps, or embedding's "
        "reduction, points ([x, y, label] rows) and classes (the names labels index)",
    )
    created_at: datetime


class LeaderboardRow(BaseModel):
    """A method's best final evaluation on a data set under a protocol, with what its pretraining cost."""

    method: str
    dataset: str = Field(description="The data set evaluated on")
    protocol: Protocol
    backbone: str | None = None
    top1: float = Field(description="percent")
    top5: float | None = None
    job_id: str = Field(description="The pretrain job whose final checkpoint was evaluated")
    checkpoint_id: int
    evaluation_id: int
    train_seconds: float | None = Field(None, description="The pretrain job's training time")
    images_per_second: float | None = Field(None, description="Its training throughput")
    epochs: float | None = Field(None, description="Epochs of pretraining completed")
    batch_size: int | None = None
    group: str | None = Field(
        None,
        description="With group_by: the pretrain job's value of that provenance key (null: not recorded)",
    )


class MethodPublic(BaseModel):
    name: str
    paper: str
    arxiv: str | None = None
    defaults: dict[str, Any] = Field(description="Every config key with the paper's default, for this method")
    small_image_recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="Values used instead of the paper's on images of 64 px or less (recipe=auto), measured here",
    )
    vit_defaults: dict[str, Any] = Field(default_factory=dict, description="Values used when the backbone is a ViT")
    config_schema: dict[str, Any] = Field(
        description="JSON schema of every key a job's config takes for this method "
        "(the run's common keys, then the method's own), with each key's valid range"
    )


class ProtocolPublic(BaseModel):
    name: str = Field(description="What a job's `evaluate` names")
    summary: str = Field(description="One line: what the protocol measures")
    needs: Literal["features", "checkpoint"] = Field(
        description="features: the frozen features of the backbone; checkpoint: the whole checkpoint"
    )
    trains_encoder: bool = Field(description="true: the encoder itself trains (fine-tuning, distillation)")
    backbone: Literal["any", "vit"] = Field(description="the backbones it takes: any, or ViTs only")
    accuracy: bool = Field(description="true: a result has top1 (and top5); false: a result has only `extra`")
    extra: dict[str, str] = Field(description="The keys of a result's `extra`, each with what it holds")
    parameters: dict[str, Any] = Field(description="Each parameter's default; a job sets them in config.<name>")
    parameters_schema: dict[str, Any] = Field(description="JSON schema of the parameters, with each one's valid range")


class DatasetInfo(BaseModel):
    name: str
    description: str
    needs_path: bool
    image_size: int | None = Field(None, description="The side of its square images (the default where resizable)")
    resizable: bool = Field(
        False, description="Images of any size: a job's config.image_size sets the side they are brought to"
    )
    recipe: Literal["small_images", "paper"] | None = Field(
        None,
        description="The recipe a job's recipe=auto resolves to on these images: small_images (a method's "
        "small_image_recipe) at 64 px or less, paper above; null where the image size is unknown",
    )


class UploadPublic(BaseModel):
    id: str = Field(description='What a job names: {"dataset": {"name": "imagefolder", "upload": id}}')
    name: str
    status: Literal["unpacking", "ready", "failed", "deleting"] = Field(
        description="unpacking after the archive arrived, then ready (jobs may name it) or failed (see error)"
    )
    sha256: str = Field(description="Of the archive as received")
    size_bytes: int = Field(description="The archive's size")
    num_files: int = Field(description="Files unpacked from it (0 until ready)")
    created_at: datetime
    error: str | None = Field(None, description="Why it failed, and what to do")
    unpacked_bytes: int | None = Field(
        None,
        description="What its files take on disk once unpacked: this counts "
        "against your quota (the archive's size, until then)",
    )


# What a webhook's URL may be: http(s), a host name or IP address, a port, a path; no user or password.
WEBHOOK_URL_PATTERN = r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#][\x21-\x7e]*)?$"
WEBHOOK_EXAMPLE = {
    "url": "https://ci.example.org/hooks/cssl",
    "description": "tell CI",
    "events": ["succeeded", "failed"],
}


def _webhook_url(url: str) -> str:
    parts = urlsplit(url)  # a malformed host raises ValueError: a 422
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError(
            "must not hold a user or password: the URL is shown in listings; let the receiver check the signature"
        )
    parts.port  # noqa: B018 (raises on a port that is not a number, or past 65535)
    if not parts.hostname:
        raise ValueError("must name a host, e.g. https://ci.example.org/hooks/cssl")
    if not re.fullmatch(WEBHOOK_URL_PATTERN, url):
        raise ValueError("must be http(s)://host[:port][/path], in printable ASCII with no spaces")
    return url


WebhookUrl = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2000),
    AfterValidator(_webhook_url),
    WithJsonSchema({"type": "string", "format": "uri", "maxLength": 2000, "pattern": WEBHOOK_URL_PATTERN}),
]


class WebhookCreate(BaseModel):
    """An endpoint that hears of job events. ``jobs`` all: every job of yours; named: only the
    jobs that name it in their ``webhooks``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [WEBHOOK_EXAMPLE]})

    url: WebhookUrl = Field(description="Where events are POSTed; http(s), no user or password in it")
    description: str | None = Field(None, max_length=500, pattern=_ONE_LINE)
    events: Annotated[list[JobStatus], AfterValidator(_once_each)] = Field(
        default_factory=lambda: list(WEBHOOK_DEFAULT_EVENTS),
        min_length=1,
        max_length=10,
        description="The job statuses it hears of (event type job.<status>); default succeeded, failed, cancelled",
    )
    jobs: Literal["all", "named"] = Field(
        "all", description="all: every job of yours; named: only jobs whose `webhooks` name this endpoint"
    )


class WebhookLinks(BaseModel):
    self: str
    deliveries: str
    test: str


class WebhookPublic(BaseModel):
    id: str
    url: str
    description: str | None = None
    events: list[JobStatus]
    jobs: Literal["all", "named"]
    created_at: datetime
    links: WebhookLinks


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="whsec_<base64>: the key of the messages' signatures (Standard Webhooks). "
        "Shown this once; keep it with the receiver"
    )


class WebhookMessagePublic(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every attempt")
    type: str = Field(description="job.<status>, or ping")
    job_id: str | None = None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: datetime


class WebhookDeliveryPublic(BaseModel):
    """One attempt to deliver a message."""

    id: int
    message_id: str = Field(description="The webhook-id header sent")
    type: str = Field(description="job.<status>, or ping")
    job_id: str | None = None
    attempt: int = Field(description="1 for the first try")
    status_code: int | None = Field(None, description="The receiver's answer; null when there was none (see error)")
    error: str | None = Field(None, description="Why the attempt failed, when it did")
    duration_ms: int
    created_at: datetime
    message_status: Literal["pending", "delivered", "failed"] = Field(
        description="Where the message stands now: pending (another attempt is due), delivered, or failed (gave up)"
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unreachable"]
    broker: Literal["ok", "unreachable"]
    mode: Literal["embedded", "production"]
    authentication: Literal["on", "off"]
    warnings: list[str] = Field(default_factory=list)


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="422: one entry per bad field, with its loc")
    retry_after: int | None = Field(None, description="429: seconds until a retry can succeed, as in `Retry-After`")

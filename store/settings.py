"""One settings object, read from the environment once per process.

Each field is the variable ``CSSL_<FIELD>`` (pydantic-settings); an empty variable counts as
unset. With neither ``CSSL_DATABASE_URL`` nor ``CSSL_BROKER_URL`` set the service is
*embedded*: a SQLite file and Celery's file-system transport under ``CSSL_STATE_DIR``
(default ``./.state``), so ``cssl serve`` needs nothing else installed. In production both
URLs point at Postgres and Redis. ``cssl settings`` prints what is in effect.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from store.artifacts import ArtifactStore, is_url

ENV_PREFIX = "CSSL_"


class SettingsError(RuntimeError):
    """The environment describes a service that cannot be started; the message says why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    state_dir: Path = Field(
        Path(".state"), description="embedded database (cssl.db), queue (queue/) and, by default, artifacts"
    )
    database_url: str = Field(
        "", description="SQLite in the state folder unless set; postgresql://user:pass@host/db in production"
    )
    broker_url: str = Field(
        "filesystem://", description="file queue in the state folder unless set; redis://host:6379/0 in production"
    )
    artifact_root: str = Field(
        "",
        description="checkpoints and job logs, shared by API and workers: a folder (default: STATE_DIR/artifacts) "
        "or an object-store URL such as s3://bucket/prefix",
    )
    auth_disabled: bool = Field(
        False, description="switch tokens off; refused unless the database is the embedded SQLite file"
    )
    local_owner: str = Field("local", description="the owner every request acts as when authentication is off")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text, or json: one JSON object per line (time, level, logger, message, and the job, "
        "attempt, rank and worker of a job's lines) from the API and the workers",
    )
    queue: str = Field(
        "cssl",
        min_length=1,
        description="the Celery queue of jobs without resources, and the prefix of the others' (cssl.gpu.2)",
    )
    worker_queues: str = Field(
        "",
        description="a worker's kinds of jobs, separated by ',': default (jobs without resources), cpu, gpu, "
        "cpu-<pool>, gpu-<pool>; empty: default (`cssl worker --queues`)",
    )
    worker_devices: str = Field(
        "", description="a worker's GPU indices, separated by ',', which its jobs see (`cssl worker --devices`)"
    )
    worker_memory_gib: float = Field(
        0, ge=0, description="host memory a worker offers its jobs, GiB; 0: not stated (`cssl worker --memory-gib`)"
    )
    node_address: str = Field(
        "",
        description="the address other hosts reach this worker at, where a job on several nodes meets "
        "(torch's c10d rendezvous); empty: the address of the host's default route",
    )
    rendezvous_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds the nodes of a job on several nodes wait for each other; past it the attempt "
        "is given back to the queue like a lost worker's",
    )
    max_nodes: int = Field(
        8, ge=1, le=1024, description="the most nodes (resources.nodes, workers at once) one job runs on"
    )
    heartbeat_timeout: float = Field(
        60.0, gt=0, description="seconds: a running job whose worker is silent this long is re-queued"
    )
    heartbeat_interval: float = Field(2.0, gt=0, description="seconds between a running job's heartbeats")
    republish_after: float = Field(
        600.0, gt=0, description="seconds: a queued job whose message was not taken this long is published again"
    )
    sweep_interval: float = Field(
        10.0, gt=0, description="seconds between the API's re-publishing and re-queueing sweeps"
    )
    max_attempts: int = Field(
        3, ge=1, description="a job fails after that many lost attempts in a row without a new checkpoint"
    )
    progress_every: int = Field(10, ge=1, description="optimiser steps between progress writes")
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="port of a worker's own Prometheus metrics (0: not served)"
    )
    database_retry_window: float = Field(
        300.0,
        gt=0,
        description="seconds a worker waits for an unreachable database "
        "before it gives its running job back to the queue",
    )
    progress_buffer: int = Field(
        10_000,
        ge=1,
        description="progress points a worker keeps in memory while the "
        "database is unreachable; when full, training waits for the database",
    )
    submit_rate: float = Field(
        60.0,
        ge=0,
        description="job submissions and uploads per minute per owner, shared by "
        "every API process on one CSSL_LIMITS_URL; 0: no limit",
    )
    submit_burst: int = Field(
        20, ge=1, description="submissions an owner may make at once before CSSL_SUBMIT_RATE applies"
    )
    limits_url: str = Field(
        "",
        description="Redis holding the rate limits' counters (default: CSSL_BROKER_URL when "
        "it is Redis, else in the API process's memory)",
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=0,
        description="unknown or revoked tokens a client address may send in a minute before it gets 429; 0: no limit",
    )
    max_event_streams: int = Field(
        10, ge=0, description="event streams (GET /v1/jobs/{id}/events) an owner may hold open at once; 0: no limit"
    )
    max_queued_jobs: int = Field(
        100, ge=0, description="queued jobs an owner may have; a submission past it is a 429; 0: no limit"
    )
    max_running_jobs: int = Field(
        4,
        ge=0,
        description="jobs of one owner that run at once; the others wait in the queue until one ends; 0: no limit",
    )
    max_nproc: int = Field(
        8,
        ge=1,
        le=1024,
        description="the most processes (config.nproc) one job runs on, on one worker: one per GPU, or "
        "gloo processes sharing a CPU",
    )
    max_run_seconds: float = Field(
        86400.0,
        ge=0,
        description="seconds one attempt of a job may run on a worker, its "
        "evaluations included; a job with no time_budget gets this one; 0: no limit",
    )
    data_roots: Annotated[tuple[Path | str, ...], NoDecode] = Field(
        (),
        description="folders, or bucket prefixes (s3://bucket/prefix), jobs may read data from, separated by "
        "':' or ','; relative job paths and uploads (uploads/<id>) go under the first folder (default: "
        "STATE_DIR/data)",
    )
    max_upload_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="largest dataset archive POST /v1/datasets/uploads "
        "takes; unpacked, its files may take four times that",
    )
    max_upload_members: int = Field(
        2_000_000,
        ge=1,
        description="files and folders an uploaded archive may hold (ImageNet's train split: 1.28 M files)",
    )
    max_upload_folders: int = Field(
        100_000, ge=1, description="folders an uploaded archive may unpack into, those its files' paths imply included"
    )
    max_upload_depth: int = Field(16, ge=1, description="folders deep an uploaded archive's paths may go")
    upload_quota_bytes: int = Field(
        50 * 1024**3, ge=0, description="bytes one owner's uploads may take on disk, unpacked; 0: no quota"
    )
    upload_min_free_bytes: int = Field(
        5 * 1024**3,
        ge=0,
        description="uploads are refused, and unpacking stops, "
        "when the uploads folder's disk would have less than this free",
    )
    upload_stale_after: float = Field(
        3600.0, gt=0, description="seconds: partial uploads (uploads/.incoming) untouched this long are removed"
    )
    cache_dir: Path = Field(Path(), description="the workers' decoded-dataset cache (default: STATE_DIR/cache)")
    max_decoded_bytes: int = Field(
        8 * 1024**3,
        ge=1,
        description="most memory a job's data set may take decoded "
        "(images x side x side x 3 bytes), checked before a worker decodes it",
    )
    mlflow_tracking_uri: str = Field(
        "",
        description="MLflow tracking server (http://host:5000) the workers log every job's params, metrics "
        "and final checkpoint to; off when unset. A job's tracking.mlflow overrides it",
    )
    mlflow_experiment: str = Field("cssl", min_length=1, description="the MLflow experiment jobs' runs go to")
    wandb_project: str = Field("", description="Weights & Biases project the workers log every job to; off when unset")
    wandb_mode: Literal["online", "offline"] = Field(
        "offline",
        description="offline: runs are written under CSSL_WANDB_DIR only (upload them with `wandb sync`); "
        "online: sent to W&B, with the API key from the workers' WANDB_API_KEY",
    )
    wandb_dir: Path = Field(Path(), description="the workers' W&B run folders (default: STATE_DIR/wandb)")
    webhook_retry_seconds: Annotated[tuple[float, ...], NoDecode] = Field(
        (5.0, 30.0, 120.0, 600.0, 3600.0),
        description="seconds before each retry of a webhook delivery that got no 2xx, separated by ',' or ':'; "
        "after the last, the delivery is marked failed",
    )
    webhook_timeout: float = Field(10.0, gt=0, description="seconds a webhook receiver has to answer")
    webhook_interval: float = Field(2.0, gt=0, description="seconds between the API's looks for webhooks to send")
    webhook_allow_private: bool = Field(
        True,
        description="webhooks may go to loopback, private and link-local addresses (a lab's own network); "
        "false where the service's owners should not reach its network",
    )

    @model_validator(mode="before")
    @classmethod
    def _under_the_state_folder(cls, data: Any) -> Any:
        # The database, queue and artifacts live in the state folder unless set elsewhere.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        state_dir = Path(data.get("state_dir") or ".state").resolve()
        data["state_dir"] = state_dir
        data["database_url"] = _sqlalchemy_url(str(data.get("database_url") or f"sqlite:///{state_dir / 'cssl.db'}"))
        data["artifact_root"] = _artifact_root(str(data.get("artifact_root") or ""), state_dir)
        data["cache_dir"] = Path(data.get("cache_dir") or state_dir / "cache").resolve()
        data["wandb_dir"] = Path(data.get("wandb_dir") or state_dir / "wandb").resolve()
        data["data_roots"] = _data_roots(data.get("data_roots"), state_dir)
        if isinstance(retries := data.get("webhook_retry_seconds"), str):
            data["webhook_retry_seconds"] = tuple(p.strip() for p in re.split("[,:]", retries) if p.strip())
        return data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.auth_disabled and not self.embedded:
            raise SettingsError(
                "CSSL_AUTH_DISABLED is set but the database is not the embedded SQLite file: "
                "authentication can be switched off only for a local embedded service"
            )
        if self.heartbeat_interval >= self.heartbeat_timeout:
            raise SettingsError("CSSL_HEARTBEAT_INTERVAL must be shorter than CSSL_HEARTBEAT_TIMEOUT")
        if any(not 0 < delay < float("inf") for delay in self.webhook_retry_seconds):
            delays = ",".join(map(str, self.webhook_retry_seconds))
            raise SettingsError(f"CSSL_WEBHOOK_RETRY_SECONDS must be positive numbers, got {delays!r}")
        if self.mlflow_tracking_uri and (problem := tracking_uri_problem(self.mlflow_tracking_uri, service=True)):
            raise SettingsError(f"CSSL_MLFLOW_TRACKING_URI {problem}, got {self.mlflow_tracking_uri!r}")
        return self

    @property
    def embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def queue_folder(self) -> Path:
        return self.state_dir / "queue"

    @property
    def artifacts(self) -> ArtifactStore:
        """The artifact root; for a URL root, with the local folder of the files a worker uses."""
        remote = is_url(self.artifact_root)
        folder = self.state_dir / "artifact-cache" if remote else Path(self.artifact_root)
        return ArtifactStore(self.artifact_root, folder)

    @property
    def data_folders(self) -> tuple[Path, ...]:
        """The data roots that are folders; the first holds relative paths and uploads."""
        return tuple(root for root in self.data_roots if isinstance(root, Path))

    @property
    def data_urls(self) -> tuple[str, ...]:
        """The data roots that are bucket prefixes (fsspec URLs, without a trailing /)."""
        return tuple(root for root in self.data_roots if isinstance(root, str))

    @property
    def uploads_folder(self) -> Path:
        return self.data_folders[0] / "uploads"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from ``os.environ``, or from ``env`` alone when given.

        Raises :class:`SettingsError` naming the variable, what it must be and what it was."""
        try:
            if env is None:
                return cls()
            # model_validate reads no environment of its own: only these values and the defaults.
            values = {
                k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.upper().startswith(ENV_PREFIX) and v != ""
            }
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError("; ".join(_explain(cls, error) for error in exc.errors())) from None

    def with_(self, **changes) -> Settings:
        return self.model_copy(update=changes)

    def public(self) -> dict[str, str]:
        """``CSSL_*`` variable -> the value in effect, passwords in URLs masked."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith(("_url", "_uri")):
                text = mask_password(value)
            elif isinstance(value, bool):
                text = str(value).lower()
            elif name == "webhook_retry_seconds":
                text = ",".join(f"{delay:g}" for delay in value)
            elif isinstance(value, tuple):
                text = os.pathsep.join(map(str, value))
            else:
                text = str(value)
            out[env_name(name)] = text
        return out


@functools.cache
def get_settings() -> Settings:
    return Settings.from_env()


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def mask_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


# What an operator may name: any store the MLflow client reads. A job may name only a server.
_SERVICE_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")
_JOB_SCHEMES = ("http", "https")


def tracking_uri_problem(uri: str, *, service: bool = False) -> str | None:
    """What is wrong with an MLflow tracking URI, or None. A job's may only be an http(s) server
    without a password in it: a file or database URI would have the worker write where the job's
    owner chose, and the job's config is stored and shown in clear."""
    schemes = _SERVICE_SCHEMES if service else _JOB_SCHEMES
    if service and uri == "databricks":  # the Databricks workspace of the workers' profile
        return None
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in schemes:
        return f"must be a URI whose scheme is one of {', '.join(schemes)}"
    if scheme in ("http", "https"):
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError:
            return "has a port that is not a number"
        if not parts.hostname:
            return "must name a host, e.g. http://mlflow:5000"
        if not service and parts.password is not None:
            return (
                "must not hold a password; give the workers MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD instead"
            )
    return None


_WANTED = {
    bool: "a flag (1, true, yes, on or 0, false, no, off)",
    int: "a whole number",
    float: "a number",
    tuple[float, ...]: "numbers separated by ','",
}
_BOUNDS = {"greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}", "string_too_short": "non-empty"}


def _explain(cls: type[Settings], error: dict) -> str:
    if not error["loc"]:
        return error["msg"]
    field = str(error["loc"][0])
    if error["type"] == "literal_error":
        return f"{env_name(field)} must be one of {error['ctx']['expected']}, got {error['input']!r}"
    bound = _BOUNDS.get(error["type"])
    limits = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
    wanted = bound.format(**limits) if bound else _WANTED.get(cls.model_fields[field].annotation, error["msg"])
    return f"{env_name(field)} must be {wanted}, got {error['input']!r}"


def _data_roots(value: Any, state_dir: Path) -> tuple[Path | str, ...]:
    """Folders (absolute paths, in order, at least one: STATE_DIR/data when none is named), then
    bucket prefixes (URLs as given, without a trailing /). ``:`` separates roots except in ``://``."""
    if isinstance(value, str):
        value = re.split(f"(?:,|{re.escape(os.pathsep)}(?!//))", value)
    parts = [str(part).strip() for part in value or () if str(part).strip()]
    urls = tuple(part.rstrip("/") for part in parts if is_url(part))
    return (_folders([p for p in parts if not is_url(p)]) or (state_dir / "data",)) + urls


def _folders(value: Any) -> tuple[Path, ...]:
    """``"/data:/mnt/more"`` or ``"/data,/mnt/more"`` (or a sequence) -> absolute paths, in order."""
    if isinstance(value, str):
        value = re.split(f"[,{re.escape(os.pathsep)}]", value)
    return tuple(Path(str(part).strip()).resolve() for part in value or () if str(part).strip())


def _artifact_root(root: str, state_dir: Path) -> str:
    """A URL as given (without a trailing /), else the folder's absolute path."""
    root = root.removeprefix("file://")
    if is_url(root):
        return root.rstrip("/")
    return str(Path(root or state_dir / "artifacts").resolve())


def _sqlalchemy_url(url: str) -> str:
    # Users write the URL psql understands; SQLAlchemy needs to be told to use psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url

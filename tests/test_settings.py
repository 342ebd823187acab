"""Service settings from the CSSL_* environment: defaults, the rules they obey, errors that
name the variable, and `cssl settings` with passwords masked."""

import os
from pathlib import Path

import pytest

from cli.main import main as cssl
from store.settings import Settings, SettingsError, mask_password


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    # The service tests put their own CSSL_* variables in this process's environment.
    for name in [n for n in os.environ if n.startswith("CSSL_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_an_embedded_service_in_the_state_folder(tmp_path):
    settings = Settings.from_env({})
    assert settings.state_dir == tmp_path / ".state"
    assert settings.database_url == f"sqlite:///{tmp_path / '.state' / 'cssl.db'}"
    assert settings.broker_url == "filesystem://" and settings.embedded
    assert settings.artifact_root == str(tmp_path / ".state" / "artifacts")
    assert settings.queue_folder == tmp_path / ".state" / "queue"
    assert (settings.auth_disabled, settings.local_owner, settings.queue) == (False, "local", "cssl")
    assert (
        settings.heartbeat_timeout,
        settings.heartbeat_interval,
        settings.republish_after,
        settings.sweep_interval,
        settings.max_attempts,
        settings.progress_every,
    ) == (60, 2, 600, 10, 3, 10)


def test_the_environment_sets_every_field(monkeypatch, tmp_path):
    monkeypatch.setenv("CSSL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CSSL_DATABASE_URL", "postgres://cssl:pw@db/cssl")
    monkeypatch.setenv("CSSL_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("CSSL_HEARTBEAT_TIMEOUT", "30")
    monkeypatch.setenv("CSSL_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("CSSL_QUEUE", "")  # empty is unset
    settings = Settings.from_env()
    assert settings.database_url == "postgresql+psycopg://cssl:pw@db/cssl" and not settings.embedded
    assert settings.artifact_root == str(tmp_path / "state" / "artifacts")
    assert (settings.heartbeat_timeout, settings.max_attempts, settings.queue) == (30.0, 5, "cssl")


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("CSSL_HEARTBEAT_TIMEOUT", "soon", "CSSL_HEARTBEAT_TIMEOUT must be a number, got 'soon'"),
        ("CSSL_MAX_ATTEMPTS", "3.5", "CSSL_MAX_ATTEMPTS must be a whole number, got '3.5'"),
        (
            "CSSL_AUTH_DISABLED",
            "maybe",
            "CSSL_AUTH_DISABLED must be a flag (1, true, yes, on or 0, false, no, off), got 'maybe'",
        ),
        ("CSSL_SWEEP_INTERVAL", "-1", "CSSL_SWEEP_INTERVAL must be greater than 0, got '-1'"),
        ("CSSL_PROGRESS_EVERY", "0", "CSSL_PROGRESS_EVERY must be at least 1, got '0'"),
        ("CSSL_WANDB_MODE", "sometimes", "CSSL_WANDB_MODE must be one of 'online' or 'offline', got 'sometimes'"),
        (
            "CSSL_MLFLOW_TRACKING_URI",
            "mlflow:5000",
            "CSSL_MLFLOW_TRACKING_URI must be a URI whose scheme is one of http, https, file, sqlite, postgresql, "
            "mysql, mssql, databricks, got 'mlflow:5000'",
        ),
        (
            "CSSL_MLFLOW_TRACKING_URI",
            "http://:5000",
            "CSSL_MLFLOW_TRACKING_URI must name a host, e.g. http://mlflow:5000, got 'http://:5000'",
        ),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_must_be(name, value, message):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    assert str(error.value) == message


def test_the_rules_between_settings():
    with pytest.raises(SettingsError, match="CSSL_AUTH_DISABLED is set but the database is not the embedded SQLite"):
        Settings.from_env({"CSSL_AUTH_DISABLED": "1", "CSSL_DATABASE_URL": "postgresql://db/cssl"})
    assert Settings.from_env({"CSSL_AUTH_DISABLED": "yes"}).auth_disabled
    with pytest.raises(SettingsError, match="CSSL_HEARTBEAT_INTERVAL must be shorter than CSSL_HEARTBEAT_TIMEOUT"):
        Settings.from_env({"CSSL_HEARTBEAT_INTERVAL": "5", "CSSL_HEARTBEAT_TIMEOUT": "5"})


def test_the_artifact_root_is_a_folder_or_a_url(tmp_path):
    local = Settings.from_env({"CSSL_ARTIFACT_ROOT": "models"}).artifacts
    assert (local.root, local.folder, local.remote) == (str(tmp_path / "models"), tmp_path / "models", False)
    assert Settings.from_env({"CSSL_ARTIFACT_ROOT": f"file://{tmp_path}/m"}).artifact_root == str(tmp_path / "m")
    remote = Settings.from_env({"CSSL_ARTIFACT_ROOT": "s3://lab-models/cssl/", "CSSL_STATE_DIR": "st"}).artifacts
    assert (remote.root, remote.remote) == ("s3://lab-models/cssl", True)
    # A worker trains in a local folder of the same layout and uploads from there.
    assert remote.folder == tmp_path / "st" / "artifact-cache"
    assert remote.relative(remote.folder / "jobs" / "j1" / "checkpoints" / "last.pt") == "jobs/j1/checkpoints/last.pt"
    assert remote.url("jobs/j1/job.log") == "s3://lab-models/cssl/jobs/j1/job.log"


def test_mask_password():
    assert mask_password("postgresql://user:secret@host:5432/db") == "postgresql://user:***@host:5432/db"
    assert mask_password("redis://:p@ss@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_password("redis://redis:6379/0") == "redis://redis:6379/0"
    assert mask_password("filesystem://") == "filesystem://"


def test_cssl_settings_prints_the_effective_settings_with_passwords_masked(monkeypatch, capsys):
    monkeypatch.setenv("CSSL_DATABASE_URL", "postgresql://cssl:s3cret@db:5432/cssl")
    monkeypatch.setenv("CSSL_BROKER_URL", "redis://:hunter2@redis:6379/0")
    monkeypatch.setenv("CSSL_PROGRESS_EVERY", "4")
    assert cssl(["settings"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "hunter2" not in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("CSSL_")}
    assert rows["CSSL_DATABASE_URL"] == ["postgresql+psycopg://cssl:***@db:5432/cssl"]
    assert rows["CSSL_BROKER_URL"] == ["redis://:***@redis:6379/0"]
    assert rows["CSSL_PROGRESS_EVERY"] == ["4"] and rows["CSSL_MAX_ATTEMPTS"] == ["3", "(default)"]
    assert len(rows) == len(Settings.model_fields)
    assert out.splitlines()[-1] == "mode: Postgres + Redis; authentication on"

    monkeypatch.setenv("CSSL_HEARTBEAT_TIMEOUT", "soon")
    with pytest.raises(SystemExit) as exit:
        cssl(["settings"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "cssl: error: CSSL_HEARTBEAT_TIMEOUT must be a number, got 'soon'\n"


def test_data_roots_upload_limit_and_cache(tmp_path):
    settings = Settings.from_env({})
    assert settings.data_roots == (tmp_path / ".state" / "data",)
    assert settings.uploads_folder == tmp_path / ".state" / "data" / "uploads"
    assert settings.cache_dir == tmp_path / ".state" / "cache"
    assert settings.max_upload_bytes == 2 * 1024**3
    # os.pathsep or commas; relative folders from the working directory; the first holds uploads.
    settings = Settings.from_env(
        {"CSSL_DATA_ROOTS": f"/data{os.pathsep}more, /mnt/shared/", "CSSL_MAX_UPLOAD_BYTES": "1024"}
    )
    assert settings.data_roots == (Path("/data"), tmp_path / "more", Path("/mnt/shared"))
    assert settings.uploads_folder == Path("/data/uploads") and settings.max_upload_bytes == 1024
    assert settings.public()["CSSL_DATA_ROOTS"] == os.pathsep.join(["/data", str(tmp_path / "more"), "/mnt/shared"])
    with pytest.raises(SettingsError, match="CSSL_MAX_UPLOAD_BYTES must be at least 1, got '0'"):
        Settings.from_env({"CSSL_MAX_UPLOAD_BYTES": "0"})


def test_a_data_root_may_be_a_bucket_prefix_and_a_url_must_lie_under_one(tmp_path):
    from store.data_roots import resolve_data_path

    settings = Settings.from_env({"CSSL_DATA_ROOTS": f"s3://lab-data/cssl/{os.pathsep}/data,gs://other/p"})
    assert settings.data_roots == (Path("/data"), "s3://lab-data/cssl", "gs://other/p")
    assert settings.uploads_folder == Path("/data/uploads")
    assert Settings.from_env({"CSSL_DATA_ROOTS": "s3://lab-data/cssl"}).data_folders == (tmp_path / ".state" / "data",)
    assert resolve_data_path(settings, "s3://lab-data/cssl/imagenet/") == "s3://lab-data/cssl/imagenet"
    assert resolve_data_path(settings, "s3://lab-data/cssl") == "s3://lab-data/cssl"
    assert resolve_data_path(settings, "gs://other/p/x") == "gs://other/p/x"
    for outside in (
        "s3://lab-data/cssl-private/x",  # a longer name, not a folder of the root
        "s3://lab-data/cssl/../private",
        "s3://lab-data/cssl/./x",
        "s3://lab-data/cssl//x",
        "s3://lab-data/cssl/x?versionId=1",
        "gs://lab-data/cssl/x",  # another scheme
        "s3://other/p/x",
        "s3://lab-data",
    ):
        assert resolve_data_path(settings, outside) is None, outside


def test_tracking_sinks_are_off_unless_set_and_their_uri_is_masked(tmp_path):
    settings = Settings.from_env({})
    assert (settings.mlflow_tracking_uri, settings.mlflow_experiment) == ("", "cssl")
    assert (settings.wandb_project, settings.wandb_mode) == ("", "offline")
    assert settings.wandb_dir == tmp_path / ".state" / "wandb"
    settings = Settings.from_env({"CSSL_MLFLOW_TRACKING_URI": "https://ops:s3cret@mlflow:5000"})
    assert settings.public()["CSSL_MLFLOW_TRACKING_URI"] == "https://ops:***@mlflow:5000"
    for uri in ("http://mlflow:5000", "file:///srv/mlruns", "sqlite:///srv/mlflow.db", "databricks"):
        assert Settings.from_env({"CSSL_MLFLOW_TRACKING_URI": uri}).mlflow_tracking_uri == uri


def test_webhook_retries_are_a_list_of_seconds():
    assert Settings.from_env({}).webhook_retry_seconds == (5, 30, 120, 600, 3600)
    settings = Settings.from_env({"CSSL_WEBHOOK_RETRY_SECONDS": "0.5, 2,10"})
    assert settings.webhook_retry_seconds == (0.5, 2, 10)
    assert settings.public()["CSSL_WEBHOOK_RETRY_SECONDS"] == "0.5,2,10"
    assert Settings.from_env({"CSSL_WEBHOOK_RETRY_SECONDS": "1:2"}).webhook_retry_seconds == (1, 2)
    with pytest.raises(SettingsError, match="CSSL_WEBHOOK_RETRY_SECONDS must be numbers separated by ','"):
        Settings.from_env({"CSSL_WEBHOOK_RETRY_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="CSSL_WEBHOOK_RETRY_SECONDS must be positive numbers"):
        Settings.from_env({"CSSL_WEBHOOK_RETRY_SECONDS": "5,-1"})

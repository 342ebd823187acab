"""The command line as a newcomer meets it: option help from the config's field docs, quiet
failures, the commands printed at the end of a run, and the evaluation table."""

import contextlib
import dataclasses
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from cli.main import PRETRAIN_OPTIONS
from cli.main import main as cssl
from cssl_core.config import PretrainConfig, field_bounds

TINY = [
    "--dataset",
    "synthetic",
    "--backbone",
    "small",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--subset",
    "320",
    "--precision",
    "fp32",
]


def test_pretrain_help_says_what_each_option_means_and_its_default(capsys):
    with pytest.raises(SystemExit):
        cssl(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    for option, key in PRETRAIN_OPTIONS.items():
        field = fields[key]
        meaning = field.metadata.get("help") or f"config key {key}"
        default = "none" if field.default is None else field.default
        bounds = field_bounds(PretrainConfig, key)
        limits = f"; {bounds}" if bounds else ""
        assert f"{option} {key.upper()} {meaning} (default: {default}{limits})" in text, option
        assert field.metadata.get("help") is None or f"config key {key} " not in text
    assert "(default: 256; in [2, 65536])" in text and "(default: cifar10)" in text
    assert "(default: 0; in [0, 4294967295])" in text  # --seed


@pytest.mark.parametrize(
    "argv, error",
    [
        (["--set", "temperature=-1"], "temperature must be greater than 0, got -1.0"),
        (["--set", "temperature=nan"], "temperature must be a finite number, got nan"),
        (["--set", "sgd_momentum=1"], "sgd_momentum must be in [0, 1), got 1.0"),
        (["--epochs", "0"], "epochs must be in [1, 100000], got 0"),
        (
            ["--set", "temprature=0.2"],
            "unknown option(s) for method 'simclr': temprature (did you mean temperature?); "
            "valid options: augmentation, ",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_and_no_run(tmp_path, capfd, argv, error):
    out = tmp_path / "run"
    assert cssl(["pretrain", "--method", "simclr", "--dataset", "synthetic", *argv, "--out", str(out)]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"cssl: error: {error}") and captured.err.count("\n") == 1, captured.err
    assert not out.exists()


def test_nothing_is_printed_before_a_missing_data_error(tmp_path, capfd):
    out = tmp_path / "run"
    assert (
        cssl(
            [
                "pretrain",
                "--method",
                "simclr",
                "--dataset",
                "cifar10",
                "--data",
                str(tmp_path / "missing.tar.gz"),
                "--backbone",
                "small",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("cssl: error: ") and captured.err.count("\n") == 1, captured.err
    assert "missing.tar.gz" in captured.err
    assert not out.exists()  # a run that never started leaves no folder behind


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    """A one-epoch run and what `cssl pretrain` printed on stdout."""
    out = tmp_path_factory.mktemp("cli") / "my run"  # a space: the printed commands must quote it
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cssl(["pretrain", "--method", "simclr", *TINY, "--out", str(out)]) == 0
    return out, stdout.getvalue()


def printed_commands(stdout: str) -> dict[str, list[str]]:
    commands = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"\s+(evaluate|export|resume):\s+(.+)", line)
        if match:
            commands[match[1]] = shlex.split(match[2])
    return commands


def test_pretrain_ends_with_commands_that_work(run, capsys):
    out, stdout = run
    assert f"run folder: {out}" in stdout.splitlines()
    commands = printed_commands(stdout)
    assert set(commands) == {"evaluate", "export", "resume"}
    last = str(out / "checkpoints" / "last.pt")
    for argv in commands.values():
        assert argv[0] == "cssl" and shutil.which("cssl") or Path(argv[0]).is_file(), argv[0]
        assert last in argv
    assert commands["resume"][1:] == ["pretrain", "--resume", last, "--method", "simclr", "--out", str(out)]

    config = (out / "config.json").read_text()
    assert cssl(commands["evaluate"][1:]) == 0
    assert re.search(r"^knn\s+epoch 1\s+k=200 temperature=0.1\s+\d+\.\d\d%", capsys.readouterr().out, re.M)
    assert cssl(commands["export"][1:]) == 0
    exported = Path(commands["export"][commands["export"].index("--out") + 1])
    assert exported.is_file() and exported.parent == out
    capsys.readouterr()
    assert cssl(commands["resume"][1:]) == 0
    assert capsys.readouterr().out.startswith("completed: 5 steps")
    assert (out / "config.json").read_text() == config  # resuming keeps the run's config


def test_pretrain_writes_its_provenance_beside_the_checkpoints(run):
    import torch

    from cssl_core.data import data_fingerprint

    out, _ = run
    found = json.loads((out / "provenance.json").read_text())
    assert found["torch"] == torch.__version__
    assert found["device_type"] == ("cuda" if torch.cuda.is_available() else "cpu") and found["device"]
    assert found["data"] == data_fingerprint("synthetic")
    assert found["code"] and found["code_source"] in ("env", "git", "package")


def test_eval_prints_an_aligned_table(run, capsys):
    out, _ = run
    last = str(out / "checkpoints" / "last.pt")
    assert cssl(["eval", last, "--protocol", "knn", "--set", "k=20", "--baseline"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "synthetic: 500 train / 200 test images"
    header, trained, baseline = lines[1:]
    assert header.split() == ["protocol", "weights", "parameters", "top-1", "top-5"]
    assert trained.split()[:4] == ["knn", "epoch", "1", "k=20"]
    assert baseline.split()[:4] == ["knn", "random", "init", "k=20"]
    # Columns line up: text starts under its header, numbers end under theirs.
    for row in (trained, baseline):
        assert row.index("k=20") == header.index("parameters")
        assert row[: header.index("top-1") + len("top-1")].endswith("%") and len(row) == len(header)

    assert cssl(["eval", last, "--protocol", "knn", "--set", "k=20", "--baseline", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["parameters"] == {"k": 20, "temperature": 0.1} and 0 <= result["baseline"]["top1"] <= 100


@pytest.fixture
def embedded_env(tmp_path, monkeypatch):
    """An embedded service's state in tmp; whatever the commands set in os.environ is undone after."""
    for name in ("CSSL_DATABASE_URL", "CSSL_BROKER_URL", "CSSL_AUTH_DISABLED"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("CSSL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.mark.parametrize("command", ["serve", "api"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "[::]", "cssl.example.org"])
def test_no_auth_refuses_a_bind_beyond_this_machine(embedded_env, capfd, monkeypatch, command, host):
    import cli.service

    monkeypatch.setattr(cli.service, "_run_api", lambda *args: pytest.fail("the server started"))
    with pytest.raises(SystemExit) as exit_:
        cssl([command, "--no-auth", "--host", host])
    assert exit_.value.code == 2
    err = capfd.readouterr().err
    assert err.startswith(
        f"cssl: error: authentication is off (--no-auth or CSSL_AUTH_DISABLED), so anyone who "
        f"reaches --host {host} would act as 'local'; serve on 127.0.0.1"
    ), err
    assert not (embedded_env / "cssl.db").exists()  # refused before anything was made


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_no_auth_serves_on_loopback(embedded_env, monkeypatch, host):
    import cli.service

    served = []
    monkeypatch.setattr(cli.service, "_run_api", lambda args, settings: served.append((args.host, settings)) or 0)
    assert cssl(["api", "--no-auth", "--host", host]) == 0
    [(bound, settings)] = served
    assert bound == host and settings.auth_disabled


def test_the_auth_disabled_variable_is_held_to_loopback_too(embedded_env, monkeypatch, capfd):
    monkeypatch.setenv("CSSL_AUTH_DISABLED", "1")
    with pytest.raises(SystemExit):
        cssl(["api", "--host", "0.0.0.0"])
    assert "authentication is off" in capfd.readouterr().err


def test_db_downgrade_says_what_it_deletes_and_asks_first(embedded_env, monkeypatch, capfd):
    from store import migrate
    from store.settings import Settings

    url = Settings.from_env().database_url
    assert cssl(["db", "upgrade"]) == 0
    # From a fixed revision, so that the prompt below lists a known pair of migrations.
    assert cssl(["db", "downgrade", "--revision", "0005", "--yes"]) == 0
    head = migrate.current_revision(url)
    assert head == "0005"
    capfd.readouterr()

    for answer in ("n\n", "", "whatever\n"):  # no, no one to ask, anything but yes
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        assert cssl(["db", "downgrade", "--revision", "0003"]) == 1
        err = capfd.readouterr().err
        assert migrate.current_revision(url) == head
        assert "undoes 2 migration(s); what they hold is deleted for good:\n" in err
        assert (
            "  0005 (An evaluation may have no accuracy): deletes rows: DELETE FROM evaluations WHERE top1 IS NULL"
            "\n  0004 (Uploaded datasets): deletes table datasets\n"
        ) in err
        assert err.endswith("Downgrade? [y/N] cssl: nothing changed (answer y, or pass --yes)\n")

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert cssl(["db", "downgrade", "--revision", "-1"]) == 0
    assert migrate.current_revision(url) == "0004"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cssl(["db", "downgrade", "--revision", "0002", "--yes"]) == 0
    assert migrate.current_revision(url) == "0002"
    err = capfd.readouterr().err
    assert "  0003 (Fault tolerance): deletes column job_events.seq, column jobs.stalled_attempts" in err
    assert "Downgrade?" not in err.split("0003 (Fault")[1]

    assert cssl(["db", "downgrade", "--revision", "9999", "--yes"]) == 2
    assert migrate.current_revision(url) == "0002" and "9999" in capfd.readouterr().err


def test_worker_check_says_whether_the_database_and_broker_answer(embedded_env, monkeypatch, capfd):
    assert cssl(["db", "upgrade"]) == 0
    capfd.readouterr()
    assert cssl(["worker", "--check"]) == 0
    assert capfd.readouterr().out == "worker ready: database and broker answer\n"
    # Nothing listens on port 1: both are named, passwords masked.
    monkeypatch.setenv("CSSL_DATABASE_URL", "postgresql://cssl:secret@127.0.0.1:1/cssl")
    monkeypatch.setenv("CSSL_BROKER_URL", "redis://:secret@127.0.0.1:1/0")
    assert cssl(["worker", "--check"]) == 1
    err = capfd.readouterr().err
    assert "cssl: unreachable: database postgresql+psycopg://cssl:***@127.0.0.1:1/cssl: " in err
    assert "cssl: unreachable: broker redis://:***@127.0.0.1:1/0: " in err and "secret" not in err

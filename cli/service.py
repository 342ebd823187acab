"""Service subcommands: ``serve``, ``api``, ``worker``, ``db``, ``token`` and ``settings``.

``add_service_commands`` registers them on ``cli.main``'s parser. Settings come from the
environment (``store.settings``); with no ``CSSL_DATABASE_URL``/``CSSL_BROKER_URL`` the
service is embedded under ``CSSL_STATE_DIR``. Imports stay inside the commands so that
``cssl pretrain`` does not load the web stack.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys

from cli.processes import stop_process


def add_service_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the API and one worker (embedded, or Postgres + Redis from the environment)"
    )
    _server_options(p)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("api", help="run the HTTP API alone")
    _server_options(p)
    p.add_argument(
        "--workers", type=int, default=1, help="API processes (each reads the settings from the environment)"
    )
    p.set_defaults(func=cmd_api)

    p = subparsers.add_parser("worker", help="run a Celery worker alone")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (each in its own process when > 1)")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--state-dir", help="sets CSSL_STATE_DIR")
    p.add_argument(
        "--queues",
        help="kinds of jobs it takes, separated by ',': default (jobs without resources), cpu, gpu, cpu-<pool>, "
        "gpu-<pool>; sets CSSL_WORKER_QUEUES (default: default)",
    )
    p.add_argument(
        "--devices",
        help="its GPUs' indices, e.g. 0,1: it takes GPU jobs that need at most that many, and its jobs see "
        "only these (CUDA_VISIBLE_DEVICES); sets CSSL_WORKER_DEVICES",
    )
    p.add_argument(
        "--memory-gib",
        type=float,
        help="host memory it offers, GiB: jobs asking for more do not fit; sets CSSL_WORKER_MEMORY_GIB",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only check that the database and the broker answer (a container's healthcheck); exit 1 if not",
    )
    p.set_defaults(func=cmd_worker)

    db = subparsers.add_parser("db", help="database schema (Alembic migrations)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    p = db_sub.add_parser("upgrade", help="migrate to the newest schema (or --revision)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_db_upgrade)
    p = db_sub.add_parser(
        "downgrade", help="migrate back to --revision (an id, -1, or base); says what it deletes and asks first"
    )
    p.add_argument("--revision", required=True)
    p.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    p.set_defaults(func=cmd_db_downgrade)
    p = db_sub.add_parser("current", help="print the database's revision and the code's")
    p.set_defaults(func=cmd_db_current)

    token = subparsers.add_parser("token", help="API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    p = token_sub.add_parser("create", help="create a token; it is printed once, on the last line")
    p.add_argument("--owner", required=True, help="who the token's jobs belong to")
    p.add_argument("--admin", action="store_true", help="the token may submit jobs above the default priority (5)")
    p.set_defaults(func=cmd_token_create)
    p = token_sub.add_parser(
        "list", help="list tokens by prefix, owner and state (the tokens themselves are not stored)"
    )
    p.add_argument("--owner", help="only this owner's tokens")
    p.set_defaults(func=cmd_token_list)
    p = token_sub.add_parser("revoke", help="revoke a token; the API refuses it within 30 s")
    p.add_argument("token", help="the token's prefix as `cssl token list` shows it, or the whole token")
    p.set_defaults(func=cmd_token_revoke)

    p = subparsers.add_parser(
        "settings", help="print the settings in effect, from the CSSL_* variables (passwords masked)"
    )
    p.set_defaults(func=cmd_settings)


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--state-dir", help="sets CSSL_STATE_DIR")
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="switch authentication off (embedded service on this machine only; logged and shown in /readyz)",
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")


def _settings(args: argparse.Namespace):
    from store.settings import Settings, SettingsError

    if getattr(args, "state_dir", None):
        os.environ["CSSL_STATE_DIR"] = args.state_dir
    if getattr(args, "no_auth", False):
        os.environ["CSSL_AUTH_DISABLED"] = "1"
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cssl: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    host = getattr(args, "host", None)
    if settings.auth_disabled and host is not None and not _loopback(host):
        print(
            f"cssl: error: authentication is off (--no-auth or CSSL_AUTH_DISABLED), so anyone who reaches --host "
            f"{host} would act as {settings.local_owner!r}; serve on 127.0.0.1 (the default) or ::1, or keep "
            "authentication on and create tokens with `cssl token create`",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return settings


def _loopback(host: str) -> bool:
    """Whether ``host`` binds only this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another name: it may resolve to anything
        return False


def _ready_schema(settings) -> None:
    from store.migrate import ensure_schema

    ensure_schema(settings.database_url, embedded=settings.embedded)


def _run_api(args: argparse.Namespace, settings) -> int:
    import uvicorn

    from store.logs import uvicorn_json_log_config

    workers = getattr(args, "workers", 1)
    # Several processes need the app by name; each builds it from the environment set above.
    app = "api.main:create_app" if workers > 1 else _app(settings)
    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers,
        host=args.host,
        port=args.port,
        access_log=not args.no_access_log,
        log_level="info",
        **({"log_config": uvicorn_json_log_config()} if settings.log_format == "json" else {}),
    )
    return 0


def _app(settings):
    from api.main import create_app

    return create_app(settings)


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _ready_schema(settings)
    return _run_api(args, settings)


def worker_argv(concurrency: int = 1, loglevel: str = "INFO", name: str = "cssl") -> list[str]:
    """``celery worker``'s arguments; ``name`` makes the worker's name ``name@host``. With JSON
    log lines, Celery's start-up banner (plain text on stdout) is left out."""
    from store.settings import get_settings

    pool = "solo" if concurrency == 1 else "prefork"
    return [
        *(["--quiet"] if get_settings().log_format == "json" else []),
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname={name}@%h",
        # The database is the record and the sweeper the recovery; Celery's cluster chatter is not needed.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def worker_command(name: str = "cssl", concurrency: int = 1) -> list[str]:
    """The command line of a worker process of this Python, as ``cssl serve`` starts one."""
    return [sys.executable, "-m", "celery", "-A", "worker.app", *worker_argv(concurrency, name=name)]


def cmd_worker(args: argparse.Namespace) -> int:
    for flag, name in (("queues", "QUEUES"), ("devices", "DEVICES"), ("memory_gib", "MEMORY_GIB")):
        if getattr(args, flag, None) is not None:
            os.environ[f"CSSL_WORKER_{name}"] = str(getattr(args, flag))
    settings = _settings(args)
    from dispatch.routing import Offer

    try:
        Offer.parse(settings.worker_queues, settings.worker_devices, settings.worker_memory_gib or None)
    except ValueError as exc:
        print(f"cssl: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return _check_worker(settings)
    _ready_schema(settings)
    from worker.app import app

    app.worker_main(worker_argv(args.concurrency, args.loglevel))
    return 0


def _check_worker(settings) -> int:
    """What a worker needs to take jobs: its database and its broker, each within a few seconds."""
    from sqlalchemy import text

    from dispatch.broker import make_celery
    from store.db import make_engine
    from store.settings import mask_password

    failed = []
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        failed.append(f"database {mask_password(settings.database_url)}: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    try:
        with make_celery(settings).connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        failed.append(f"broker {mask_password(settings.broker_url)}: {type(exc).__name__}: {exc}")
    for line in failed:
        print(f"cssl: unreachable: {line}", file=sys.stderr)
    if not failed:
        print("worker ready: database and broker answer")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The API in this process and one worker in a child process, with the same settings."""
    settings = _settings(args)
    _ready_schema(settings)
    print(
        f"cssl: serving on http://{args.host}:{args.port} "
        f"({'embedded in ' + str(settings.state_dir) if settings.embedded else 'Postgres + Redis'}"
        f"{', authentication OFF' if settings.auth_disabled else ''})",
        file=sys.stderr,
        flush=True,
    )
    # Its own session: Ctrl-C reaches only this process, which then stops the worker with one
    # SIGTERM (a second signal would turn Celery's warm shutdown into a cold one).
    worker = subprocess.Popen(worker_command(), env=os.environ.copy(), start_new_session=True)
    # uvicorn re-raises the signal that stopped it; exit through `finally` so the worker stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return _run_api(args, settings)
    finally:
        # Warm shutdown; a worker still busy after 30 s is killed, and its job resumes from its
        # last checkpoint once the heartbeat times out.
        stop_process(worker, timeout=30)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from store import migrate

    settings = _settings(args)
    migrate.upgrade(settings.database_url, args.revision)
    print(f"database at revision {migrate.current_revision(settings.database_url)}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from store import migrate
    from store.settings import mask_password

    settings = _settings(args)
    try:
        plan = migrate.downgrade_plan(settings.database_url, args.revision)
    except CommandError as exc:
        print(f"cssl: error: {exc}", file=sys.stderr)
        return 2
    if plan:
        print(
            f"Downgrading {mask_password(settings.database_url)} undoes {len(plan)} migration(s); what they hold "
            "is deleted for good:",
            file=sys.stderr,
        )
        for step in plan:
            deletes = ", ".join(step.deletes) or "nothing"
            print(f"  {step.revision} ({step.summary}): deletes {deletes}", file=sys.stderr)
        if not args.yes and not _confirmed("Downgrade? [y/N] "):
            print("cssl: nothing changed (answer y, or pass --yes)", file=sys.stderr)
            return 1
    migrate.downgrade(settings.database_url, args.revision)
    print(f"database at revision {migrate.current_revision(settings.database_url) or 'base (empty)'}")
    return 0


def _confirmed(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    try:
        return input().strip().lower() in ("y", "yes")
    except EOFError:  # no one to ask
        return False


def cmd_db_current(args: argparse.Namespace) -> int:
    from store import migrate

    settings = _settings(args)
    print(f"database: {migrate.current_revision(settings.database_url) or 'empty'}; code: {migrate.head_revision()}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from store import tokens
    from store.db import session_scope

    settings = _settings(args)
    _ready_schema(settings)
    with session_scope(settings.database_url) as session:
        token = tokens.create_token(session, args.owner, admin=args.admin)
    scope = "admin token" if args.admin else "token"
    print(f"{scope} for {args.owner.strip()} (shown once; only its hash is stored):", file=sys.stderr)
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from store import tokens
    from store.db import session_scope

    settings = _settings(args)
    _ready_schema(settings)
    with session_scope(settings.database_url) as session:
        rows = [
            (
                t.prefix,
                t.owner,
                "admin" if t.admin else "user",
                t.created_at.isoformat(timespec="seconds"),
                f"revoked {t.revoked_at.isoformat(timespec='seconds')}" if t.revoked_at else "active",
            )
            for t in tokens.list_tokens(session, args.owner)
        ]
    print("prefix\towner\tscope\tcreated\tstate")
    for row in rows:
        print("\t".join(row))
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from store import tokens
    from store.db import session_scope

    settings = _settings(args)
    _ready_schema(settings)
    try:
        with session_scope(settings.database_url) as session:
            token = tokens.revoke_token(session, args.token)
            owner, prefix = token.owner, token.prefix
    except LookupError as exc:
        print(f"cssl token revoke: {exc}", file=sys.stderr)
        return 2
    print(f"revoked {prefix} of {owner}; running API processes refuse it within 30 s", file=sys.stderr)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    settings = _settings(args)
    values = settings.public()
    width = max(map(len, values))
    for name, value in values.items():
        print(f"{name:<{width}}  {value}{'' if os.environ.get(name) else '  (default)'}")
    mode = f"embedded in {settings.state_dir}" if settings.embedded else "Postgres + Redis"
    print(f"mode: {mode}; authentication {'OFF' if settings.auth_disabled else 'on'}")
    return 0

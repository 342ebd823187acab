"""``cssl login`` and ``cssl jobs ...``: drive a running cssl service from a terminal.

The service is ``$CSSL_API_URL`` with the token ``$CSSL_TOKEN``, or else the profile that
``cssl login`` wrote (``$CSSL_PROFILE``, default ``~/.config/cssl/profile.json``, readable by
its owner only). ``jobs submit`` takes the same options and config files as ``cssl pretrain``,
so moving a run to the service changes one word.

Exit codes a script can test: 0 the job succeeded (or the command did what it said), 1 the
job failed, 2 the service refused the request or the command was misused, 3 the job was
cancelled, 4 the service could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from cli.options import add_pretrain_options, pretrain_overrides
from cssl_core.errors import CsslError

FAILED, REFUSED, CANCELLED, UNREACHABLE = 1, 2, 3, 4
EXIT_CODES = {"succeeded": 0, "failed": FAILED, "cancelled": CANCELLED}
TIMEOUT = httpx.Timeout(30.0, read=60.0)


class ServiceError(CsslError):
    """The service answered with an error, or could not be reached; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = REFUSED):
        super().__init__(message)
        self.code = code


def profile_path() -> Path:
    return Path(os.environ.get("CSSL_PROFILE") or Path.home() / ".config" / "cssl" / "profile.json")


def connection() -> tuple[str, str | None]:
    """(API URL, token) from the environment, else from the profile."""
    url, token = os.environ.get("CSSL_API_URL"), os.environ.get("CSSL_TOKEN")
    if url is None or token is None:
        try:
            saved = json.loads(profile_path().read_text())
        except FileNotFoundError:
            saved = {}
        except (OSError, ValueError) as exc:
            raise ServiceError(f"could not read the profile {profile_path()}: {exc}") from None
        url, token = url or saved.get("url"), token or saved.get("token")
    if not url:
        raise ServiceError("no service: set CSSL_API_URL (and CSSL_TOKEN), or run `cssl login URL`")
    return url.rstrip("/"), token


class Service:
    """The HTTP API, with errors turned into one readable line (the problem document's detail)."""

    def __init__(self, url: str, token: str | None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self.http = httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT, follow_redirects=True)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceError(f"could not reach the service at {self.url}: {exc}", UNREACHABLE) from None
        if response.status_code >= 400:
            raise ServiceError(f"{method} {path}: {response.status_code} {problem_text(response)}")
        return response

    def json(self, method: str, path: str, **kwargs) -> Any:
        return self.request(method, path, **kwargs).json()


def _where(dataset: dict) -> str:
    return f" ({dataset['path']})" if dataset.get("path") else ""


def problem_text(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return response.text[:500]
    errors = problem.get("errors") or []
    if errors:
        return "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in errors)
    return problem.get("detail") or problem.get("title") or response.reason_phrase


def add_remote_commands(subparsers) -> None:
    p = subparsers.add_parser("login", help="save a service's URL and token for the `cssl jobs` commands")
    p.add_argument("url", help="the API's base URL, e.g. http://gpu-box:8000")
    p.add_argument("--token", help="an API token (default: read from the terminal or stdin)")
    p.set_defaults(func=cmd_login)

    jobs = subparsers.add_parser(
        "jobs",
        help="submit, list, follow, cancel and download jobs on a running service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=type(jobs))

    p = sub.add_parser("submit", help="submit a pretraining job: the options of `cssl pretrain`")
    add_pretrain_options(p)
    p.add_argument("--upload", help="an uploaded data set's id, instead of --data")
    add_label_options(p)
    p.add_argument("--priority", type=int, help="0 (lowest) to 9 (highest); default 5")
    p.add_argument("-f", "--follow", action="store_true", help="follow it to the end; the exit code says how it ended")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("ls", help="list your jobs, newest first")
    p.add_argument("--status")
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--name", help="jobs whose name contains this")
    p.add_argument("--tag", action="append", default=[], metavar="KEY[=VALUE]", help="repeat for jobs with every one")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--all", action="store_true", help="every matching job, page after page")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="a job: status, progress, results, provenance")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("logs", help="a job's log; with -f, follow its events to the end")
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true", help="follow progress, evaluations and state to the end")
    p.add_argument("--tail", type=int, default=200, help="last lines of the log (default 200)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("delete", help="delete finished jobs with their checkpoints, evaluations and files")
    p.add_argument("jobs", nargs="+", metavar="job")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("evaluate", help="evaluate a succeeded job's final checkpoint on the service")
    p.add_argument("job")
    p.add_argument("--protocol", default="knn,linear", help="comma-separated, default knn,linear")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PROTOCOL.KEY=VALUE")
    p.add_argument("--dataset", help="evaluate on this data set (default: the pretraining one)")
    p.add_argument("--data", help="its path on the service (under its data roots)")
    p.add_argument("-f", "--follow", action="store_true", help="follow it to the end")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("download", help="download a job's checkpoint; an interrupted download resumes")
    p.add_argument("job")
    p.add_argument("--checkpoint", type=int, help="a checkpoint id (default: the newest)")
    p.add_argument("-o", "--out", type=Path, help="file to write (default: <job>-<checkpoint>.pt)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("label", help="rename or retag a job")
    p.add_argument("job")
    add_label_options(p)
    p.add_argument("--untag", action="append", default=[], metavar="KEY", help="remove a tag")
    p.set_defaults(func=cmd_label)


def add_label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="a label for people; need not be unique")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeat for several")


def run(func):
    """A command's body, with the service's errors printed as one line and their exit code."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args, Service(*connection()))
        except ServiceError as exc:
            print(f"cssl: error: {exc}", file=sys.stderr)
            return exc.code

    return wrapped


def cmd_login(args: argparse.Namespace) -> int:
    token = args.token
    if token is None:
        if sys.stdin.isatty():
            import getpass

            token = getpass.getpass("API token: ")
        else:
            token = sys.stdin.readline()
    token = token.strip()
    service = Service(args.url.rstrip("/"), token)
    try:
        service.request("GET", "/v1/jobs", params={"limit": 1})
    except ServiceError as exc:
        print(f"cssl: error: not saved: {exc}", file=sys.stderr)
        return exc.code
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Created readable by its owner only, before the token is written into it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as file:
        json.dump({"url": service.url, "token": token}, file)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    print(f"signed in to {service.url}; saved in {path}")
    return 0


def _tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ServiceError(f"--tag expects KEY=VALUE, got {item!r}")
        tags[key] = value
    return tags


@run
def cmd_submit(args: argparse.Namespace, service: Service) -> int:
    from cssl_core.config import PretrainConfig

    method, config = pretrain_overrides(args)
    config.pop("method", None)
    if method is None:
        raise ServiceError("jobs submit needs --method, or a --config file with a method key")
    dataset = {"name": config.pop("dataset", None) or PretrainConfig.__dataclass_fields__["dataset"].default}
    if (path := config.pop("data", None)) is not None:
        dataset["path"] = str(path)
    if args.upload:
        dataset["upload"] = args.upload
    if (eval_name := config.pop("eval_dataset", None)) is not None:
        eval_path = config.pop("eval_data", None)
        body_eval = {"name": eval_name, **({"path": str(eval_path)} if eval_path is not None else {})}
    else:
        body_eval = None
    body: dict[str, Any] = {"kind": "pretrain", "method": method, "dataset": dataset, "config": config}
    if body_eval is not None:
        body["eval_dataset"] = body_eval
    # As with `cssl pretrain`, no --evaluate runs no final evaluation.
    body["evaluate"] = [p for p in args.evaluate.split(",") if p]
    _labels(body, args)
    if args.priority is not None:
        body["priority"] = args.priority
    job = service.json("POST", "/v1/jobs", json=body)
    print(f"submitted {job['id']} ({job['method']} on {job['dataset']['name']}): {service.url}/ui/jobs/{job['id']}")
    return follow(service, job["id"]) if args.follow else 0


def _labels(body: dict, args: argparse.Namespace) -> None:
    if args.name is not None:
        body["name"] = args.name
    if args.tag:
        body["tags"] = _tags(args.tag)


@run
def cmd_ls(args: argparse.Namespace, service: Service) -> int:
    params: dict[str, Any] = {"limit": min(args.limit, 200)}
    for key in ("status", "method", "dataset", "name"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.tag:
        params["tag"] = [t.replace("=", ":", 1) for t in args.tag]
    page = service.json("GET", "/v1/jobs", params=params)
    shown = 0
    if not args.json:
        print(f"{'JOB':32}  {'STATUS':9}  {'METHOD':12}  {'DATASET':10}  {'PROGRESS':>8}  {'KNN':>6}  NAME")
    while True:
        for job in page["items"]:
            print(json.dumps(job) if args.json else _row(job))
            shown += 1
        if not page["next"] or (not args.all and shown >= args.limit):
            return 0
        page = service.json("GET", page["next"])


def _row(job: dict) -> str:
    progress = job.get("progress") or {}
    done = f"{100 * progress['step'] / progress['total_steps']:.0f}%" if progress.get("total_steps") else ""
    knn = (job.get("latest_metrics") or {}).get("knn_top1")
    tags = " ".join(f"{k}={v}" for k, v in (job.get("tags") or {}).items())
    name = " ".join(part for part in (job.get("name") or "", f"[{tags}]" if tags else "") if part)
    return (
        f"{job['id']:32}  {job['status']:9}  {job['method']:12.12}  {job['dataset']['name']:10.10}  {done:>8}  "
        f"{'' if knn is None else f'{knn:.2f}':>6}  {name}"
    )


@run
def cmd_show(args: argparse.Namespace, service: Service) -> int:
    job = service.json("GET", f"/v1/jobs/{args.job}")
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    timings = job["timings"]
    lines = [
        ("job", job["id"] + (f"  {job['name']}" if job.get("name") else "")),
        ("status", f"{job['status']} (attempt {job['attempt']})" + (f": {job['error']}" if job.get("error") else "")),
        ("method", f"{job['method']} on {job['dataset']['name']}" + _where(job["dataset"])),
        ("tags", " ".join(f"{k}={v}" for k, v in job.get("tags", {}).items())),
        ("submitted", timings["created_at"]),
        ("ran", f"{timings['run_seconds']:.0f} s" if timings.get("run_seconds") is not None else ""),
        ("worker", job.get("worker") or ""),
    ]
    if progress := job.get("progress"):
        step = f"step {progress['step']}/{progress['total_steps']}"
        epoch = f"epoch {progress['epoch'] + 1}/{progress['epochs']}"
        lines.append(("progress", f"{step}, {epoch}, loss {progress.get('loss')}"))
    for key, value in sorted((job.get("latest_metrics") or {}).items()):
        if key.endswith("_top1") and value is not None:
            lines.append((key, f"{value:.2f}%"))
    for key, value in sorted((job.get("provenance") or {}).items()):
        lines.append((f"provenance.{key}", json.dumps(value) if isinstance(value, dict | list) else str(value)))
    config = job["config"]
    lines.append(("config", " ".join(f"{k}={config[k]}" for k in sorted(config))))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        if value != "":
            print(f"{key:{width}}  {value}")
    return 0


@run
def cmd_logs(args: argparse.Namespace, service: Service) -> int:
    if args.follow:
        return follow(service, args.job)
    sys.stdout.write(service.request("GET", f"/v1/jobs/{args.job}/logs", params={"tail": args.tail}).text)
    return 0


@run
def cmd_cancel(args: argparse.Namespace, service: Service) -> int:
    job = service.json("POST", f"/v1/jobs/{args.job}/cancel")
    print(f"{job['id']}: {job['status']}" + (" (stops at its next step)" if job["status"] == "running" else ""))
    return 0


@run
def cmd_delete(args: argparse.Namespace, service: Service) -> int:
    for job_id in args.jobs:
        service.request("DELETE", f"/v1/jobs/{job_id}")
        print(f"{job_id}: deleted")
    return 0


@run
def cmd_evaluate(args: argparse.Namespace, service: Service) -> int:
    config: dict[str, dict[str, str]] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        protocol, dot, name = key.partition(".")
        if not sep or not dot:
            raise ServiceError(f"--set expects PROTOCOL.KEY=VALUE (e.g. knn.k=20), got {item!r}")
        config.setdefault(protocol, {})[name] = value
    body: dict[str, Any] = {"kind": "eval", "job": args.job, "evaluate": args.protocol.split(","), "config": config}
    if args.dataset:
        body["dataset"] = {"name": args.dataset, **({"path": args.data} if args.data else {})}
    job = service.json("POST", "/v1/jobs", json=body)
    print(f"submitted {job['id']} (evaluate {', '.join(job['evaluate'])} on {job['dataset']['name']})")
    return follow(service, job["id"]) if args.follow else 0


def follow(service: Service, job_id: str) -> int:
    """Follow a job's events to its end, with a progress bar; the exit code says how it ended.
    A dropped stream is reopened where it stopped (Last-Event-ID)."""
    from httpx_sse import SSEError, connect_sse

    bar, last_id, status = None, None, None
    while status not in EXIT_CODES:
        headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        try:
            with connect_sse(service.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise ServiceError(f"events of {job_id}: {problem_text(source.response)}")
                for sse in source.iter_sse():
                    if sse.id:
                        last_id = sse.id
                    data = json.loads(sse.data or "{}")
                    bar = _show_event(sse.event, data, bar)
                    if sse.event == "state":
                        status = data.get("status")
                        if status in EXIT_CODES:
                            break
        except (httpx.TransportError, SSEError) as exc:
            if bar is not None:
                bar.clear()
            print(f"lost the event stream ({exc}); reconnecting", file=sys.stderr)
            time.sleep(1)
            try:
                status = service.json("GET", f"/v1/jobs/{job_id}")["status"]
            except ServiceError:
                continue
    if bar is not None:
        bar.close()
    job = service.json("GET", f"/v1/jobs/{job_id}")
    latest = sorted((job.get("latest_metrics") or {}).items())
    metrics = " ".join(f"{k} {v:.2f}%" for k, v in latest if k.endswith("_top1") and v is not None)
    error = f": {job['error']}" if job.get("error") else ""
    print(f"{job_id}: {job['status']}{error}" + (f"; {metrics}" if metrics else ""))
    return EXIT_CODES.get(job["status"], FAILED)


def _show_event(event: str, data: dict, bar):
    from tqdm import tqdm

    if event == "progress" and data.get("total_steps"):
        if bar is None:
            bar = tqdm(total=data["total_steps"], unit="step", dynamic_ncols=True, file=sys.stderr)
        bar.total, bar.n = data["total_steps"], data.get("step", 0)
        bar.set_description(f"epoch {data.get('epoch', 0) + 1}/{data.get('epochs', '?')}")
        postfix = {k: f"{data[k]:.4g}" for k in ("loss", "lr", "images_per_second") if data.get(k) is not None}
        bar.set_postfix(postfix, refresh=True)
        return bar
    if event == "state":
        error = f": {data['error']}" if data.get("error") else ""
        text = f"{data.get('status')} (attempt {data.get('attempt')}){error}"
    elif event == "evaluation":
        top1 = data.get("top1")
        text = f"{data.get('protocol')}: " + ("done" if top1 is None else f"top-1 {top1:.2f}%")
    elif event in ("warning", "checkpoint", "cancel_requested"):
        text = f"{event}: {data.get('message') or json.dumps(data)}"
    else:
        return bar
    (tqdm.write if bar is not None else print)(text, file=sys.stderr)
    return bar


@run
def cmd_download(args: argparse.Namespace, service: Service) -> int:
    checkpoints = service.json("GET", "/v1/checkpoints", params={"job": args.job})
    if args.checkpoint is not None:
        chosen = next((c for c in checkpoints if c["id"] == args.checkpoint), None)
        if chosen is None:
            raise ServiceError(f"job {args.job} has no checkpoint {args.checkpoint}")
    elif not checkpoints:
        raise ServiceError(f"job {args.job} has no checkpoint yet")
    else:
        chosen = max(checkpoints, key=lambda c: (c["final"], c["step"], c["id"]))
    out = args.out or Path(f"{args.job}-{chosen['id']}.pt")
    part = out.with_name(out.name + ".part")
    size = chosen["size_bytes"]
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    from tqdm import tqdm

    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with service.http.stream("GET", chosen["download"], headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                raise ServiceError(f"download: {response.status_code} {problem_text(response)}")
            if have and response.status_code != 206:
                have = 0  # the server sent the whole file
            with (
                part.open("ab" if have else "wb") as file,
                tqdm(total=size, initial=have, unit="B", unit_scale=True, file=sys.stderr, disable=None) as bar,
            ):
                for chunk in response.iter_bytes(1 << 20):
                    file.write(chunk)
                    bar.update(len(chunk))
    except httpx.TransportError as exc:
        raise ServiceError(f"download interrupted ({exc}); run the same command again to resume", UNREACHABLE) from None
    if part.stat().st_size != size:
        got = part.stat().st_size
        raise ServiceError(f"download incomplete: {got} of {size} bytes; run it again to resume", UNREACHABLE)
    part.replace(out)
    print(f"{out} ({size} bytes, checkpoint {chosen['id']} at step {chosen['step']})")
    return 0


@run
def cmd_label(args: argparse.Namespace, service: Service) -> int:
    body: dict[str, Any] = {"tags": {**_tags(args.tag), **{key: None for key in args.untag}}}
    if args.name is not None:
        body["name"] = args.name or None
    job = service.json("PATCH", f"/v1/jobs/{args.job}", json=body)
    tags = " ".join(f"{k}={v}" for k, v in job["tags"].items())
    print(f"{job['id']}: {job['name'] or '(no name)'}" + (f" [{tags}]" if tags else ""))
    return 0

"""The ``cssl`` command: pretrain, evaluate, export and list what the core offers.

Service commands (serve, api, worker, db, token) are registered from ``cli.service``.
The core (and with it torch) is imported inside each command, so that ``cssl --help`` and the
service commands start without loading it; no import here breaks a circle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cli.options import PRETRAIN_OPTIONS, add_pretrain_options, key_values, pretrain_overrides
from cli.remote import add_remote_commands
from cssl_core.errors import CsslError

if TYPE_CHECKING:
    from store.artifacts import ArtifactStore

__all__ = ["PRETRAIN_OPTIONS", "build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """An unknown option's error lists the valid ones."""

    def error(self, message: str):
        if "unrecognized arguments" in message or "invalid choice" in message:
            options = sorted({o for a in self._actions for o in a.option_strings if o.startswith("--")})
            if options:
                message += f"\nvalid options: {', '.join(options)}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from cssl_core.evaluation import get_protocol, protocol_names

    parser = Parser(prog="cssl", description="Self-supervised pretraining and evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone with a self-supervised method",
        description="Pretrain a backbone with a self-supervised method. Defaults are the papers'; on "
        "images of 64 px or less (recipe=auto) a method's small-image recipe changes a "
        "few of them, batch_size among them (`cssl methods` lists both).",
    )
    add_pretrain_options(p)
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (a --config file) and exit without training",
    )
    p.add_argument(
        "--out",
        help="run folder, or an object-store URL (s3://bucket/run) its checkpoints are uploaded to "
        "(default: runs/<method>-<dataset>-<time>)",
    )
    p.add_argument(
        "--resume",
        help="continue from this checkpoint (a path or a URL), with the config stored in it; "
        "--nproc, when given, sets the processes it resumes on",
    )
    p.set_defaults(func=cmd_pretrain)

    protocols = [get_protocol(name) for name in protocol_names()]
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint by a protocol: kNN or linear probe on frozen features, "
        "fine-tuning / distillation on a fraction of the labels, ...",
        description="Evaluate a checkpoint by a protocol:\n"
        + "\n".join(f"  {cls.name}: {cls.summary}" for cls in protocols),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="a path, or an object-store URL (s3://bucket/run/checkpoints/last.pt)")
    p.add_argument("--protocol", choices=protocol_names(), default="knn")
    p.add_argument("--dataset", help="default: the pretraining dataset")
    p.add_argument("--data", help="default: the pretraining data path")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="evaluate the same backbone at random initialisation (finetune: supervised from scratch)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="protocol parameter, e.g. --set k=20 ("
        + "; ".join(f"{cls.name}: {', '.join(f.name for f in dataclasses.fields(cls.params_cls))}" for cls in protocols)
        + ")",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also evaluate the same backbone at random initialisation, for comparison",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a checkpoint's backbone as a plain torchvision state_dict")
    p.add_argument("checkpoint", help="a path or an object-store URL")
    p.add_argument("--out", required=True, help="a path or an object-store URL")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "convert-checkpoint",
        help="rewrite a trusted checkpoint from an older cssl with tensors and plain values only",
        description="Rewrite a checkpoint whose pickle holds other Python objects (numpy arrays, "
        "dataclasses) so that cssl loads it. Reading it runs any code the file carries: "
        "only for files you wrote or trust, which --trust confirms.",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trust", action="store_true", help="confirm that the file comes from a trusted source")
    p.set_defaults(func=cmd_convert_checkpoint)

    p = sub.add_parser("methods", help="list methods, their papers and defaults")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("datasets", help="list datasets")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("data", help="prepare data sets: write WebDataset tar shards")
    data = p.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    p = data.add_parser(
        "shard",
        help="write an image folder as WebDataset tar shards, to a folder or a bucket",
        description="Write an image folder (train/<class>/ and test/<class>/, or unlabelled images) as "
        "WebDataset tar shards train-000000.tar, ..., test-000000.tar, ... with cssl-shards.json, which "
        "dataset webdataset streams. Each sample holds the file's own bytes (not re-encoded) and its class.",
    )
    p.add_argument("src", help="the image folder (or a .txt list of images)")
    p.add_argument("dest", help="an empty folder, or an object-store URL (s3://bucket/prefix)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--shard-size", default="1GB", help="start a new shard past this size (default 1GB)")
    limit.add_argument("--max-count", type=int, help="at most this many samples per shard")
    p.set_defaults(func=cmd_data_shard)

    try:
        from cli.service import add_service_commands
    except ImportError:
        pass
    else:
        add_service_commands(sub)
    add_remote_commands(sub)
    return parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from cli.locations import local_checkpoint

    if not args.resume:
        return _pretrain(args, None)
    with local_checkpoint(args.resume) as resume:
        return _pretrain(args, resume)


def _pretrain(args: argparse.Namespace, resume: Path | None) -> int:
    from cssl_core import distributed
    from cssl_core.config import build_config
    from cssl_core.configfile import dump_config_yaml
    from cssl_core.evaluation import protocol_names, protocol_params
    from cssl_core.train import load_checkpoint
    from store.artifacts import ArtifactStore, is_url

    method, overrides = pretrain_overrides(args)
    # A service job's stored config also holds its evaluations' parameters ({"knn": {"k": 20}}).
    eval_params = {p: overrides.pop(p) for p in protocol_names() if p in overrides}
    typed_eval_params = {}
    for protocol, params in eval_params.items():
        if not isinstance(params, dict):
            raise CsslError(f'{protocol} takes an object of its parameters, e.g. {{"k": 20}}; got {params!r}')
        typed = dataclasses.asdict(protocol_params(protocol, params))
        typed_eval_params[protocol] = {key: typed[key] for key in params}
    if resume:
        # A resumed run keeps its checkpoint's config (pretrain() rebuilds it from there), on the
        # processes an explicit --nproc asks for: a run may resume on another world size.
        stored = load_checkpoint(resume)["config"]
        if args.nproc is not None:
            stored = {**stored, "nproc": args.nproc}
        config = build_config(stored["method"], stored)
    elif method is None:
        raise CsslError("pretrain needs --method, or a --config file with a method key")
    else:
        config = build_config(method, overrides)
    if args.print_config:
        print(dump_config_yaml({**config.to_dict(), **typed_eval_params}), end="")
        return 0
    launched = distributed.env_world_size() > 1  # by torchrun, or by the launch below
    if launched and args.out is None:
        raise CsslError("a run on several processes needs --out, the one run folder they all share")
    out = args.out or str(Path("runs") / f"{config.method}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (config.nproc > 1 or launched) and is_url(out):
        raise CsslError("a run on several processes writes to a local --out folder; copy it to the bucket after")
    if config.nproc > 1 and not launched:
        # Each rank runs this same command; rank 0 prints what one process prints.
        return distributed.launch(config.nproc, run_rank, [*args.argv, "--out", out])
    if distributed.env_rank() != 0:
        from cssl_core.train import pretrain

        pretrain(config, Path(out), resume_from=resume)
        return 0
    if is_url(out):  # trained in a local folder, each file uploaded as soon as it is written
        with tempfile.TemporaryDirectory(prefix="cssl-run-") as folder:
            return _train(args, config, eval_params, resume, ArtifactStore(out.rstrip("/"), Path(folder)))
    return _train(args, config, eval_params, resume, ArtifactStore(out, Path(out)))


def _train(args: argparse.Namespace, config, eval_params: dict, resume: Path | None, run: ArtifactStore) -> int:
    from tqdm import tqdm

    from cssl_core import provenance
    from cssl_core.data import dataset_image_size
    from cssl_core.evaluation import evaluate_checkpoint
    from cssl_core.train import pretrain

    out = run.folder
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    run.publish(out / "config.json")

    # The bar appears with the first step, so an error while loading data is all that is printed.
    bar = None

    def on_progress(p):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total_steps, initial=p.step, unit="step", dynamic_ncols=True, file=sys.stderr)
        bar.total = p.total_steps
        bar.n = p.step
        bar.set_description(f"epoch {p.epoch + 1}/{p.epochs}")
        bar.set_postfix(loss=f"{p.loss:.4f}", lr=f"{p.lr:.3g}", img_s=f"{p.images_per_second:.0f}")
        if p.warning:
            tqdm.write(f"warning: {p.warning}", file=sys.stderr)

    def on_evaluation(r):
        tqdm.write(f"epoch {r.epoch}: kNN top-1 {r.top1:.2f}%", file=sys.stderr)

    try:
        # What this start runs with, beside its checkpoints; a resumed run's says where it ran last.
        image_size = dataset_image_size(config.dataset, config.image_size)
        found = provenance.collect(config.dataset, config.data, device=config.device, image_size=image_size)
        (out / "provenance.json").write_text(json.dumps(found, indent=2, sort_keys=True))
        run.publish(out / "provenance.json")
        result = pretrain(
            config,
            out,
            on_progress=on_progress,
            on_evaluation=on_evaluation,
            on_checkpoint=lambda info: run.publish(Path(info.path), also_as="checkpoints/last.pt"),
            resume_from=resume,
        )
    except CsslError:
        if created and not run.remote and not any(out.glob("checkpoints/*.pt")):
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves no folder
        raise
    finally:
        if bar is not None:
            bar.close()
    print(
        f"{result.stopped}: {result.steps} steps ({result.epochs_completed:.2f} epochs) in {result.train_seconds:.1f}s "
        f"of training, {result.images_per_second:.0f} images/s, final loss {result.final_loss:.4f}"
    )
    print(f"checkpoint: {run.url(run.relative(result.checkpoint)) if run.remote else result.checkpoint}")
    for protocol in [p for p in args.evaluate.split(",") if p]:
        r = evaluate_checkpoint(result.checkpoint, protocol, **eval_params.get(protocol, {}))
        print(f"{protocol}: {_accuracy(r)}")
    print(next_steps(run.root, config.method))
    return 0


def _accuracy(r) -> str:
    if r.top1 is None:
        return f"{r.num_test} test images, {_payload(r)}"
    return f"top-1 {r.top1:.2f}%" + (f", top-5 {r.top5:.2f}%" if r.top5 is not None else "")


def _payload(r) -> str:
    """A result without an accuracy is its protocol's declared extra payload; ``cssl eval --json`` prints it."""
    from cssl_core.evaluation import get_protocol

    return f"no accuracy; cssl eval --json prints its {', '.join(get_protocol(r.protocol).extra)}"


def next_steps(out: str | Path, method: str) -> str:
    """The run folder (or URL) and the commands that evaluate, export and resume it, ready to paste."""
    from cli.locations import join

    out = str(out)
    cssl, last = _cssl_command(), shlex.quote(join(out, "checkpoints", "last.pt"))
    return "\n".join(
        [
            f"run folder: {out}",
            f"  evaluate: {cssl} eval {last} --protocol knn",
            f"  export:   {cssl} export {last} --out {shlex.quote(join(out, 'backbone.pt'))}",
            f"  resume:   {cssl} pretrain --resume {last} --method {method} --out {shlex.quote(out)}",
        ]
    )


def _cssl_command() -> str:
    """How this shell runs this cssl: ``cssl`` when that is the one on PATH, else its script's path."""
    script = Path(sys.executable).parent / "cssl"
    on_path = shutil.which("cssl")
    if not script.is_file() or (on_path and Path(on_path).resolve() == script.resolve()):
        return "cssl"
    relative = os.path.relpath(script)
    return shlex.quote(str(script) if relative.startswith("..") else relative)


def cmd_eval(args: argparse.Namespace) -> int:
    from cli.locations import local_checkpoint

    params = key_values(args.overrides)  # typed and checked by the protocol's parameters
    with local_checkpoint(args.checkpoint) as checkpoint:
        return _eval(args, checkpoint, params)


def _eval(args: argparse.Namespace, checkpoint: Path, params: dict) -> int:
    from cssl_core.evaluation import evaluate_checkpoint, get_protocol

    def evaluate(random_init: bool):
        return evaluate_checkpoint(
            checkpoint,
            args.protocol,
            dataset=args.dataset,
            data=args.data,
            device=args.device,
            random_init=random_init,
            **params,
        )

    r = evaluate(args.random_init)
    baseline = evaluate(True) if args.baseline and not args.random_init else None
    if args.json:
        # The protocol's declared extra keys (embedding's points and classes, fine-tuning's steps) beside the rest.
        extra = {key: r.extra[key] for key in get_protocol(r.protocol).extra if key in r.extra}
        print(
            json.dumps(
                {
                    "protocol": r.protocol,
                    "parameters": r.parameters,
                    "top1": r.top1,
                    "top5": r.top5,
                    "dataset": r.dataset,
                    "num_train": r.num_train,
                    "num_test": r.num_test,
                    "epoch": r.epoch,
                    "random_init": args.random_init,
                    **extra,
                    **({"baseline": {"top1": baseline.top1, "top5": baseline.top5}} if baseline else {}),
                }
            )
        )
        return 0
    rows = [("random init" if args.random_init else f"epoch {r.epoch}", r)]
    if baseline:
        rows.append(("random init", baseline))
    print(f"{r.dataset}: {r.num_train} train / {r.num_test} test images")
    print(
        format_table(
            ["protocol", "weights", "parameters", "top-1", "top-5"],
            [
                [
                    res.protocol,
                    weights,
                    " ".join(f"{k}={v}" for k, v in res.parameters.items()),
                    "-" if res.top1 is None else f"{res.top1:.2f}%",
                    "-" if res.top5 is None else f"{res.top5:.2f}%",
                ]
                for weights, res in rows
            ],
        )
    )
    if not get_protocol(r.protocol).accuracy:
        print(f"{r.protocol}: {_payload(r)}")
    return 0


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; numbers (the last two columns) aligned right."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {len(header) - 2, len(header) - 1}
    lines = [
        "  ".join(
            str(cell).rjust(w) if i in right else str(cell).ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from cli.locations import local_checkpoint, local_output
    from cssl_core.train import export_backbone

    with local_checkpoint(args.checkpoint) as checkpoint, local_output(args.out) as out:
        export_backbone(checkpoint, out)
    print(args.out)
    return 0


def cmd_convert_checkpoint(args: argparse.Namespace) -> int:
    from cssl_core.train.checkpoint import convert_checkpoint

    if not args.trust:
        print(
            f"cssl: error: reading {args.checkpoint} runs any code it carries; add --trust if you wrote it or "
            "got it from someone you trust",
            file=sys.stderr,
        )
        return 2
    print(convert_checkpoint(args.checkpoint, args.out))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from cssl_core.config import build_config
    from cssl_core.methods import get_method, method_names

    rows = []
    for name in method_names():
        cls = get_method(name)
        paper = build_config(name, {"recipe": "paper"}).to_dict()
        shown = {**dataclasses.asdict(cls.config_cls()), **{k: paper[k] for k in cls.config_cls.small_image_recipe}}
        rows.append(
            {
                "name": name,
                "paper": cls.paper,
                "arxiv": cls.arxiv,
                "defaults": shown,
                "small_image_recipe": cls.config_cls.small_image_recipe,
                "vit_defaults": cls.config_cls.vit_defaults,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("key=paper's value; (small: X) is the value used on images of 64 px or less, (vit: X) on ViT backbones\n")
    for row in rows:
        print(f"{row['name']}: {row['paper']} (arXiv {row['arxiv']})")
        items = []
        for key, value in row["defaults"].items():
            item = f"{key}={value}"
            if key in row["small_image_recipe"]:
                item += f" (small: {row['small_image_recipe'][key]})"
            if key in row["vit_defaults"]:
                item += f" (vit: {row['vit_defaults'][key]})"
            items.append(item)
        print("    " + ", ".join(items))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cssl_core.data import describe_datasets

    for d in describe_datasets():
        need = "needs --data PATH" if d["needs_path"] else "built in"
        print(f"{d['name']}: {d['description']} ({need})")
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from cssl_core.data import cache
    from cssl_core.data.shards import parse_size, write_shards
    from cssl_core.errors import ConfigError

    if args.max_count is not None and args.max_count < 1:
        raise ConfigError(f"--max-count must be a positive integer, got {args.max_count}")
    max_count, max_size = (args.max_count, float("inf")) if args.max_count else (10**12, parse_size(args.shard_size))
    manifest = write_shards(
        Path(args.src), args.dest, max_size=max_size, max_count=max_count, cache_dir=cache.default_cache_dir()
    )
    for split, part in manifest["splits"].items():
        print(f"{split}: {len(part['samples']['name'])} samples in {len(part['shards'])} shards")
    print(f"wrote {args.dest}; train on it with --dataset webdataset --data {args.dest}")
    return 0


def run_rank(argv: list[str]) -> int:
    """One launched process of ``cssl pretrain --nproc N``: the same command, whose errors are
    raised rather than printed, so that the launcher stops the other ranks and reports it."""
    args = build_parser().parse_args(argv)
    args.argv = argv
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a launched process runs again
    try:
        return args.func(args)
    except CsslError as exc:
        print(f"cssl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

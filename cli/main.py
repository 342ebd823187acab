"""The ``cssl`` command: pretrain, evaluate, export and list what the core offers.

Service commands (serve, api, worker, db, token) are registered from ``cli.service``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from cssl_core.errors import CsslError

# CLI option -> config key; the API's job ``config`` uses the same keys.
PRETRAIN_OPTIONS = {
    "--dataset": "dataset",
    "--data": "data",
    "--epochs": "epochs",
    "--backbone": "backbone",
    "--batch-size": "batch_size",
    "--subset": "subset",
    "--seed": "seed",
    "--time-budget": "time_budget",
    "--checkpoint-every": "checkpoint_every",
    "--knn-every": "knn_every",
    "--precision": "precision",
    "--device": "device",
}


class Parser(argparse.ArgumentParser):
    """An unknown option's error lists the valid ones."""

    def error(self, message: str):
        if "unrecognized arguments" in message or "invalid choice" in message:
            options = sorted({o for a in self._actions for o in a.option_strings if o.startswith("--")})
            if options:
                message += f"\nvalid options: {', '.join(options)}"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    from cssl_core.evaluation import PROTOCOLS
    from cssl_core.methods import method_names

    parser = Parser(prog="cssl", description="Self-supervised pretraining and evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("pretrain", help="pretrain a backbone with a self-supervised method")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(method_names())}")
    for option, key in PRETRAIN_OPTIONS.items():
        p.add_argument(option, dest=key, default=None, help=f"config key {key}")
    p.add_argument("--config", type=Path, help="JSON file of config keys (the flat form stored with every run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config key, e.g. --set temperature=0.2 (see `cssl methods`)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<method>-<dataset>-<time>)")
    p.add_argument("--resume", type=Path, help="continue from this checkpoint")
    p.add_argument("--evaluate", default="", help="protocols to run at the end, e.g. knn,linear")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="evaluate a checkpoint's frozen backbone")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--protocol", choices=PROTOCOLS, default="knn")
    p.add_argument("--dataset", help="default: the pretraining dataset")
    p.add_argument("--data", help="default: the pretraining data path")
    p.add_argument("--random-init", action="store_true", help="evaluate the same backbone at random initialisation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="protocol parameter, e.g. --set k=20 (knn: k, temperature; linear: epochs, lr, ...)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a checkpoint's backbone as a plain torchvision state_dict")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("methods", help="list methods, their papers and defaults")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("datasets", help="list datasets")
    p.set_defaults(func=cmd_datasets)

    try:
        from cli.service import add_service_commands
    except ImportError:
        pass
    else:
        add_service_commands(sub)
    return parser


def _key_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CsslError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value
    return out


def cmd_pretrain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cssl_core.config import build_config
    from cssl_core.evaluation import PROTOCOL_PARAMS, evaluate_checkpoint, protocol_params
    from cssl_core.train import pretrain

    overrides: dict[str, Any] = {}
    if args.config:
        try:
            overrides.update(json.loads(args.config.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CsslError(f"could not read --config {args.config}: {exc}") from None
    overrides.update({key: getattr(args, key) for key in PRETRAIN_OPTIONS.values() if getattr(args, key) is not None})
    overrides.update(_key_values(args.overrides))
    # A service job's stored config also holds its evaluations' parameters ({"knn": {"k": 20}}).
    eval_params = {p: overrides.pop(p) for p in PROTOCOL_PARAMS if p in overrides}
    for protocol, params in eval_params.items():
        protocol_params(protocol, params)
    config = build_config(args.method, overrides)
    out = args.out or Path("runs") / f"{config.method}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
    print(f"run folder: {out}", file=sys.stderr)

    bar = tqdm(total=0, unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_progress(p):
        bar.total = p.total_steps
        bar.n = p.step
        bar.set_description(f"epoch {p.epoch + 1}/{p.epochs}")
        bar.set_postfix(loss=f"{p.loss:.4f}", lr=f"{p.lr:.3g}", img_s=f"{p.images_per_second:.0f}")

    def on_evaluation(r):
        bar.write(f"epoch {r.epoch}: kNN top-1 {r.top1:.2f}%")

    result = pretrain(config, out, on_progress=on_progress, on_evaluation=on_evaluation, resume_from=args.resume)
    bar.close()
    print(f"{result.stopped}: {result.steps} steps ({result.epochs_completed:.2f} epochs) in {result.train_seconds:.1f}s "
          f"of training, {result.images_per_second:.0f} images/s, final loss {result.final_loss:.4f}")
    print(f"checkpoint: {result.checkpoint}")
    for protocol in [p for p in args.evaluate.split(",") if p]:
        r = evaluate_checkpoint(result.checkpoint, protocol, **eval_params.get(protocol, {}))
        print(f"{protocol}: top-1 {r.top1:.2f}%" + (f", top-5 {r.top5:.2f}%" if r.top5 is not None else ""))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cssl_core.evaluation import evaluate_checkpoint

    params = _key_values(args.overrides)  # typed and checked by the protocol's parameters
    r = evaluate_checkpoint(args.checkpoint, args.protocol, dataset=args.dataset, data=args.data,
                            device=args.device, random_init=args.random_init, **params)
    if args.json:
        print(json.dumps({"protocol": r.protocol, "parameters": r.parameters, "top1": r.top1, "top5": r.top5,
                          "dataset": r.dataset, "num_train": r.num_train, "num_test": r.num_test,
                          "epoch": r.epoch, "random_init": args.random_init}))
    else:
        what = "random init" if args.random_init else f"epoch {r.epoch}"
        top5 = f", top-5 {r.top5:.2f}%" if r.top5 is not None else ""
        print(f"{r.protocol} ({what}, {r.dataset}, {r.num_train} train / {r.num_test} test): top-1 {r.top1:.2f}%{top5}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cssl_core.train import export_backbone

    print(export_backbone(args.checkpoint, args.out))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from cssl_core.methods import get_method, method_names

    rows = []
    for name in method_names():
        cls = get_method(name)
        rows.append({"name": name, "paper": cls.paper, "arxiv": cls.arxiv,
                     "defaults": dataclasses.asdict(cls.config_cls())})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['paper']} (arXiv {row['arxiv']})")
        print("    " + ", ".join(f"{k}={v}" for k, v in row["defaults"].items()))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from cssl_core.data import describe_datasets

    for d in describe_datasets():
        need = "needs --data PATH" if d["needs_path"] else "built in"
        print(f"{d['name']}: {d['description']} ({need})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CsslError as exc:
        print(f"cssl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The options that describe a pretraining run, shared by ``cssl pretrain`` (local) and
``cssl jobs submit`` (on a service), so that moving a run changes one word."""

from __future__ import annotations

import argparse
import dataclasses
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
    "--image-size": "image_size",
    "--data-mode": "data_mode",
    "--eval-dataset": "eval_dataset",
    "--eval-data": "eval_data",
    "--seed": "seed",
    "--time-budget": "time_budget",
    "--checkpoint-every": "checkpoint_every",
    "--knn-every": "knn_every",
    "--precision": "precision",
    "--device": "device",
    "--nproc": "nproc",
}


def config_help(cls: type, key: str) -> str:
    """A config key's help: its dataclass field's ``metadata["help"]`` (the text the API's
    schema carries too), its default and, for a number, its valid range."""
    from cssl_core.config import field_bounds, field_help

    field = {f.name: f for f in dataclasses.fields(cls)}[key]
    text = field_help(cls, key) or f"config key {key}"
    default = "none" if field.default is None else field.default
    bounds = field_bounds(cls, key)
    limits = f"; {bounds}" if bounds else ""
    return f"{text} (default: {default}{limits})".replace("%", "%%")  # argparse formats help with %


def add_pretrain_options(p: argparse.ArgumentParser) -> None:
    from cssl_core.config import PretrainConfig
    from cssl_core.methods import method_names

    p.add_argument(
        "--method", help=f"one of: {', '.join(method_names())}; may come from the --config file's method key"
    )
    for option, key in PRETRAIN_OPTIONS.items():
        p.add_argument(option, dest=key, default=None, help=config_help(PretrainConfig, key))
    p.add_argument(
        "--config",
        type=Path,
        help="YAML (.yaml, .yml) or JSON file of config keys (the flat form stored with every run; "
        "configs/ holds each method's paper recipe); options and --set override it",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config key, e.g. --set temperature=0.2 (see `cssl methods`)",
    )
    p.add_argument("--evaluate", default="", help="protocols to run at the end, e.g. knn,linear")


def pretrain_overrides(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """The run's method and config keys: the --config file, then the flags, then --set."""
    from cssl_core.configfile import read_config_file

    overrides: dict[str, Any] = read_config_file(args.config) if args.config else {}
    method = _method(args.method, overrides.get("method"), args.config)
    overrides.update({key: getattr(args, key) for key in PRETRAIN_OPTIONS.values() if getattr(args, key) is not None})
    overrides.update(key_values(args.overrides))
    return method, overrides


def key_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CsslError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value
    return out


def _method(option: str | None, in_file: Any, config_file: Path | None) -> str | None:
    """The method --method names, or else the config file's ``method`` key; the two must agree."""
    if option is not None and in_file is not None and in_file != option:
        raise CsslError(f"--method {option} differs from the method {in_file!r} of --config {config_file}; give one")
    return option if option is not None else in_file

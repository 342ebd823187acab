"""Config documents in YAML or JSON, read into the values JSON has.

A run's flat config (:meth:`cssl_core.config.PretrainConfig.to_dict`) may be written as JSON or
as YAML; both are read here into the same structure (mappings with string keys, lists,
strings, numbers, booleans, null), so that :func:`cssl_core.config.build_config` sees no
difference. YAML goes through ``safe_load`` (no Python objects are built) and may not use
anchors and aliases: a few hundred bytes of nested aliases stand for gigabytes once expanded
(the "billion laughs"), and a flat config has no use for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cssl_core.errors import ConfigError

YAML_SUFFIXES = (".yaml", ".yml")
# libyaml's parser where it is built in (the wheels have it), else the pure-Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):
    """Mappings one key a line; a list of numbers on its line (``local_crop_scale: [0.05, 0.4]``)."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flat = not any(isinstance(item, (list, dict)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


class YamlSyntaxError(ConfigError):
    """A YAML document that does not parse; ``line`` and ``column`` count from 1."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None):
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{problem}")
        self.problem, self.line, self.column = problem, line, column


def load_yaml(text: str | bytes) -> Any:
    """One YAML document as JSON values. A syntax error raises :class:`YamlSyntaxError` naming
    the line and column; a value JSON has no form for (a date, a set, binary, a key that is
    not a string) or an alias raises :class:`ConfigError` naming where it is."""
    try:
        document = yaml.load(text, Loader=_SafeLoader)
        _check_json_values(document, "", set())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        # libyaml's context and problem read as one sentence: "while parsing X, did not find Y".
        problem = ", ".join(p for p in (exc.context, exc.problem) if p) or "not valid YAML"
        if mark is None:
            raise YamlSyntaxError(problem) from None
        raise YamlSyntaxError(problem, mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:  # a reader error: bytes that are not UTF-8, a control character
        raise YamlSyntaxError(" ".join(str(exc).split())) from None
    except RecursionError:
        # libyaml stops at 1,000 levels; walking that many in Python may reach the interpreter's limit first.
        raise YamlSyntaxError("nested too deeply") from None
    return document


def _check_json_values(value: Any, where: str, containers: set[int]) -> None:
    # safe_load gives one object per alias target, so a container met twice came from an alias.
    at = f" at {where}" if where else ""
    if isinstance(value, (dict, list)):
        if id(value) in containers:
            raise ConfigError(f"YAML anchors and aliases (&name, *name) are not accepted{at}: write the value out")
        containers.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"YAML key {key!r}{at} is not a string: quote it")
            _check_json_values(item, f"{where}.{key}" if where else key, containers)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_values(item, f"{where}[{index}]", containers)
    elif not (value is None or isinstance(value, (str, bool, int, float))):
        raise ConfigError(
            f"YAML value {value!r}{at} is of type {type(value).__name__}, which a config cannot hold: quote it "
            "for a string"
        )


def read_config_file(path: Path) -> dict[str, Any]:
    """A config file's keys: YAML for a ``.yaml`` or ``.yml`` file, JSON otherwise. Every
    error is a :class:`ConfigError` that names the file (and the line, for bad syntax)."""
    is_yaml = path.suffix.lower() in YAML_SUFFIXES
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"could not read config file {path}: {exc}") from None
    try:
        if is_yaml:
            document = load_yaml(text)
        else:
            try:
                document = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ConfigError as exc:
        raise ConfigError(f"config file {path} is not valid {'YAML' if is_yaml else 'JSON'}: {exc}") from None
    if not isinstance(document, dict):
        shape = "key: value lines" if is_yaml else "a JSON object"
        found = "nothing" if document is None else f"a {_kind(document)}"
        raise ConfigError(f"config file {path} holds {found}, not a mapping of config keys ({shape})")
    return document


def _kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")


def dump_config_yaml(values: Mapping[str, Any]) -> str:
    """A config as YAML, in the order given; :func:`load_yaml` reads back the same values
    (tuples, which JSON and YAML store as lists, come back as lists)."""
    return yaml.dump(_plain(values), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value

"""The protocol contract and registry: what an evaluation protocol declares, and how it is run.

A protocol is a class registered by name with :func:`register_protocol` where it is defined. It
declares what it needs (the frozen features of a backbone, or the whole checkpoint), whether it
trains the encoder, which backbones it takes, whether its result has an accuracy, the keys of its
``extra`` payload and its typed parameters. ``evaluate_checkpoint`` and ``evaluate_backbone``
(:mod:`cssl_core.evaluation`), the API's ``GET /v1/protocols`` and the CLI go by these facts;
none of them names a protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cssl_core.backbones import VisionTransformer, vit_names
from cssl_core.config import coerce_field, did_you_mean
from cssl_core.errors import ConfigError
from cssl_core.evaluation.result import EvalResult, ProtocolOutput

Needs = Literal["features", "checkpoint"]
Backbones = Literal["any", "vit"]

# Every result of evaluate_checkpoint carries this beside the protocol's own keys.
CHECKPOINT_EXTRA = {
    "random_init": "true: the architecture at its random initialisation (same seed), the "
    "baseline a pretrained backbone should beat; false: the checkpoint's weights"
}


@dataclass
class CheckpointInput:
    """What a protocol that needs the checkpoint gets besides the data and its parameters."""

    state: dict[str, Any]  # the loaded checkpoint (load_checkpoint)
    random_init: bool  # evaluate the architecture at its random initialisation (same seed)
    device: torch.device
    # build(state, random_init=..., for_finetune=...) -> the checkpoint's encoder (images -> (N, D))
    build: Callable[..., nn.Module]

    @property
    def mean(self) -> list[float]:
        return self.state["normalization"]["mean"]

    @property
    def std(self) -> list[float]:
        return self.state["normalization"]["std"]

    def encoder(self, *, random_init: bool | None = None, for_finetune: bool = False) -> nn.Module:
        """The checkpoint's evaluation encoder (``for_finetune``: the one fine-tuning starts from)
        on the device; ``random_init`` None: as this evaluation asks."""
        random = self.random_init if random_init is None else random_init
        return self.build(self.state, random_init=random, for_finetune=for_finetune).to(self.device)


class Protocol:
    """Base class of an evaluation protocol. A subclass sets the class attributes below and
    overrides the hook its ``needs`` names: :meth:`run_features` or :meth:`run_checkpoint`."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: what the protocol measures
    params_cls: ClassVar[type]  # a dataclass of option(...) fields with a validate() method
    # "features": frozen features of a backbone; "checkpoint": the whole checkpoint.
    needs: ClassVar[Needs] = "features"
    trains_encoder: ClassVar[bool] = False
    backbone: ClassVar[Backbones] = "any"
    # True: the result has top1 (and top5 with five classes or more); False: only extra.
    accuracy: ClassVar[bool] = True
    # The keys of the result's extra payload, each with what it holds.
    extra: ClassVar[Mapping[str, str]] = {}

    def run_features(
        self, backbone: nn.Module, data, params: Any, mean: list[float], std: list[float], device: torch.device
    ) -> ProtocolOutput:
        """Evaluate ``backbone`` (images -> features, in eval mode) on ``data`` (an ImageDataset)."""
        raise NotImplementedError

    def run_checkpoint(self, checkpoint: CheckpointInput, data, params: Any) -> ProtocolOutput:
        """Evaluate the checkpoint on ``data`` (an ImageDataset)."""
        raise NotImplementedError

    @classmethod
    def facts(cls) -> dict[str, Any]:
        """What the protocol declares, as ``GET /v1/protocols`` shows it (parameters aside)."""
        extra = {**cls.extra, **CHECKPOINT_EXTRA}
        return {
            "name": cls.name,
            "summary": cls.summary,
            "needs": cls.needs,
            "trains_encoder": cls.trains_encoder,
            "backbone": cls.backbone,
            "accuracy": cls.accuracy,
            "extra": extra,
        }


_REGISTRY: dict[str, type[Protocol]] = {}
_HOOKS = {"features": "run_features", "checkpoint": "run_checkpoint"}
_RESULT_FIELDS = {f.name for f in dataclasses.fields(EvalResult)}


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: register ``cls`` under ``cls.name``, after checking its declarations."""
    name = getattr(cls, "name", None)
    if not name or not getattr(cls, "summary", None):
        raise TypeError(f"{cls.__name__} must declare a name and a one-line summary")
    if cls.needs not in _HOOKS:
        raise TypeError(f"{name}: needs must be one of {', '.join(_HOOKS)}, got {cls.needs!r}")
    if cls.backbone not in ("any", "vit"):
        raise TypeError(f"{name}: backbone must be 'any' or 'vit', got {cls.backbone!r}")
    hook = _HOOKS[cls.needs]
    if getattr(cls, hook) is getattr(Protocol, hook):
        raise TypeError(f"{name} needs {cls.needs}, so it must override {hook}")
    params_cls = getattr(cls, "params_cls", None)
    if not (dataclasses.is_dataclass(params_cls) and callable(getattr(params_cls, "validate", None))):
        raise TypeError(f"{name}: params_cls must be a dataclass with a validate() method")
    # The CLI prints a result's extra beside its own fields, and every checkpoint evaluation adds random_init.
    taken = sorted(set(cls.extra) & (_RESULT_FIELDS | set(CHECKPOINT_EXTRA)))
    if taken:
        raise TypeError(f"{name}: extra keys {', '.join(taken)} are taken")
    known = _REGISTRY.get(name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise TypeError(f"protocol {name!r} is already registered by {known.__module__}.{known.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def protocol_names() -> list[str]:
    return sorted(_REGISTRY)


def get_protocol(name: str) -> type[Protocol]:
    """The protocol class for ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown protocol {name!r}{did_you_mean(name, _REGISTRY)}; known protocols: {', '.join(protocol_names())}"
        ) from None


def protocol_params(protocol: str, overrides: dict[str, Any] | None = None) -> Any:
    """A protocol's parameters from JSON or command-line values, checked: unknown names, wrong
    types and out-of-range values raise :class:`ConfigError` saying what to fix."""
    cls = get_protocol(protocol).params_cls
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        named = ", ".join(name + did_you_mean(name, fields) for name in unknown)
        raise ConfigError(f"unknown {protocol} parameter(s) {named}; valid: {', '.join(sorted(fields))}")
    params = cls(**{name: coerce_field(fields[name], value) for name, value in overrides.items()})
    params.validate()
    return params


def require_backbone(backbone: str, takes: Backbones, what: str) -> None:
    """Refuse a backbone (a name, e.g. a checkpoint's ``config["backbone"]``) that ``what`` does
    not take; ``takes`` is a protocol's ``backbone`` fact."""
    if takes == "vit" and backbone not in vit_names():
        raise ConfigError(
            f"{what} takes a ViT backbone only ({', '.join(vit_names())}); this checkpoint's "
            f"backbone is {backbone!r}, which has no attention"
        )


def require_module(module: nn.Module, takes: Backbones, what: str) -> None:
    """:func:`require_backbone` for a built encoder rather than a checkpoint's backbone name."""
    if takes == "vit" and not isinstance(module, VisionTransformer):
        raise ConfigError(
            f"{what} takes a ViT backbone only ({', '.join(vit_names())}); this encoder is a "
            f"{type(module).__name__}, which has no attention"
        )

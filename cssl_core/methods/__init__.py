"""The method registry: every name the CLI, the API and the worker accept resolves here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from cssl_core.config import did_you_mean
from cssl_core.errors import ConfigError
from cssl_core.methods.base import Batch, Method, StepOutput, TrainingSet

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class for ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}{did_you_mean(name.lower(), method_names())}; "
                          f"known methods: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def build_method(config: PretrainConfig, image_size: int, num_samples: int,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> Method:
    """The configured method on its backbone, for images of side ``image_size`` and a training
    split of ``num_samples`` images (the size of per-sample state such as memory banks).

    ``normalization``: the ``(mean, std)`` per channel the views and evaluation images are
    normalised with (see :mod:`cssl_core.methods.base`); None: mean 0 and std 1.
    """
    from cssl_core.backbones.norm import convert_to_gn_ws

    mc = config.method_config
    cls = get_method(config.method)
    backbone, feature_dim = cls.build_backbone(config, image_size)
    model = cls(backbone, feature_dim, mc, num_samples)
    if normalization is not None:
        model.set_input_normalization(*normalization)
    if mc.norm == "gn_ws":
        convert_to_gn_ws(model)  # the heads too: no batch statistics anywhere
    return model


# Registering is importing: one line per method.
from cssl_core.methods import (  # noqa: E402,F401
    simclr, moco, byol, simsiam, barlow_twins, swav, deepclusterv2, dino, mocov3, byol_gnws,
    simclrv2, instdisc, invaspread, cmc, cpc, infomin,
)

__all__ = ["Batch", "Method", "StepOutput", "TrainingSet", "build_method", "get_method", "method_names", "register"]

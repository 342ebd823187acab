"""Methods: each in its own module, registered where its class is defined (``@register``).

Every name the CLI, the API and the worker accept resolves through :data:`cssl_core.registry.METHODS`,
which imports this package's modules on its first lookup; nothing here lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cssl_core.backbones.norm import convert_to_gn_ws
from cssl_core.methods.base import Batch, Method, StepOutput, TrainingSet
from cssl_core.registry import METHODS, register

if TYPE_CHECKING:
    from cssl_core.config import PretrainConfig


def get_method(name: str) -> type[Method]:
    """The method class for ``name``; an unknown name lists the known ones."""
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()


def build_method(
    config: PretrainConfig,
    image_size: int,
    num_samples: int,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Method:
    """The configured method on its backbone, for images of side ``image_size`` and a training
    split of ``num_samples`` images (the size of per-sample state such as memory banks).

    ``normalization``: the ``(mean, std)`` per channel the views and evaluation images are
    normalised with (see :mod:`cssl_core.methods.base`); None: mean 0 and std 1.
    """
    mc = config.method_config
    cls = get_method(config.method)
    backbone, feature_dim = cls.build_backbone(config, image_size)
    model = cls(backbone, feature_dim, mc, num_samples)
    if normalization is not None:
        model.set_input_normalization(*normalization)
    if mc.norm == "gn_ws":
        convert_to_gn_ws(model)  # the heads too: no batch statistics anywhere
    return model


__all__ = ["Batch", "Method", "StepOutput", "TrainingSet", "build_method", "get_method", "method_names", "register"]

"""Typed run configuration.

A run's configuration is one flat namespace: the fields of :class:`PretrainConfig` (shared
by every method) plus the fields of the method's own config dataclass (its loss and head
hyper-parameters and its optimiser defaults from the paper). The CLI's options, the API's
``config`` object and the JSON stored with a run and inside every checkpoint all use these
flat names, so a stored run can be rebuilt with :func:`build_config`.

It sits above the augmentation presets, the backbones, the datasets and the method registry,
and below the methods: :func:`build_config` asks :data:`cssl_core.registry.METHODS` what a
method name means, and nothing it imports imports it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from cssl_core.augment import preset_names
from cssl_core.backbones import NORMS, vit_names
from cssl_core.data import check_data_mode, dataset_image_size
from cssl_core.data.stream import DECODE_PLACES
from cssl_core.errors import ConfigError, did_you_mean
from cssl_core.registry import METHODS
from cssl_core.sizes import SMALL_IMAGE_MAX_SIZE

OPTIMIZERS = ("sgd", "lars", "adamw")
PRECISIONS = ("bf16", "fp32")
RECIPES = ("auto", "small_images", "paper")


@dataclass(frozen=True)
class Bounds:
    """A numeric key's valid range: above ``gt`` or from ``ge``, below ``lt`` or up to ``le``
    (pydantic's names). A tuple key's bounds hold for each of its numbers."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def __post_init__(self) -> None:
        if (self.gt is not None and self.ge is not None) or (self.lt is not None and self.le is not None):
            raise TypeError("give at most one lower bound (gt or ge) and one upper bound (lt or le)")

    def __contains__(self, value: float) -> bool:
        # Written so that NaN, which compares false with everything, is outside any bounds.
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def __str__(self) -> str:
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            return f"in {'(' if self.gt is not None else '['}{low}, {high}{')' if self.lt is not None else ']'}"
        if self.gt is not None:
            return f"greater than {self.gt}"
        if self.ge is not None:
            return f"at least {self.ge}"
        return f"less than {self.lt}" if self.lt is not None else f"at most {self.le}"


def option(
    default: Any,
    help: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A config field with its help text (shown by ``cssl pretrain --help`` and the API schema)
    and, for a number, its valid range (checked by :func:`check_bounds`)."""
    metadata: dict[str, Any] = {"help": help}
    if (gt, ge, lt, le) != (None, None, None, None):
        metadata["bounds"] = Bounds(gt=gt, ge=ge, lt=lt, le=le)
    return field(default=default, metadata=metadata)


def _inherited_metadata(config_cls: type, name: str, key: str) -> Any:
    # A subclass that only changes a default (the paper's ``base_lr``) keeps its parent's metadata.
    for cls in config_cls.__mro__:
        f = getattr(cls, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get(key):
            return f.metadata[key]
    return None


def field_help(config_cls: type, name: str) -> str | None:
    """The help text of a config field, declared on the class or a parent."""
    return _inherited_metadata(config_cls, name, "help") or None


def field_bounds(config_cls: type, name: str) -> Bounds | None:
    """The valid range of a numeric config field, declared on the class or a parent."""
    return _inherited_metadata(config_cls, name, "bounds")


def check_bounds(config: Any) -> None:
    """Reject a non-finite float or a number outside its field's declared bounds, naming the
    key, the range and the value. Every config dataclass's ``validate`` starts here."""
    for f in fields(config):
        value = getattr(config, f.name)
        numbers = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            continue
        each = " each" if isinstance(value, tuple) else ""
        if not all(math.isfinite(v) for v in numbers if isinstance(v, float)):
            raise ConfigError(f"{f.name} must{each} be a finite number, got {value}")
        bounds = field_bounds(type(config), f.name)
        if bounds is not None and not all(v in bounds for v in numbers):
            raise ConfigError(f"{f.name} must{each} be {bounds}, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value as an error message quotes it: a 400-digit number by its first digits."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


@dataclass
class MethodConfig:
    """Optimisation defaults every method config carries; subclasses set the paper's values.

    ``base_lr`` is the learning rate for a batch of 256; the run uses
    ``base_lr * batch_size / 256`` (the linear scaling rule, Goyal et al. 2017).
    ``small_image_recipe`` holds the values (of any config key) measured to work best on
    images of 64 px or less in a short run; ``recipe="auto"`` uses them for such data.
    ``vit_defaults`` holds the paper's values for ViT backbones where they differ (e.g. AdamW
    instead of LARS); they apply whenever the backbone is a ViT and the key is not given.
    ``tiny_test_values`` holds values for a quick test step on 32-px images where the generic
    shrinking of widths, crops, blocks and counts (``tests/tiny.py``) leaves the step slow.
    ``unrecorded_defaults`` holds, for a key added after runs were stored, the value a stored
    config without it ran with (:func:`rebuild_config`), where today's default differs.
    """

    small_image_recipe: ClassVar[dict[str, Any]] = {}
    vit_defaults: ClassVar[dict[str, Any]] = {}
    tiny_test_values: ClassVar[dict[str, Any]] = {}
    unrecorded_defaults: ClassVar[dict[str, Any]] = {}

    optimizer: str = option("sgd", f"optimiser: {', '.join(OPTIMIZERS)}")
    base_lr: float = option(0.05, "peak learning rate for a batch of 256 (scaled linearly with batch_size)", gt=0)
    weight_decay: float = option(1e-4, "weight decay (biases and norm parameters get none)", ge=0)
    weight_decay_end: float | None = option(
        None, "weight decay at the end of a cosine schedule from weight_decay; none: constant", ge=0
    )
    sgd_momentum: float = option(0.9, "momentum of SGD and LARS", ge=0, lt=1)
    # 0.001 is SimCLR's and BYOL's at batch 4096; a relative update of base_lr * batch/256 * eta
    # per step is small at small batches, where a larger eta trains faster (the small-image
    # recipes' values are measured here; solo-learn's 0.02 is a clipped ceiling, see LARS).
    lars_eta: float = option(0.001, "LARS trust coefficient", gt=0)
    warmup_epochs: float = option(10.0, "linear learning-rate warmup, in epochs (at most a tenth of the run)", ge=0)
    grad_clip: float | None = option(
        None, "clip each parameter's gradient norm to this (DINO's clipping); none: no clipping", gt=0
    )
    augmentation: str = option("simclr", "augmentation preset (see cssl_core.augment.presets)")
    crop_min_scale: float | None = option(
        None, "smallest random-crop area fraction; none: the preset's (the paper's)", gt=0, le=1
    )
    jitter_strength: float = option(1.0, "multiplies the preset's colour-jitter strengths; 1 keeps the paper's", ge=0)
    norm: str = option(
        "bn", "normalisation layers: bn (BatchNorm) or gn_ws (GroupNorm + weight standardisation, no batch statistics)"
    )
    frozen_patch_embed: bool = option(False, "ViTs: keep the patch projection at its random init (MoCo v3)")

    def validate(self) -> None:
        """Bounds first (:func:`check_bounds`), then choices; a subclass adds its cross-field
        checks after ``super().validate()``."""
        check_bounds(self)
        if self.augmentation not in preset_names():
            raise ConfigError(f"augmentation must be one of {', '.join(preset_names())}, got {self.augmentation!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")


@dataclass
class PretrainConfig:
    """Everything a pretraining run needs besides the method's own hyper-parameters."""

    method: str
    dataset: str = option("cifar10", "dataset name (see `cssl datasets`)")
    data: str | None = option(
        None, "path of the dataset's files (a folder or a .tar.gz); none: the dataset's default location"
    )
    backbone: str = option("resnet18", "encoder: resnet18, resnet50, small, vit_tiny, vit_small")
    epochs: int = option(100, "training epochs (a time budget may stop earlier)", ge=1, le=100_000)
    batch_size: int = option(
        256, "images per optimiser step (contrastive losses need negatives in the batch)", ge=2, le=65_536
    )
    subset: int | None = option(None, "train on a seeded, class-balanced subset of this many images; none: all", ge=1)
    image_size: int | None = option(
        None,
        "side of the square training images for a data set of images of any size (imagefolder): short side "
        "resized, then centre-cropped; none: the data set's own (64 for imagefolder)",
        ge=8,
        le=1024,
    )
    data_mode: str = option(
        "auto",
        "memory: decode the data set once into memory; stream: read an image folder from disk each epoch, "
        "cropping at the images' own resolution (for folders too big for memory); auto: stream an image "
        "folder whose decoded images would exceed the memory limit",
    )
    data_workers: int | None = option(
        None, "data-loading processes of a streamed data set; none: one per CPU core less one, at most 8", ge=0, le=64
    )
    decode_on: str = option(
        "auto",
        "where a streamed data set's images are decoded and cropped: loader (the data-loading processes, on the "
        "CPU) or device (the training process, on its device: nvjpeg on a GPU); auto: device when training on CUDA",
    )
    eval_dataset: str | None = option(
        None,
        "the labelled data set of kNN during training and the final evaluations, brought to the training "
        "resolution; none: the pretraining data set (which then needs labels)",
    )
    eval_data: str | None = option(None, "path of eval_dataset's files; none: its default location")
    seed: int = option(0, "seed of the initialisation, data order and augmentation", ge=0, le=2**32 - 1)
    time_budget: float | None = option(
        None, "stop after this many seconds of training; schedules are fitted to it", gt=0
    )
    checkpoint_every: int = option(10, "write a checkpoint every this many epochs (0: only at the end)", ge=0)
    knn_every: int = option(0, "kNN-evaluate every this many epochs (0: never during training)", ge=0)
    precision: str = option("bf16", "bf16 (autocast where the hardware has native bf16) or fp32")
    channels_last: bool = option(True, "channels-last memory format (faster convolutions)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    nproc: int = option(
        1,
        "processes per node, each taking an equal share of batch_size (gloo on a CPU, NCCL on CUDA, "
        "one GPU each); 1: one process",
        ge=1,
        le=1024,
    )
    recipe: str = option(
        "auto",
        "auto: the method's small-image recipe for images of 64 px or less, else the paper's; "
        "small_images or paper to choose",
    )
    method_config: MethodConfig = field(default_factory=MethodConfig)

    def validate(self) -> None:
        check_bounds(self)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        check_data_mode(self.dataset, self.data_mode)
        if self.decode_on not in DECODE_PLACES:
            raise ConfigError(f"decode_on must be one of {', '.join(DECODE_PLACES)}, got {self.decode_on!r}")
        check_batch_split(self.batch_size, self.nproc)
        self.method_config.validate()

    @property
    def lr(self) -> float:
        """Peak learning rate after linear scaling with the batch size."""
        return self.method_config.base_lr * self.batch_size / 256

    def to_dict(self) -> dict[str, Any]:
        """The flat form stored with a run; :func:`build_config` reverses it."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method_config"}
        flat.update(dataclasses.asdict(self.method_config))
        return flat

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def common_field_names() -> list[str]:
    return [f.name for f in fields(PretrainConfig) if f.name not in ("method", "method_config")]


def check_batch_split(batch_size: int, processes: int) -> None:
    """batch_size is the global batch: each of ``processes`` ranks takes an equal share."""
    if batch_size % processes:
        raise ConfigError(
            f"batch_size {batch_size} does not split evenly over {processes} processes; "
            f"use a multiple of {processes} (it is the global batch, split across processes)"
        )


def build_config(method: str, overrides: Mapping[str, Any] | None = None) -> PretrainConfig:
    """Build and validate a run config from a method name and flat overrides.

    Keys may name a :class:`PretrainConfig` field or a field of the method's config; an
    unknown key raises :class:`ConfigError` listing the valid ones. With ``recipe="auto"``
    (the default) a dataset of small images gets the method's small-image recipe for every
    key not given, and a ViT backbone the method's ViT values; the result records which recipe it used, so its
    :meth:`~PretrainConfig.to_dict` rebuilds the same config.
    """
    spec = METHODS.get(method)
    overrides = dict(overrides or {})
    overrides.pop("method", None)
    common = {f.name: f for f in fields(PretrainConfig) if f.name not in ("method", "method_config")}
    specific = {f.name: f for f in fields(spec.config_cls)}
    unknown = sorted(set(overrides) - set(common) - set(specific))
    if unknown:
        valid = sorted(set(common) | set(specific))
        named = ", ".join(key + did_you_mean(key, valid) for key in unknown)
        raise ConfigError(f"unknown option(s) for method {method!r}: {named}; valid options: {', '.join(valid)}")
    image_size = dataset_image_size(
        coerce_field(common["dataset"], overrides.get("dataset", common["dataset"].default)),
        coerce_field(common["image_size"], overrides.get("image_size")),
    )
    if (eval_dataset := coerce_field(common["eval_dataset"], overrides.get("eval_dataset"))) is not None:
        dataset_image_size(eval_dataset)  # a known name, or the error that lists them
    recipe = coerce_field(common["recipe"], overrides.get("recipe", "auto"))
    if recipe == "auto":
        recipe = "small_images" if image_size <= SMALL_IMAGE_MAX_SIZE else "paper"
    backbone = coerce_field(common["backbone"], overrides.get("backbone", common["backbone"].default))
    values = {
        **(spec.config_cls.small_image_recipe if recipe == "small_images" else {}),
        **(spec.config_cls.vit_defaults if backbone in vit_names() else {}),
        **overrides,
        "recipe": recipe,
    }
    method_kwargs = {k: coerce_field(specific[k], v) for k, v in values.items() if k in specific}
    common_kwargs = {k: coerce_field(common[k], v) for k, v in values.items() if k in common}
    try:
        config = PretrainConfig(method=spec.name, method_config=spec.config_cls(**method_kwargs), **common_kwargs)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    config.validate()
    spec.check_config(config, image_size)
    return config


def rebuild_config(stored: Mapping[str, Any]) -> PretrainConfig:
    """The config of a stored run (:meth:`PretrainConfig.to_dict`, e.g. a checkpoint's
    ``"config"``): keys it lacks, added since, take the value it ran with (the method config's
    ``unrecorded_defaults``) rather than today's default, so that a checkpoint rebuilds the
    network it holds."""
    spec = METHODS.get(stored["method"])
    return build_config(stored["method"], {**spec.config_cls.unrecorded_defaults, **stored})


def coerce_field(f: dataclasses.Field, value: Any) -> Any:
    """Coerce a JSON or command-line value to the dataclass field's declared type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = "None" in kind
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{f.name} may not be null")
    base = kind.replace("| None", "").replace("None |", "").strip()
    try:
        if base == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # check_bounds rejects NaN and infinity
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if base.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            return tuple(float(v) if "float" in base else int(v) for v in value)
    except OverflowError:  # an int beyond a float's range
        raise ConfigError(f"{f.name} must be a finite number, got {_shown(value)}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name} must be of type {base}, got {_shown(value)}") from None
    return value

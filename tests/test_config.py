"""Every numeric config key has its valid range declared beside it, and build_config (the one
door of the CLI, the API and a worker re-building a stored config) and the protocol parameters
enforce it with a message that names the key, the range and the value."""

import dataclasses
import re

import pytest

from cssl_core.config import Bounds, PretrainConfig, build_config, field_bounds
from cssl_core.errors import ConfigError
from cssl_core.evaluation import PROTOCOL_PARAMS, protocol_params
from cssl_core.methods import get_method, method_names
from cssl_core.methods.simclr import SimCLRConfig

CONFIG_CLASSES = [PretrainConfig, *(get_method(name).config_cls for name in method_names()), *PROTOCOL_PARAMS.values()]


def numeric_fields(cls):
    return [f.name for f in dataclasses.fields(cls) if re.search(r"\b(int|float)\b", str(f.type))]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_numeric_key_declares_its_range(cls):
    missing = [name for name in numeric_fields(cls) if field_bounds(cls, name) is None]
    assert not missing, f"{cls.__name__}: no bounds for {missing}"


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("recipe", ["auto", "small_images", "paper"])
@pytest.mark.parametrize("dataset", ["cifar10", "stl10"])
def test_defaults_and_recipes_are_in_range(method, recipe, dataset):
    config = build_config(method, {"recipe": recipe, "dataset": dataset})
    if config.recipe == "small_images":
        recipe_values = get_method(method).config_cls.small_image_recipe
        stored = config.to_dict()
        assert {key: stored[key] for key in recipe_values} == recipe_values
    # The stored form rebuilds: a worker re-building a job's config gets the same.
    assert build_config(method, config.to_dict()) == config


@pytest.mark.parametrize("method", [m for m in method_names() if get_method(m).config_cls.vit_defaults])
@pytest.mark.parametrize("dataset", ["cifar10", "stl10"])
def test_vit_defaults_are_in_range(method, dataset):
    config = build_config(method, {"backbone": "vit_tiny", "dataset": dataset})
    assert config.method_config.optimizer == get_method(method).config_cls.vit_defaults["optimizer"]


@pytest.mark.parametrize("protocol", list(PROTOCOL_PARAMS))
def test_protocol_defaults_are_in_range(protocol):
    assert protocol_params(protocol) == PROTOCOL_PARAMS[protocol]()


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("simclr", {"temperature": -1}, "temperature must be greater than 0, got -1.0"),
        ("simclr", {"temperature": 0}, "temperature must be greater than 0, got 0.0"),
        ("simclr", {"temperature": "nan"}, "temperature must be a finite number, got nan"),
        ("simclr", {"temperature": float("nan")}, "temperature must be a finite number, got nan"),
        ("simclr", {"base_lr": "inf"}, "base_lr must be a finite number, got inf"),
        ("simclr", {"weight_decay": float("-inf")}, "weight_decay must be a finite number, got -inf"),
        ("simclr", {"temperature": 10**400}, "temperature must be a finite number, got 1000"),  # beyond a float
        ("simclr", {"base_lr": 0}, "base_lr must be greater than 0, got 0.0"),
        ("simclr", {"weight_decay": -1e-6}, "weight_decay must be at least 0, got -1e-06"),
        ("simclr", {"sgd_momentum": 1.0}, "sgd_momentum must be in [0, 1), got 1.0"),
        ("simclr", {"crop_min_scale": 0}, "crop_min_scale must be in (0, 1], got 0.0"),
        ("simclr", {"crop_min_scale": 1.5}, "crop_min_scale must be in (0, 1], got 1.5"),
        ("simclr", {"epochs": 0}, "epochs must be in [1, 100000], got 0"),
        ("simclr", {"batch_size": 1}, "batch_size must be in [2, 65536], got 1"),
        ("simclr", {"subset": 0}, "subset must be at least 1, got 0"),
        ("simclr", {"time_budget": -5}, "time_budget must be greater than 0, got -5.0"),
        ("simclr", {"seed": -1}, "seed must be in [0, 4294967295], got -1"),
        ("simclr", {"seed": 2**32}, "seed must be in [0, 4294967295], got 4294967296"),
        ("simclr", {"projector_dim": 0}, "projector_dim must be at least 1, got 0"),
        ("simclr", {"projector_hidden_dim": 0}, "projector_hidden_dim must be at least 1, got 0"),
        ("byol", {"momentum": 1.5}, "momentum must be in [0, 1], got 1.5"),
        ("byol", {"momentum": -0.1}, "momentum must be in [0, 1], got -0.1"),
        ("mocov2", {"queue_size": 0}, "queue_size must be at least 1, got 0"),
        ("instdisc", {"bank_momentum": 1.0}, "bank_momentum must be in [0, 1), got 1.0"),
        ("cpc", {"directions": 5}, "directions must be in [1, 4], got 5"),
        ("cpc", {"color_drop_p": 1.01}, "color_drop_p must be in [0, 1], got 1.01"),
        ("dino", {"weight_decay_end": -0.4}, "weight_decay_end must be at least 0, got -0.4"),
        ("dino", {"local_crop_scale": "0.05,1.5"}, "local_crop_scale must each be in (0, 1], got (0.05, 1.5)"),
        ("dino", {"local_crop_scale": "0.05,nan"}, "local_crop_scale must each be a finite number, got (0.05, nan)"),
        ("deepclusterv2", {"nmb_prototypes": "100,0,100"}, "nmb_prototypes must each be at least 1, got (100, 0, 100)"),
        ("swav", {"epsilon": 0}, "epsilon must be greater than 0, got 0.0"),
        # A subclass narrows its parent's range (fine-tuning starts from the projector's first layer)...
        ("simclrv2", {"projector_layers": 1}, "projector_layers must be at least 2, got 1"),
        # ... or keeps it when it redeclares the field with a new default and help.
        ("infomin", {"temperature": -0.15}, "temperature must be greater than 0, got -0.15"),
    ],
)
def test_out_of_range_values_name_the_key_the_range_and_the_value(method, overrides, message):
    with pytest.raises(ConfigError) as error:
        build_config(method, overrides)
    assert str(error.value).startswith(message), str(error.value)


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("byol", {"momentum": 1.0}),  # a frozen target: the end of BYOL's cosine
        ("byol", {"momentum": 0.0}),
        ("mocov2", {"momentum": 1.0}),
        ("dino", {"momentum_teacher": 1.0, "center_momentum": 0.0}),
        (
            "simclr",
            {"sgd_momentum": 0.0, "crop_min_scale": 1.0, "weight_decay": 0, "warmup_epochs": 0, "jitter_strength": 0},
        ),
        (
            "simclr",
            {"epochs": 1, "batch_size": 2, "subset": 1, "seed": 2**32 - 1, "knn_every": 0, "checkpoint_every": 0},
        ),
        ("simclr", {"projector_layers": 1}),
        ("simclrv2", {"projector_layers": 2, "memory_size": 0, "memory_momentum": 0.0}),
        ("cpc", {"directions": 4, "color_drop_p": 0.0, "patch_crop_scale": 1.0, "context_blocks": 0}),
        ("swav", {"local_crops": 0, "queue_length": 0, "freeze_prototypes_epochs": 0}),
        ("dino", {"local_crops": 0, "local_crop_scale": "0.05,1"}),
    ],
)
def test_boundary_values_inside_the_range_are_accepted(method, overrides):
    stored = build_config(method, {"dataset": "synthetic", **overrides}).to_dict()
    for key, value in overrides.items():
        if key != "local_crop_scale":
            assert stored[key] == value, key


def test_a_config_built_in_python_is_checked_too():
    # pretrain() validates a PretrainConfig it is handed, not only build_config's.
    config = PretrainConfig(method="simclr", method_config=SimCLRConfig(temperature=float("nan")))
    with pytest.raises(ConfigError, match="temperature must be a finite number, got nan"):
        config.validate()
    config = PretrainConfig(method="simclr", epochs=0)
    with pytest.raises(ConfigError, match=re.escape("epochs must be in [1, 100000], got 0")):
        config.validate()


def test_a_stored_config_out_of_range_does_not_rebuild():
    stored = {**build_config("simclr").to_dict(), "temperature": -1.0}
    with pytest.raises(ConfigError, match=r"^temperature must be greater than 0, got -1.0$"):
        build_config(stored["method"], stored)


@pytest.mark.parametrize(
    "protocol, params, message",
    [
        ("knn", {"k": 0}, "k must be at least 1, got 0"),
        ("knn", {"temperature": "-1"}, "temperature must be greater than 0, got -1.0"),
        ("knn", {"temperature": "nan"}, "temperature must be a finite number, got nan"),
        ("linear", {"label_fraction": 0}, "label_fraction must be in (0, 1], got 0.0"),
        ("linear", {"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ("linear", {"weight_decay": -1}, "weight_decay must be at least 0, got -1.0"),
        ("finetune", {"epochs": 0}, "epochs must be at least 1, got 0"),
        ("finetune", {"batch_size": 1}, "batch_size must be at least 2, got 1"),
        ("finetune", {"lr": "inf"}, "lr must be a finite number, got inf"),
        ("distill", {"finetune_epochs": 0}, "finetune_epochs must be at least 1, got 0"),
        ("distill", {"finetune_time_budget": 0}, "finetune_time_budget must be greater than 0, got 0.0"),
        ("distill", {"seed": -3}, "seed must be in [0, 4294967295], got -3"),
    ],
)
def test_protocol_parameters_out_of_range(protocol, params, message):
    with pytest.raises(ConfigError) as error:
        protocol_params(protocol, params)
    assert str(error.value) == message


def test_protocol_boundaries_inside_the_range_are_accepted():
    assert protocol_params("linear", {"label_fraction": 1, "weight_decay": 0}).label_fraction == 1.0
    assert protocol_params("knn", {"k": 1}).k == 1
    assert protocol_params("finetune", {"label_fraction": 0.001, "batch_size": 2}).batch_size == 2


def test_an_unknown_key_suggests_the_nearest_valid_one():
    with pytest.raises(ConfigError) as error:
        build_config("simclr", {"temprature": 0.2})
    assert str(error.value).startswith(
        "unknown option(s) for method 'simclr': temprature (did you mean temperature?); valid options: augmentation, "
    )
    with pytest.raises(ConfigError) as error:
        build_config("simclr", {"epoch": 3, "zzzz": 1})
    assert "epoch (did you mean epochs?), zzzz; valid options" in str(error.value)  # nothing near zzzz
    with pytest.raises(
        ConfigError, match=r"^unknown knn parameter\(s\) kk \(did you mean k\?\); valid: k, temperature$"
    ):
        protocol_params("knn", {"kk": 5})
    with pytest.raises(ConfigError, match=r"^unknown method 'simclrr' \(did you mean simclr\?\); known methods: "):
        build_config("simclrr")


def test_bounds_read_as_the_message_says():
    assert str(Bounds(gt=0)) == "greater than 0" and str(Bounds(ge=1)) == "at least 1"
    assert str(Bounds(lt=1)) == "less than 1" and str(Bounds(le=1)) == "at most 1"
    assert str(Bounds(ge=0, lt=1)) == "in [0, 1)" and str(Bounds(gt=0, le=1)) == "in (0, 1]"
    assert 0 in Bounds(ge=0) and 0 not in Bounds(gt=0) and 1 in Bounds(gt=0, le=1) and 1 not in Bounds(ge=0, lt=1)
    assert float("nan") not in Bounds(ge=0) and float("nan") not in Bounds(le=1)
    with pytest.raises(TypeError):
        Bounds(gt=0, ge=0)

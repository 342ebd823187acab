"""/v1/methods, /v1/protocols and /v1/datasets, resolved through cssl_core's registries."""

from __future__ import annotations

import dataclasses
import functools

from fastapi import APIRouter
from pydantic import TypeAdapter

from api.deps import CurrentOwner
from api.schemas import DatasetInfo, MethodPublic, ProtocolPublic
from cssl_core.config import PretrainConfig, build_config, field_bounds, field_help
from cssl_core.data import describe_datasets
from cssl_core.evaluation import Protocol, get_protocol, protocol_names
from cssl_core.methods import get_method, method_names

router = APIRouter(prefix="/v1", tags=["catalog"])


@functools.cache
def _methods() -> list[MethodPublic]:
    out = []
    for name in method_names():
        method = get_method(name)
        defaults = build_config(name, {"recipe": "paper"}).to_dict()
        defaults.pop("method", None)
        defaults["recipe"] = "auto"
        out.append(
            MethodPublic(
                name=method.name,
                paper=method.paper,
                arxiv=getattr(method, "arxiv", None),
                defaults=defaults,
                small_image_recipe=dict(method.config_cls.small_image_recipe),
                vit_defaults=dict(method.config_cls.vit_defaults),
                config_schema=job_config_schema(method.config_cls),
            )
        )
    return out


# A job names these through its method and dataset fields, not its config.
RUN_KEYS_SET_ELSEWHERE = ("method", "method_config", "dataset", "data", "eval_dataset", "eval_data")
# Where a number's declared bounds go in a JSON schema.
BOUND_KEYWORDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def config_schema(config_cls: type, skip: tuple[str, ...] = ()) -> dict:
    """A config dataclass's JSON schema, each key described by its field's help text, the same
    text `cssl pretrain --help` shows, and bounded by its declared valid range."""
    schema = TypeAdapter(config_cls).json_schema()
    schema.pop("$defs", None)
    properties = schema.get("properties", {})
    for name in skip:
        properties.pop(name, None)
    schema["required"] = [name for name in schema.get("required", []) if name in properties]
    if not schema["required"]:
        schema.pop("required")
    for name, prop in properties.items():
        if help_text := field_help(config_cls, name):
            prop["description"] = help_text
        if bounds := field_bounds(config_cls, name):
            prop.update(
                {BOUND_KEYWORDS[k]: getattr(bounds, k) for k in BOUND_KEYWORDS if getattr(bounds, k) is not None}
            )
    return schema


def job_config_schema(method_config_cls: type) -> dict:
    """The schema of every key a job's config takes for a method: the run's keys common to all
    methods, then the method's own."""
    schema = config_schema(method_config_cls)
    run = config_schema(PretrainConfig, skip=RUN_KEYS_SET_ELSEWHERE)["properties"]
    schema["properties"] = {**run, **schema.get("properties", {})}
    return schema


@functools.cache
def _protocol(cls: type[Protocol]) -> ProtocolPublic:
    return ProtocolPublic(
        **cls.facts(), parameters=dataclasses.asdict(cls.params_cls()), parameters_schema=config_schema(cls.params_cls)
    )


def _protocols() -> list[ProtocolPublic]:
    return [_protocol(get_protocol(name)) for name in protocol_names()]


@router.get(
    "/methods", response_model=list[MethodPublic], summary="Registered methods, their defaults and config schema"
)
def list_methods(_: CurrentOwner) -> list[MethodPublic]:
    return _methods()


@router.get("/datasets", response_model=list[DatasetInfo], summary="Data sets a job can name")
def list_datasets(_: CurrentOwner) -> list[DatasetInfo]:
    return [
        DatasetInfo(
            **{k: d.get(k) for k in DatasetInfo.model_fields if k != "recipe"},
            recipe=_auto_recipe(d["name"]) if d.get("image_size") else None,
        )
        for d in describe_datasets()
    ]


@functools.cache
def _auto_recipe(dataset: str) -> str:
    # The config resolves recipe=auto by the data set's image size alone, the same for every method.
    return build_config(method_names()[0], {"dataset": dataset}).recipe


@router.get(
    "/protocols",
    response_model=list[ProtocolPublic],
    summary="Evaluation protocols: what each needs and returns, and its parameters",
)
def list_protocols(_: CurrentOwner) -> list[ProtocolPublic]:
    return _protocols()

"""/v1/methods and /v1/datasets, resolved through cssl_core's registries."""

from __future__ import annotations

import functools

from fastapi import APIRouter
from pydantic import TypeAdapter

from api.deps import CurrentOwner
from api.schemas import DatasetInfo, MethodPublic
from cssl_core.config import build_config, field_help
from cssl_core.data import describe_datasets
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
                config_schema=config_schema(method.config_cls),
            )
        )
    return out


def config_schema(config_cls: type) -> dict:
    """A config dataclass's JSON schema, each key described by its field's help text, the same
    text `cssl pretrain --help` shows."""
    schema = TypeAdapter(config_cls).json_schema()
    for name, prop in schema.get("properties", {}).items():
        if help_text := field_help(config_cls, name):
            prop["description"] = help_text
    return schema


@router.get("/methods", response_model=list[MethodPublic], summary="Registered methods, their defaults and config schema")
def list_methods(_: CurrentOwner) -> list[MethodPublic]:
    return _methods()


@router.get("/datasets", response_model=list[DatasetInfo], summary="Data sets a job can name")
def list_datasets(_: CurrentOwner) -> list[DatasetInfo]:
    return [DatasetInfo(**{k: d.get(k) for k in DatasetInfo.model_fields}) for d in describe_datasets()]

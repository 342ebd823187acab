"""Errors as ``application/problem+json`` (RFC 9457), each with a ``detail`` that says what to fix,
and the OpenAPI description of them: every error response a route can give is declared there
with that media type and the ``Problem`` schema."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"


class ProblemError(Exception):
    """Raise from a route or dependency to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers, self.extra = status, detail, errors, headers, extra
        self.title = title or HTTPStatus(status).phrase


def field_error(loc: list[str | int], msg: str, type: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type}


def invalid(errors: list[dict[str, Any]]) -> ProblemError:
    """A 422 naming each bad field."""
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return ProblemError(422, detail, title="Invalid request", errors=errors)


def problem_response(request: Request, exc: ProblemError) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    if exc.errors:
        body["errors"] = exc.errors
    body.update(exc.extra)
    return JSONResponse(body, status_code=exc.status, media_type=PROBLEM_JSON, headers=exc.headers)


def problem(description: str, headers: dict[str, dict] | None = None) -> dict[str, Any]:
    """An error response as a route's ``responses=`` declares it."""
    entry: dict[str, Any] = {"description": description, "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}}
    if headers:
        entry["headers"] = headers
    return entry


UNAUTHORIZED = problem(
    "No token, or an unknown or revoked one",
    {"WWW-Authenticate": {"description": "`Bearer`", "required": True, "schema": {"type": "string"}}},
)
INVALID = problem("A parameter or field is invalid; `errors` names each one")


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI description say what the handlers below send: every error a route
    declares with the Problem schema is application/problem+json, every 422 is a problem
    document (not FastAPI's HTTPValidationError), and every route that takes a token may answer 401."""
    from api.schemas import Problem

    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for status, response in responses.items():
                # A route may declare {"model": Problem}, which FastAPI documents as application/json.
                content = response.get("content", {})
                if (
                    status[0] in "45"
                    and content.get("application/json", {}).get("schema", {}).get("$ref") == PROBLEM_REF
                ):
                    content[PROBLEM_JSON] = content.pop("application/json")
            if "422" in responses:
                description = responses["422"].get("description")
                own = {"description": description} if description not in (None, "Validation Error") else {}
                responses["422"] = {**INVALID, **own}
            if operation.get("security"):
                responses.setdefault("401", UNAUTHORIZED)
            if "requestBody" in operation:  # api.bodylimit refuses bodies past its ceiling
                responses.setdefault(
                    "413",
                    {
                        "description": "The request body is larger than the API accepts",
                        "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}},
                    },
                )
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return openapi


def app_routes(app: FastAPI) -> list:
    """Every route of the app, those of included routers too (FastAPI keeps an included router
    as one entry of ``app.routes``); each has ``path``, ``methods``, ``name``, ``endpoint``."""
    return list(iter_route_contexts(app.routes))


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app_routes(request.app):
        path_regex = getattr(route, "path_regex", None)
        if route.methods and path_regex and path_regex.match(request.url.path):
            methods |= route.methods
    return sorted(methods)


def install(app: FastAPI) -> None:
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [field_error(list(e["loc"]), e["msg"].removeprefix("Value error, "), e["type"]) for e in exc.errors()]
        return problem_response(request, invalid(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # FastAPI's only 400: a body its Content-Type promised but that does not parse (JSON
            # that is not UTF-8, say). Like malformed JSON, that is an invalid request.
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ else ""
            msg = f"the body could not be parsed as its Content-Type says{cause}; send UTF-8 JSON"
            return problem_response(request, invalid([field_error(["body"], msg, "body_unparsable")]))
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; the API is under /v1, see /docs"
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a path served by two
            # routes (GET and POST /v1/jobs) allows the methods of both.
            allowed = _allowed_methods(request)
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
            detail = f"{request.url.path} takes {', '.join(allowed)}, not {request.method}"
        return problem_response(request, ProblemError(exc.status_code, detail, headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The server's log gets the traceback (Starlette re-raises after this); the client a
        # problem document that says nothing of the internals.
        return problem_response(request, ProblemError(500, "an unexpected error; the server's log has the details"))

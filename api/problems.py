"""Errors as ``application/problem+json`` (RFC 9457), each with a ``detail`` that says what to fix."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


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


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError):
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = [
            field_error(list(e["loc"]), e["msg"].removeprefix("Value error, "), e["type"]) for e in exc.errors()
        ]
        return problem_response(request, invalid(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}; the API is under /v1, see /docs"
        return problem_response(request, ProblemError(exc.status_code, detail, headers=getattr(exc, "headers", None)))

"""The one place where errors become HTTP responses."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from storefleet.errors import ErrorKind, StorefleetError

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.CONFLICT: 409,
    ErrorKind.BUSY: 409,
    ErrorKind.INVALID: 422,
    ErrorKind.CAPACITY: 503,
    ErrorKind.RUNTIME: 502,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.TOO_MANY: 429,
    ErrorKind.UNSUPPORTED: 501,
}


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request"


def _describe(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    items = []
    for error in errors:
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        items.append({"field": _where(tuple(error.get("loc", ()))), "message": message})
    text = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return f"invalid request: {text}", items


def install(app: FastAPI) -> None:
    @app.exception_handler(StorefleetError)
    async def _storefleet_error(_request: Request, exc: StorefleetError) -> JSONResponse:
        body = {"detail": exc.message, "code": exc.code, **exc.extra}
        headers = {"Retry-After": "1"} if exc.kind is ErrorKind.TOO_MANY else None
        return JSONResponse(body, status_code=HTTP_STATUS[exc.kind], headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, items = _describe(list(exc.errors()))
        return JSONResponse({"detail": detail, "code": "invalid", "errors": items}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method the path has, not one route's
            headers["Allow"] = ", ".join(_methods_of(app, request.url.path))
        return JSONResponse(
            {"detail": str(exc.detail), "code": codes.get(exc.status_code, "http_error")},
            status_code=exc.status_code,
            headers=headers or None,
        )


def _methods_of(app: FastAPI, path: str) -> list[str]:
    """Every method the API serves on `path`, from its OpenAPI schema (the routes' truth)."""
    methods: set[str] = set()
    for template, item in app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in item if m in _HTTP_METHODS}
    return sorted(methods)


_HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


class ErrorItem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error answer: a sentence for people, a stable code for programs."""

    detail: str
    code: str
    errors: list[ErrorItem] | None = Field(
        default=None, description="422 only: each field at fault and why"
    )


ERROR_STATUSES = {
    "400": "malformed request",
    "401": "a valid API token is required (Authorization: Bearer <token>)",
    "403": "the token's role may not do this",
    "404": "no such resource (or not this token's store)",
    "409": "conflict: a duplicate, or the store is busy or in another state",
    "413": "request body over the limit",
    "422": "invalid input: `errors` names each field at fault",
    "429": "too many requests for this token or client (see Retry-After)",
    "503": "capacity exhausted (e.g. no free port triple)",
}


def document(app: FastAPI) -> None:
    """Make the OpenAPI schema tell the truth: bearer authentication on every route but the
    public ones, and the error answers (their real body) that every route may give."""
    public = {"/health"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token (admin, operator or store role)",
        }
        schemas = components.setdefault("schemas", {})
        schemas["Error"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schemas["Error"].pop("$defs", {}).items():
            schemas[name] = sub
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        error_ref = {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        }
        for path, item in schema.get("paths", {}).items():
            for operation in item.values():
                if not isinstance(operation, dict):
                    continue
                responses = operation.setdefault("responses", {})
                if path in public:
                    operation["security"] = []
                    continue
                operation["security"] = [{"bearer": []}]
                for status, why in ERROR_STATUSES.items():
                    responses[status] = {"description": why, **error_ref}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

"""The one place where errors become HTTP responses."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from storefleet.api.security import dashboard
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


_FIELD_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+")


def _where(loc: tuple[Any, ...]) -> str:
    """A field's dotted path, without pydantic's union-member tags (`function-after[...]`)."""
    parts = [
        str(p) for p in loc if p not in ("body", "query", "path") and _FIELD_PART.fullmatch(str(p))
    ]
    return ".".join(parts) or "request"


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, str]]]:
    items: list[dict[str, str]] = []
    for error in errors:
        if error.get("type") == "none_required":  # the `None` member of an optional field
            continue
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        item = {"field": _where(tuple(error.get("loc", ()))), "message": message}
        if item not in items:
            items.append(item)
    text = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return f"invalid request: {text}", items


# How the dashboard shows an error (request, status, message, code): HTML, not JSON.
HtmlError = Callable[[Request, int, str, str], Response]


def install(app: FastAPI, html: HtmlError | None = None) -> None:
    """Map the error family (and FastAPI's own errors) to responses: JSON for the API, HTML
    through `html` for the dashboard's pages."""

    def answer(
        request: Request,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> Response:
        if html is not None and dashboard(request.url.path):
            return html(request, status, str(body["detail"]), str(body["code"]))
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(StorefleetError)
    async def _storefleet_error(request: Request, exc: StorefleetError) -> Response:
        body = {"detail": exc.message, "code": exc.code, **exc.extra}
        headers = {"Retry-After": "1"} if exc.kind is ErrorKind.TOO_MANY else None
        return answer(request, HTTP_STATUS[exc.kind], body, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        detail, items = describe_validation(list(exc.errors()))
        return answer(request, 422, {"detail": detail, "code": "invalid", "errors": items})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method the path has, not one route's
            headers["Allow"] = ", ".join(_methods_of(app, request.url.path))
        body = {"detail": str(exc.detail), "code": codes.get(exc.status_code, "http_error")}
        return answer(request, exc.status_code, body, headers or None)


_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _json_schema_bounds(schema: dict[str, Any]) -> None:
    """Pydantic leaves the bounds of an optional header as its own keywords (`ge`, `le`) where
    JSON Schema says `minimum`, `maximum`: rename them, so that clients see the bounds."""
    for ours, theirs in _BOUNDS.items():
        if ours in schema:
            schema[theirs] = schema.pop(ours)


def _methods_of(app: FastAPI, path: str) -> list[str]:
    """Every method the API serves on `path`, from its OpenAPI schema (the routes' truth). A
    fixed path (`/stores/deploy`) is its own resource, whatever templated path it also fits."""
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    if path in paths:
        return sorted(m.upper() for m in paths[path] if m in _HTTP_METHODS)
    return sorted(_methods_of_templates(paths, path))


def refuse_undeclared_methods(app: FastAPI) -> None:
    """A fixed path that a templated one also fits (`/stores/deploy`, `/stores/{store_id}`)
    answers 405 to the methods it lacks, instead of reaching the templated route (which would
    answer 422: `deploy` is not a store id)."""
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    guards = []
    for path, item in paths.items():
        if "{" in path:
            continue
        own = {m.upper() for m in item if m in _HTTP_METHODS}
        taken = set(_methods_of_templates(paths, path)) - own - {"HEAD", "OPTIONS"}
        if taken:
            guards.append(
                APIRoute(path, _not_allowed, methods=sorted(taken), include_in_schema=False)
            )
    app.router.routes[:0] = guards


def _methods_of_templates(paths: dict[str, dict[str, Any]], path: str) -> set[str]:
    methods: set[str] = set()
    for template, item in paths.items():
        if "{" not in template:
            continue
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in item if m in _HTTP_METHODS}
    return methods


async def _not_allowed() -> None:
    raise StarletteHTTPException(status_code=405)


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


# Request schemas whose `version` must name a version the runtime has (it can change: a Docker
# host gains image tags), so the schema states them as an enum, read when the schema is served.
VERSIONED_REQUESTS = ("UpgradeRequest", "FleetUpgradeRequest")


@dataclass(frozen=True)
class RuntimeFacts:
    """What the schema says of the runtime in use: its backend versions and stack services."""

    versions: Sequence[str]
    services: Sequence[str]


def document(app: FastAPI, facts: Callable[[], RuntimeFacts | None] | None = None) -> None:
    """Make the OpenAPI schema tell the truth: bearer authentication on every route but the
    public ones, the error answers (their real body) that every route may give, and what the
    runtime has now (versions, services) as enums."""
    public = {"/health", "/api/v1/edge/ca.pem", "/api/v1/edge/ask"}

    def base() -> dict[str, Any]:
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
                for param in operation.get("parameters", []):
                    _json_schema_bounds(param.get("schema", {}))
                responses = operation.setdefault("responses", {})
                if path in public:
                    operation["security"] = []
                    if "422" in responses:  # invalid query parameters: the real error body
                        responses["422"] = {"description": ERROR_STATUSES["422"], **error_ref}
                    continue
                operation["security"] = [{"bearer": []}]
                for status, why in ERROR_STATUSES.items():
                    responses[status] = {"description": why, **error_ref}
        app.openapi_schema = schema
        return schema

    def openapi() -> dict[str, Any]:
        schema = base()
        try:
            known = facts() if facts is not None else None
        except StorefleetError:  # the runtime cannot say now: the schema keeps its patterns
            known = None
        if known is None:
            return schema
        served = copy.deepcopy(schema)
        for name in VERSIONED_REQUESTS:
            spec = served["components"]["schemas"].get(name, {}).get("properties", {})
            if "version" in spec:
                spec["version"]["enum"] = list(known.versions)
        for path, item in served.get("paths", {}).items():
            if not path.endswith("/logs"):
                continue
            for param in item.get("get", {}).get("parameters", []):
                if param.get("name") == "service":
                    param["schema"]["enum"] = list(known.services)
        return served

    app.openapi = openapi  # type: ignore[method-assign]

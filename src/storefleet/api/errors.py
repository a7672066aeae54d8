"""The one place where errors become HTTP responses."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        return JSONResponse(
            {"detail": str(exc.detail), "code": codes.get(exc.status_code, "http_error")},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

"""Rendering of the dashboard's pages and fragments (Jinja2, autoescaped: every value a user
typed, a store's name first, is shown as text, never as markup)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from storefleet import __version__
from storefleet.services.auth import Principal
from storefleet.services.schemas import UsageView
from storefleet.services.sessions import SignedIn

HERE = Path(__file__).parent
STATIC = HERE / "static"

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} d ago"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


def chart(points: list[UsageView], *, width: int = 320, height: int = 80) -> dict[str, Any]:
    """Polylines (SVG `points`) of CPU % and memory over the readings, scaled to the box."""
    if len(points) < 2:
        return {"cpu": "", "memory": "", "width": width, "height": height, "n": len(points)}
    first = points[0].sampled_at.timestamp()
    span = max(1.0, points[-1].sampled_at.timestamp() - first)
    top_cpu = max(100.0, *(p.cpu_percent or 0.0 for p in points))
    top_mem = max(1, *(p.memory_bytes for p in points))

    def line(values: list[float], top: float) -> str:
        return " ".join(
            f"{(p.sampled_at.timestamp() - first) / span * width:.1f},"
            f"{height - v / top * (height - 2) - 1:.1f}"
            for p, v in zip(points, values, strict=True)
        )

    return {
        "cpu": line([p.cpu_percent or 0.0 for p in points], top_cpu),
        "memory": line([float(p.memory_bytes) for p in points], float(top_mem)),
        "width": width,
        "height": height,
        "n": len(points),
        "top_cpu": top_cpu,
        "top_memory": top_mem,
    }


env.filters["ago"] = _ago
env.filters["size"] = _size
env.filters["when"] = _when
env.globals["version"] = __version__


def context(request: Request, **values: Any) -> dict[str, Any]:
    session: SignedIn | None = getattr(request.state, "session", None)
    principal: Principal | None = getattr(request.state, "principal", None)
    return {
        "request": request,
        "me": principal,
        "csrf": session.csrf if session is not None else "",
        "path": request.url.path,
        **values,
    }


def html(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    body = env.get_template(template).render(context(request, **values))
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error(request: Request, status_code: int, message: str, code: str) -> HTMLResponse:
    """An error as the dashboard shows it: in the page's message area for htmx requests (the
    fragment replaces nothing else), as a page of its own otherwise."""
    if request.headers.get("hx-request"):
        return html(
            request,
            "_error.html",
            status_code=status_code,
            headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
            message=message,
            code=code,
        )
    return html(request, "error.html", status_code=status_code, message=message, code=code)

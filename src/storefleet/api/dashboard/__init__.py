"""The web dashboard: server-rendered pages (Jinja2) made live with htmx (vendored, pinned)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from storefleet.api.dashboard import live, views
from storefleet.api.dashboard.render import STATIC
from storefleet.api.security import DASHBOARD_STATIC


def install(app: FastAPI) -> None:
    """Serve the dashboard from `app`: its pages, its live streams and its own files."""
    app.include_router(views.router)
    app.include_router(live.router)
    app.mount(DASHBOARD_STATIC, StaticFiles(directory=STATIC), name="dashboard-static")

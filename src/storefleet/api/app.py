"""The control plane's ASGI app."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from storefleet import __version__, logs
from storefleet.api import dashboard, errors
from storefleet.api.dashboard import render
from storefleet.api.limits import BodySizeLimit
from storefleet.api.routes import (
    countries,
    edge,
    events,
    lifecycle,
    nodes,
    operations,
    pool,
    stores,
    tokens,
)
from storefleet.api.security import (
    DOCS_ASSETS,
    DashboardHeaders,
    RateLimiter,
    SecurityMiddleware,
)
from storefleet.api.streams import LiveEvents, StreamThreads
from storefleet.config import Settings
from storefleet.services.events import EventFeed
from storefleet.services.wiring import Services, build_services
from storefleet.shared import shared_dir

log = logging.getLogger(__name__)


def worker_app() -> FastAPI:
    """The app of one worker process of `storefleet serve` (uvicorn calls it in each): the
    settings from the same STOREFLEET_* variables, the logs configured as the server's."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    return create_app(settings)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    conf: Settings = settings or (services.settings if services else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Deploys wait on the runtime in worker threads: allow many at once.
        to_thread.current_default_thread_limiter().total_tokens = 200
        # Streams' blocking reads and authentication have pools of their own (api/streams.py)
        app.state.threads = StreamThreads(streams=64, auth=16)
        built: Services = (
            services if services is not None else await to_thread.run_sync(build_services, conf)
        )
        app.state.services = built
        # one reader of new events for every followed event stream
        live = LiveEvents(
            EventFeed(built.events), poll_s=events.POLL_S, check_s=events.LOCAL_CHECK_S
        )
        app.state.live_events = live
        pump = asyncio.get_running_loop().create_task(live.run(), name="live-events")
        token_file = await to_thread.run_sync(
            built.tokens.bootstrap_admin,
            conf.data_dir,
            conf.admin_token.get_secret_value() if conf.admin_token is not None else None,
        )
        if token_file is not None:
            log.info("admin API token: in %s (mode 0600)", token_file)
        if services is None:
            built.start()
            # What start-up made (modules, the app, the services) lives as long as the
            # process: out of the cyclic collector's sight, a full collection no longer walks
            # it (those pauses were the long tail of request latencies under load)
            await to_thread.run_sync(gc.collect)
            gc.freeze()
        log.info(
            "storefleet %s: runtime=%s, data in %s",
            __version__,
            conf.runtime,
            conf.data_dir,
        )
        try:
            yield
        finally:
            pump.cancel()
            if services is None:
                built.close()

    app = FastAPIOffline(
        title="storefleet",
        version=__version__,
        description="Every store its own isolated backend and database.",
        lifespan=lifespan,
        # /docs and /redoc load their files from this process, not from a CDN
        static_url=DOCS_ASSETS,
    )
    errors.install(app, html=render.error)
    # requests without a valid token or session, per client address (sign-ins included)
    # (the buckets are shared by this control plane's worker processes: files in the data dir)
    shared = shared_dir(conf.data_dir)
    app.state.auth_failures = RateLimiter(
        conf.auth_failures_per_minute, conf.auth_failures_burst, path=shared / "auth-failures"
    )
    app.add_middleware(
        SecurityMiddleware,
        limiter=RateLimiter(
            conf.rate_limit_per_minute, conf.rate_limit_burst, path=shared / "rate-limits"
        ),
        failures=app.state.auth_failures,
    )
    app.add_middleware(BodySizeLimit, max_bytes=conf.max_body_bytes)
    app.add_middleware(DashboardHeaders)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:  # on the event loop: no thread pool can starve it
        return {"status": "ok", "version": __version__}

    app.include_router(countries.router, prefix="/api/v1")
    app.include_router(stores.router, prefix="/api/v1")
    app.include_router(operations.router, prefix="/api/v1")
    app.include_router(tokens.router, prefix="/api/v1")
    app.include_router(events.router, prefix="/api/v1")
    app.include_router(lifecycle.router, prefix="/api/v1")
    app.include_router(edge.router, prefix="/api/v1")
    app.include_router(pool.router, prefix="/api/v1")
    app.include_router(nodes.router, prefix="/api/v1")
    # the edge's on-demand TLS checks: at most 20 a second after a burst of 200
    app.state.ask_limiter = RateLimiter(per_minute=1200, burst=200, path=shared / "edge-asks")
    app.include_router(events.metrics_router)
    dashboard.install(app)

    def runtime_facts() -> errors.RuntimeFacts | None:  # None until the services are up
        services: Services | None = getattr(app.state, "services", None)
        if services is None:
            return None
        return errors.RuntimeFacts(
            versions=services.lifecycle.versions().available, services=services.logs.services()
        )

    errors.document(app, runtime_facts)
    errors.refuse_undeclared_methods(app)
    return app

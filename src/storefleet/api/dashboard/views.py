"""The dashboard's pages and the fragments htmx swaps into them: thin views over the services.

Every view runs with the session's principal (set by `SecurityMiddleware`) and the same role
rules as the API: a store token sees its own store only; an operator never sees token or
webhook management. Errors raised by the services become HTML in `api/errors.py`.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from storefleet.api.dashboard.access import me, need, own, services_of
from storefleet.api.dashboard.render import chart, error, html
from storefleet.api.errors import describe_validation
from storefleet.api.security import LOGIN, SESSION_COOKIE, RateLimiter, cookie_of
from storefleet.errors import NotFoundError, StorefleetError
from storefleet.services.auth import TokenCreate
from storefleet.services.board import PAGE_SIZES, SORT_KEYS, StoreQuery
from storefleet.services.countries import get_country, list_countries
from storefleet.services.events import EVENT_PATTERNS
from storefleet.services.lifecycle import FleetUpgradeRequest
from storefleet.services.operations import FLEET
from storefleet.services.schemas import OperationView, StoreCreate, StoreUpdate
from storefleet.services.webhooks import WebhookCreate, WebhookCreated
from storefleet.services.wiring import Services

router = APIRouter(include_in_schema=False)
LOGIN_COOKIE = "sf_login"  # the sign-in form's CSRF value (double submit: cookie and field)
PLANS = ("basic", "premium", "enterprise")
ACTIONS = ("deploy", "undeploy", "stop", "start", "restart")
LOG_TAIL = 200


def _safe_next(value: str | None) -> str:
    """Only a path of this site (never `//host` or a URL): no open redirect after sign-in."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def _redirect(request: Request, to: str) -> Response:
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": to})
    return RedirectResponse(to, status_code=303)


# -- sign in / out -------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    value = cookie_of(request.scope, LOGIN_COOKIE) or secrets.token_urlsafe(32)
    page = html(request, "login.html", form_csrf=value, next=_safe_next(next), message=None)
    _set_login_cookie(request, page, value)
    return page


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_login_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        value,
        max_age=3600,
        path=LOGIN,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form(max_length=500)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    services = services_of(request)
    expected = cookie_of(request.scope, LOGIN_COOKIE)
    if not expected or not secrets.compare_digest(csrf, expected):
        return error(request, 403, "the sign-in form expired: reload the page", "csrf")
    client = request.client.host if request.client else "unknown"
    failures: RateLimiter = request.app.state.auth_failures
    if failures.peek(client) > 0:
        return html(
            request,
            "login.html",
            status_code=429,
            form_csrf=expected,
            next=_safe_next(next),
            message="too many failed sign-ins from this address; wait a minute",
        )
    signed = services.sessions.sign_in(token.strip())
    if signed is None:
        failures.take(client)
        services.audit.count_unauthenticated(client, 401)
        return html(
            request,
            "login.html",
            status_code=401,
            form_csrf=expected,
            next=_safe_next(next),
            message="that token is not valid (mistyped, revoked or expired)",
        )
    cookie, session = signed
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=max(1, int((session.expires_at - datetime.now(UTC)).total_seconds())),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path=LOGIN)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    services_of(request).sessions.sign_out(cookie_of(request.scope, SESSION_COOKIE))
    response = _redirect(request, LOGIN)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- overview ------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> Response:
    who = me(request)
    if who.role == "store":
        return RedirectResponse(f"/ui/stores/{who.store_id}", status_code=303)
    services = services_of(request)
    return html(
        request,
        "overview.html",
        view=services.board.overview(),
        pool=services.pool.view(),
    )


@router.get("/ui/overview", response_class=HTMLResponse)
def overview_part(request: Request) -> Response:
    need(request, "operator")
    services = services_of(request)
    return html(
        request, "_overview.html", view=services.board.overview(), pool=services.pool.view()
    )


# -- stores --------------------------------------------------------------------------------


def _query(
    q: str = "",
    status: str = "",
    plan: str = "",
    country: str = "",
    version: str = "",
    sort: str = "created_at",
    order: str = "desc",
    page: int = 1,
    per_page: int = 25,
) -> StoreQuery:
    return StoreQuery(
        q=q[:200],
        status=status[:30],
        plan=plan[:30],
        country_id=country[:36],
        version=version[:100],
        sort=sort if sort in SORT_KEYS else "created_at",
        desc=order != "asc",
        page=max(1, min(page, 1_000_000)),
        per_page=per_page if per_page in PAGE_SIZES else 25,
    )


def _table(request: Request, query: StoreQuery) -> dict[str, Any]:
    who = me(request)
    only = who.store_id if who.role == "store" else None
    table = services_of(request).board.table(query, only=only)
    names = {c.id: c.name for c in list_countries() if c.id in set(table.countries)}

    def link(**changes: Any) -> str:
        base = {
            "q": query.q,
            "status": query.status,
            "plan": query.plan,
            "country": query.country_id,
            "version": query.version,
            "sort": query.sort,
            "order": "desc" if query.desc else "asc",
            "page": table.page,
            "per_page": query.per_page,
        }
        base.update(changes)
        return "/ui/stores?" + urlencode({k: v for k, v in base.items() if v not in ("", None)})

    return {"table": table, "country_names": names, "link": link, "page_sizes": PAGE_SIZES}


@router.get("/ui/stores", response_class=HTMLResponse)
def stores_page(
    request: Request,
    q: Annotated[str, Query(max_length=200)] = "",
    status: Annotated[str, Query(max_length=30)] = "",
    plan: Annotated[str, Query(max_length=30)] = "",
    country: Annotated[str, Query(max_length=36)] = "",
    version: Annotated[str, Query(max_length=100)] = "",
    sort: Annotated[str, Query(max_length=30)] = "created_at",
    order: Annotated[str, Query(max_length=4)] = "desc",
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 25,
) -> Response:
    query = _query(q, status, plan, country, version, sort, order, page, per_page)
    values = _table(request, query)
    if request.headers.get("hx-target") == "stores-table":
        return html(request, "_stores_table.html", **values)
    return html(
        request,
        "stores.html",
        countries=list_countries(),
        plans=PLANS,
        form={},
        errors={},
        **values,
    )


@router.post("/ui/stores", response_class=HTMLResponse)
def create_store(
    request: Request,
    nombre: Annotated[str, Form(max_length=1000)] = "",
    country_id: Annotated[str, Form(max_length=100)] = "",
    tokens_disponibles: Annotated[str, Form(max_length=30)] = "",
    plan: Annotated[str, Form(max_length=30)] = "basic",
) -> Response:
    """Register the store, then deploy it in the background (its row shows it live)."""
    need(request, "operator")
    services = services_of(request)
    form = {
        "nombre": nombre,
        "country_id": country_id,
        "tokens_disponibles": tokens_disponibles,
        "plan": plan,
    }
    errors: dict[str, str] = {}
    try:
        body = StoreCreate.model_validate(
            {**form, "tokens_disponibles": _int_or_text(tokens_disponibles)}
        )
    except ValidationError as exc:
        for item in describe_validation(exc.errors())[1]:
            errors.setdefault(item["field"], item["message"])
        if "country_id" not in errors and get_country(country_id) is None:
            errors["country_id"] = "choose a country from the list"
    else:
        try:
            store = services.stores.create(body)
        except StorefleetError as exc:
            fields = {"duplicate_nombre": "nombre", "unknown_country": "country_id"}
            errors[fields.get(exc.code, "form")] = exc.message
        else:
            services.deployments.deploy_async(store.id)
            return html(
                request,
                "_create_form.html",
                status_code=201,
                headers={"HX-Trigger": "store-created"},
                countries=list_countries(),
                plans=PLANS,
                form={},
                errors={},
                created=store,
            )
    return html(
        request,
        "_create_form.html",
        status_code=422 if errors else 409,
        countries=list_countries(),
        plans=PLANS,
        form=form,
        errors=errors,
        created=None,
    )


def _int_or_text(value: str) -> int | str:
    stripped = value.strip()
    return int(stripped) if stripped.lstrip("-").isdigit() and len(stripped) < 20 else stripped


# -- one store -----------------------------------------------------------------------------


def _store_values(request: Request, sid: str) -> dict[str, Any]:
    services = services_of(request)
    store = services.stores.get(sid)
    country = get_country(store.country_id)
    operator = me(request).at_least("operator")
    return {
        "store": store,
        "country": country.name if country is not None else store.country_id,
        "status": services.status.status(sid),
        "versions": services.lifecycle.versions() if operator else None,
        "plans": PLANS,
        "actions": ACTIONS,
        "log_services": services.logs.services(),
        "operator": operator,
    }


@router.get("/ui/stores/{store_id}", response_class=HTMLResponse)
def store_page(request: Request, store_id: uuid.UUID) -> Response:
    sid = own(request, store_id)
    services = services_of(request)
    values = _store_values(request, sid)
    operations = services.ops.for_store(sid, limit=20)
    return html(
        request,
        "store.html",
        operations=operations,
        backups=services.backups.for_store(sid) if values["operator"] else [],
        events=_store_events(services, sid),
        trend=chart(services.status.usage_trend(sid)),
        **values,
    )


def _store_events(services: Services, sid: str, count: int = 30) -> list[Any]:
    floor = services.events.floor_for_last(count, store_id=sid)
    return list(reversed(services.events.after(floor, store_id=sid, limit=count)))


@router.get("/ui/stores/{store_id}/status", response_class=HTMLResponse)
def store_status(request: Request, store_id: uuid.UUID) -> Response:
    sid = own(request, store_id)
    return html(request, "_store_status.html", **_store_values(request, sid))


@router.get("/ui/stores/{store_id}/usage", response_class=HTMLResponse)
def store_usage(request: Request, store_id: uuid.UUID) -> Response:
    sid = own(request, store_id)
    services = services_of(request)
    services.stores.require(sid)
    return html(
        request,
        "_usage.html",
        store_id=sid,
        status=services.status.status(sid),
        trend=chart(services.status.usage_trend(sid)),
    )


@router.get("/ui/stores/{store_id}/history", response_class=HTMLResponse)
def store_history(request: Request, store_id: uuid.UUID) -> Response:
    """The operations and the events of the store (refreshed when one of its events comes)."""
    sid = own(request, store_id)
    services = services_of(request)
    services.stores.require(sid)
    return html(
        request,
        "_history.html",
        store_id=sid,
        operations=services.ops.for_store(sid, limit=20),
        events=_store_events(services, sid),
    )


@router.get("/ui/stores/{store_id}/logs", response_class=HTMLResponse)
def store_logs(
    request: Request,
    store_id: uuid.UUID,
    service: Annotated[str, Query(max_length=50)] = "",
    follow: bool = False,
) -> Response:
    """The logs panel: followed live (a stream of its own), or the last lines once."""
    sid = own(request, store_id)
    services = services_of(request)
    store = services.stores.get(sid)
    names = services.logs.services()
    chosen = service if service in names else (names[0] if names else "")
    lines: list[str] = []
    if not follow:
        reader = services.logs.open(
            sid, service=chosen or None, tail=LOG_TAIL, since=None, follow=False
        )
        try:
            lines = [line for line in reader if line is not None]
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
    return html(
        request,
        "_logs.html",
        store=store,
        log_services=names,
        log_service=chosen,
        log_follow=follow,
        log_lines=lines[-LOG_TAIL:],
    )


def _op_response(request: Request, op: OperationView, status_code: int = 202) -> Response:
    return html(request, "_operation.html", status_code=status_code, op=op)


def _result(request: Request, result: object) -> Response:
    """An action's answer: its operation (followed live), or what it said when there was
    nothing to do (already stopped, already at that version)."""
    if isinstance(result, OperationView):
        return _op_response(request, result)
    return html(request, "_notice.html", message=str(getattr(result, "message", "done")))


@router.post("/ui/stores/{store_id}/actions/{action}", response_class=HTMLResponse)
def store_action(
    request: Request,
    store_id: uuid.UUID,
    action: Literal[ACTIONS],  # type: ignore[valid-type]
) -> Response:
    need(request, "operator")
    sid = own(request, store_id)
    services = services_of(request)
    result: object
    if action == "deploy":
        result = services.deployments.deploy_async(sid)
    elif action == "undeploy":
        result = services.deployments.undeploy_async(sid)
    else:
        result = getattr(services.lifecycle, action)(sid, wait=False)
    return _result(request, result)


@router.post("/ui/stores/{store_id}/upgrade", response_class=HTMLResponse)
def store_upgrade(
    request: Request, store_id: uuid.UUID, version: Annotated[str, Form(max_length=100)]
) -> Response:
    need(request, "operator")
    sid = own(request, store_id)
    return _result(request, services_of(request).lifecycle.upgrade(sid, version, wait=False))


@router.post("/ui/stores/{store_id}/plan", response_class=HTMLResponse)
def store_plan(
    request: Request, store_id: uuid.UUID, plan: Annotated[str, Form(max_length=30)]
) -> Response:
    need(request, "operator")
    sid = own(request, store_id)
    try:
        update = StoreUpdate.model_validate({"plan": plan})
    except ValidationError as exc:
        return error(request, 422, describe_validation(exc.errors())[0], "invalid")
    store = services_of(request).stores.update(sid, update)
    return html(request, "_notice.html", message=f"plan changed to {store.plan}")


@router.post("/ui/stores/{store_id}/delete", response_class=HTMLResponse)
def store_delete(
    request: Request,
    store_id: uuid.UUID,
    confirm: Annotated[str, Form(max_length=1000)] = "",
    purge: Annotated[bool, Form()] = False,
) -> Response:
    """Delete the store once its name is typed; its data is kept unless `purge` is ticked."""
    need(request, "operator")
    sid = own(request, store_id)
    services = services_of(request)
    store = services.stores.get(sid)
    if confirm.strip() != store.nombre:
        return error(
            request, 422, "type the store's exact name to confirm the deletion", "not_confirmed"
        )
    services.stores.delete(sid, purge=purge)
    return _redirect(request, "/ui/stores")


@router.get("/ui/operations/{operation_id}", response_class=HTMLResponse)
def operation(request: Request, operation_id: uuid.UUID) -> Response:
    op = services_of(request).ops.get(str(operation_id))
    who = me(request)
    if who.role == "store" and op.store_id != who.store_id:
        raise NotFoundError(f"operation {operation_id} does not exist")
    return _op_response(request, op, 200)


@router.post("/ui/operations/{operation_id}/cancel", response_class=HTMLResponse)
def cancel_operation(request: Request, operation_id: uuid.UUID) -> Response:
    need(request, "operator")
    return _op_response(request, services_of(request).runner.cancel(str(operation_id)))


# -- backups -------------------------------------------------------------------------------


@router.get("/ui/stores/{store_id}/backups", response_class=HTMLResponse)
def backups(request: Request, store_id: uuid.UUID) -> Response:
    need(request, "operator")
    sid = own(request, store_id)
    services = services_of(request)
    services.stores.require(sid)
    return html(
        request,
        "_backups.html",
        store=services.stores.get(sid),
        backups=services.backups.for_store(sid),
    )


@router.post("/ui/stores/{store_id}/backups", response_class=HTMLResponse)
def create_backup(request: Request, store_id: uuid.UUID) -> Response:
    need(request, "operator")
    sid = own(request, store_id)
    return _result(request, services_of(request).backups.create(sid, wait=False))


@router.get("/ui/stores/{store_id}/backups/{backup_id}/download")
def download_backup(request: Request, store_id: uuid.UUID, backup_id: uuid.UUID) -> Response:
    need(request, "operator")
    sid = own(request, store_id)
    view, path = services_of(request).backups.verified_file(sid, str(backup_id))
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{sid}-{view.id}.{view.format}",
        headers={"X-Checksum-SHA256": view.sha256},
    )


@router.post("/ui/stores/{store_id}/backups/{backup_id}/restore", response_class=HTMLResponse)
def restore_backup(
    request: Request,
    store_id: uuid.UUID,
    backup_id: uuid.UUID,
    confirm: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Restore once the store's name is typed: the store's current data is replaced."""
    need(request, "operator")
    sid = own(request, store_id)
    services = services_of(request)
    if confirm.strip() != services.stores.get(sid).nombre:
        return error(
            request, 422, "type the store's exact name to confirm the restore", "not_confirmed"
        )
    return _result(request, services.backups.restore(sid, str(backup_id), wait=False))


# -- fleet upgrade -------------------------------------------------------------------------


@router.get("/ui/fleet", response_class=HTMLResponse)
def fleet_page(request: Request) -> Response:
    need(request, "operator")
    services = services_of(request)
    recent = services.ops.for_store(FLEET, limit=10)
    return html(request, "fleet.html", versions=services.lifecycle.versions(), recent=recent)


@router.post("/ui/fleet/upgrade", response_class=HTMLResponse)
def fleet_upgrade(
    request: Request,
    version: Annotated[str, Form(max_length=100)],
    batch_size: Annotated[int, Form(ge=1, le=100)] = 5,
    max_failures: Annotated[int, Form(ge=0, le=1_000_000)] = 0,
) -> Response:
    need(request, "operator")
    body = FleetUpgradeRequest(version=version, batch_size=batch_size, max_failures=max_failures)
    return _op_response(request, services_of(request).lifecycle.fleet_upgrade(body))


# -- admin ---------------------------------------------------------------------------------


@router.get("/ui/admin/tokens", response_class=HTMLResponse)
def tokens_page(request: Request) -> Response:
    need(request, "admin")
    return html(request, "tokens.html", tokens=services_of(request).tokens.list(), created=None)


@router.post("/ui/admin/tokens", response_class=HTMLResponse)
def create_token(
    request: Request,
    role: Annotated[str, Form(max_length=20)],
    store_id: Annotated[str, Form(max_length=100)] = "",
    expires_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    need(request, "admin")
    services = services_of(request)
    try:
        body = TokenCreate.model_validate(
            {
                "role": role,
                "store_id": store_id.strip() or None,
                "expires_at": expires_at.strip() or None,
            }
        )
    except ValidationError as exc:
        return error(request, 422, describe_validation(exc.errors())[0], "invalid")
    created = services.tokens.create(body)
    return html(request, "_tokens.html", tokens=services.tokens.list(), created=created)


@router.post("/ui/admin/tokens/{token_id}/revoke", response_class=HTMLResponse)
def revoke_token(request: Request, token_id: uuid.UUID) -> Response:
    who = need(request, "admin")
    services = services_of(request)
    services.tokens.revoke(str(token_id))
    if str(token_id) == who.token_id:  # one's own token: this session ended with it
        return _redirect(request, LOGIN)
    return html(request, "_tokens.html", tokens=services.tokens.list(), created=None)


@router.get("/ui/admin/webhooks", response_class=HTMLResponse)
def webhooks_page(request: Request) -> Response:
    need(request, "admin")
    return html(
        request,
        "webhooks.html",
        webhooks=services_of(request).webhooks.all(),
        created=None,
        patterns=EVENT_PATTERNS,
    )


@router.post("/ui/admin/webhooks", response_class=HTMLResponse)
def create_webhook(
    request: Request,
    url: Annotated[str, Form(max_length=2000)],
    events: Annotated[list[str] | None, Form(max_length=20)] = None,
    store_id: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    need(request, "admin")
    services = services_of(request)
    try:
        body = WebhookCreate.model_validate(
            {"url": url.strip(), "events": events or [], "store_id": store_id.strip() or None}
        )
    except ValidationError as exc:
        return error(request, 422, describe_validation(exc.errors())[0], "invalid")
    if body.store_id is not None:
        services.stores.require(str(body.store_id))
    return _webhooks(request, created=services.webhooks.create(body))


@router.post("/ui/admin/webhooks/{webhook_id}/delete", response_class=HTMLResponse)
def delete_webhook(request: Request, webhook_id: uuid.UUID) -> Response:
    need(request, "admin")
    services_of(request).webhooks.delete(str(webhook_id))
    return _webhooks(request)


def _webhooks(request: Request, created: WebhookCreated | None = None) -> Response:
    """The webhooks part: the form, the new one's secret (once), the subscriptions."""
    return html(
        request,
        "_webhooks.html",
        webhooks=services_of(request).webhooks.all(),
        created=created,
        patterns=EVENT_PATTERNS,
    )


@router.get("/ui/admin/webhooks/{webhook_id}", response_class=HTMLResponse)
def webhook_page(request: Request, webhook_id: uuid.UUID) -> Response:
    need(request, "admin")
    services = services_of(request)
    hook = services.webhooks.get(str(webhook_id))
    return html(
        request, "webhook.html", hook=hook, deliveries=services.webhooks.deliveries(hook.id, 100)
    )


@router.get("/ui/admin/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    token_id: Annotated[str, Query(max_length=36)] = "",
    store_id: Annotated[str, Query(max_length=36)] = "",
    outcome: Annotated[str, Query(max_length=10)] = "",
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> Response:
    need(request, "admin")
    entries = services_of(request).audit.query(
        token_id=token_id or None,
        store_id=store_id or None,
        outcome=outcome or None,
        before=before,
        limit=100,
    )
    filters = {"token_id": token_id, "store_id": store_id, "outcome": outcome}
    older = (
        "/ui/admin/audit?"
        + urlencode({**{k: v for k, v in filters.items() if v}, "before": entries[-1].id})
        if len(entries) == 100
        else None
    )
    return html(request, "audit.html", entries=entries, filters=filters, older=older)

"""`storefleet` command line: runs the control plane and talks to its HTTP API."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from httpx_sse import connect_sse
from rich.console import Console
from rich.table import Table

from storefleet import logs as logging_setup

app = typer.Typer(
    help="storefleet: every store its own isolated backend and database.",
    pretty_exceptions_enable=False,  # an error is one line naming what to do, never a trace
    rich_markup_mode=None,  # plain help: flags show as flags (`--json`), no `<bool>`
)
stores_app = typer.Typer(help="Register, list, show and delete stores.")
edge_app = typer.Typer(help="The edge: its state and its CA certificate.")
pool_app = typer.Typer(help="The warm pool of paused stacks that signups claim.")
tokens_app = typer.Typer(help="API tokens (admin).")
secrets_app = typer.Typer(help="Secrets at rest (runs on the control plane's host).")
backups_app = typer.Typer(help="Backups of a store's database.")
nodes_app = typer.Typer(help="The hosts stores run on (Swarm): list them, drain one.")
app.add_typer(stores_app, name="stores")
app.add_typer(tokens_app, name="tokens")
app.add_typer(secrets_app, name="secrets")
app.add_typer(backups_app, name="backups")
app.add_typer(edge_app, name="edge")
app.add_typer(pool_app, name="pool")
app.add_typer(nodes_app, name="nodes")

DEFAULT_URL = "http://127.0.0.1:8000"
# Also accepted after a command (`storefleet stores list --url X`); the global option is the
# documented one (`storefleet --url X stores list`).
UrlOpt = Annotated[str | None, typer.Option("--url", hidden=True)]
JsonOpt = Annotated[bool, typer.Option("--json", is_flag=True, help="Print JSON for scripts.")]
# soft_wrap: never hard-wrap a line (an error message in a pipe or a file stays one line)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True, highlight=False)
ID_COLUMNS = {"id", "store_id", "backup_id", "token_id", "operation_id"}


@dataclass
class _Session:
    url: str = DEFAULT_URL
    token: str | None = None


_session = _Session()


@app.callback(invoke_without_command=True)
def _global(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="STOREFLEET_URL", help="Control plane base URL.")
    ] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="STOREFLEET_TOKEN",
            help="API token (default: the admin-token file in $STOREFLEET_DATA_DIR).",
            show_default=False,
        ),
    ] = None,
) -> None:
    _session.url = url
    _session.token = token
    if ctx.invoked_subcommand is None:  # `storefleet` alone: the help
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def _data_dir() -> Path:
    return Path(os.environ.get("STOREFLEET_DATA_DIR", "./var"))


def _token() -> str | None:
    """--token / STOREFLEET_TOKEN, else the admin token file the server wrote in its data dir."""
    if _session.token:
        return _session.token
    try:
        return (_data_dir() / "admin-token").read_text().strip()
    except OSError:
        return None


def _url(url: str | None) -> str:
    return url or _session.url


def _call(url: str | None, method: str, path: str, **kwargs: Any) -> Any:
    read = float(os.environ.get("STOREFLEET_CLI_TIMEOUT", "180"))
    try:
        with _client(url, read_timeout=read) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _die(
            f"cannot reach storefleet at {_url(url)}: {exc} (is `storefleet serve` running? "
            "--url or STOREFLEET_URL names another)",
            2,
        )
    if response.status_code >= 400:
        _fail(response)
    return response.json() if response.content else None


def _die(message: str, code: int = 1) -> NoReturn:
    err.print(f"storefleet: {message}", markup=False)
    raise typer.Exit(code)


def _print(data: Any, as_json: bool, columns: list[str] | None = None) -> None:
    if as_json or columns is None:
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rows = data if isinstance(data, list) else [data]
    cells = [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    if not console.is_terminal:  # for scripts: whole values, tab-separated, never cut
        typer.echo("\t".join(columns))
        for line in cells:
            typer.echo("\t".join(line))
        return
    table = Table()
    for column in columns:  # ids are shown whole: a cut id could not be copied
        table.add_column(
            column, no_wrap=column in ID_COLUMNS, min_width=36 if column in ID_COLUMNS else None
        )
    for line in cells:
        table.add_row(*line)
    console.print(table)


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _pick(ref: str, what: str, rows: list[dict[str, Any]], names: tuple[str, ...] = ()) -> str:
    """The id `ref` names among `rows`: a whole id, a unique id prefix, or a name."""
    if _UUID.match(ref):
        return ref.lower()
    lowered = ref.lower()
    exact = [r["id"] for r in rows if any(str(r.get(n, "")).lower() == lowered for n in names)]
    if len(exact) == 1:
        return str(exact[0])
    found = exact or [r["id"] for r in rows if str(r["id"]).startswith(lowered)]
    if len(found) == 1:
        return str(found[0])
    if not found:
        also = " or its name" if names else ""
        _die(f"no {what} matches {ref!r} (give its id, a unique prefix of it{also})")
    _die(f"{ref!r} matches {len(found)} {what}s: {', '.join(sorted(found))}; give more of the id")


def _store(ref: str, url: str | None = None) -> str:
    """A store id from an id, a unique id prefix or the store's `nombre`."""
    if _UUID.match(ref):
        return ref.lower()
    return _pick(ref, "store", _call(url, "GET", "/api/v1/stores/"), ("nombre",))


def _backup(store_id: str, ref: str, url: str | None = None) -> str:
    if _UUID.match(ref):
        return ref.lower()
    return _pick(ref, "backup", _call(url, "GET", f"/api/v1/stores/{store_id}/backups"))


BACKUP_COLUMNS = ["id", "created_at", "reason", "format", "size_bytes", "sha256"]
STORE_COLUMNS = ["id", "nombre", "plan", "tokens_disponibles", "status", "back_link"]


def _settings() -> Any:
    """The control plane's settings; a bad one is a one-line error per variable, exit 2."""
    from storefleet.config import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        for line in str(exc).splitlines():
            err.print(f"storefleet: {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=32, help="Server processes (STOREFLEET_WORKERS), one plane."),
    ] = None,
) -> None:
    """Run the control plane (settings from STOREFLEET_* variables)."""
    import uvicorn

    from storefleet.errors import StorefleetError
    from storefleet.services.wiring import preflight

    settings = _settings()
    logging_setup.configure(settings.log_format, settings.log_level)
    try:
        preflight(settings)
    except StorefleetError as exc:
        err.print(f"storefleet: cannot start: {exc.message}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    served = {
        "host": host or settings.host,
        "port": port or settings.port,
        "log_config": None,  # keep the handlers of `logs.configure` (JSON or text)
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": 5,
    }
    workers = workers or settings.workers
    if workers == 1:
        from storefleet.api.app import create_app

        uvicorn.run(create_app(settings), **served)
        return
    # Several processes on one socket, each building its app (`worker_app`) from the same
    # STOREFLEET_* variables; uvicorn starts a worker again when one dies. Their counters
    # and histograms go to files the one that answers a scrape sums (Prometheus's multiprocess
    # mode), in a folder of this server's own, removed when it stops.
    metrics = _metrics_dir(settings.data_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    try:
        uvicorn.run(
            "storefleet.api.app:worker_app",
            factory=True,
            workers=workers,
            **served,
        )
    finally:
        shutil.rmtree(metrics, ignore_errors=True)


def _metrics_dir(data_dir: Path) -> Path:
    """A new, empty folder for the workers' metric files; those of servers that are gone are
    removed (a server killed without its clean-up)."""
    from storefleet.shared import shared_dir

    shared_dir(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    parent = shared_dir(data_dir) / "metrics"
    parent.mkdir(exist_ok=True, mode=0o700)
    for old in parent.iterdir():
        if old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
            shutil.rmtree(old, ignore_errors=True)
    mine = parent / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(mode=0o700)
    return mine


def _country(code: str, url: str | None) -> str:
    """The id of the country with ISO 3166 alpha-2 or alpha-3 code `code`."""
    import pycountry

    found = pycountry.countries.get(alpha_2=code.upper()) if len(code) == 2 else None
    if found is None and len(code) == 3:
        found = pycountry.countries.get(alpha_3=code.upper())
    if found is None:
        _die(
            f"unknown country code {code!r}: give an ISO 3166 code, alpha-2 (ES) or alpha-3 "
            "(ESP), or a country id from /api/v1/countries"
        )
    countries = _call(url, "GET", "/api/v1/countries")
    return str(next(c["id"] for c in countries if c["code"] == found.alpha_2))


@stores_app.command("create")
def stores_create(
    nombre: Annotated[str, typer.Argument(help="Store name.")],
    country: Annotated[
        str, typer.Option(help="ISO 3166 code (ES or ESP) or a country id from /countries.")
    ],
    plan: Annotated[str, typer.Option(help="basic, premium or enterprise.")] = "basic",
    tokens: Annotated[int, typer.Option(help="tokens_disponibles.")] = 0,
    deploy: Annotated[bool, typer.Option("--deploy/--no-deploy")] = True,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a store (and deploy it unless --no-deploy)."""
    country_id = country if _UUID.match(country) else _country(country, url)
    body = {"nombre": nombre, "country_id": country_id, "tokens_disponibles": tokens, "plan": plan}
    data = _call(url, "POST", "/api/v1/stores/", params={"deploy": deploy}, json=body)
    if as_json:
        _print(data, True)
        return
    _print(data["store"], False, STORE_COLUMNS)


@stores_app.command("list")
def stores_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List stores with their status."""
    _print(_call(url, "GET", "/api/v1/stores/"), as_json, STORE_COLUMNS)


@stores_app.command("show")
def stores_show(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show one store."""
    store_id = _store(store_id, url)
    data = _call(url, "GET", f"/api/v1/stores/{store_id}")
    if as_json:
        _print(data, True)
        return
    data = {**data, "domains": ", ".join(data.get("domains") or [])}
    _print(data, False, [*STORE_COLUMNS, "hostname", "domains", "db_link"])
    link = str(data.get("back_link") or "")
    if link.startswith("https://"):
        typer.echo(f"URL: {link}  (trust the edge's CA: storefleet edge ca > ca.pem)")
    elif link:
        typer.echo(f"URL: {link}")


@stores_app.command("domains")
def stores_domains(
    store_id: str,
    domains: Annotated[
        list[str] | None, typer.Argument(help="Its custom domains (none: remove them all).")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give a store exactly these custom domains (served over HTTPS by the edge)."""
    store_id = _store(store_id, url)
    body = {"domains": list(domains or [])}
    data = _call(url, "PATCH", f"/api/v1/stores/{store_id}", json=body)
    if as_json:
        _print(data, True)
        return
    typer.echo(f"store {store_id}: {', '.join(data['domains']) or 'no custom domain'}")


@edge_app.command("status")
def edge_status(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Whether the edge runs, where it listens and how many hosts it routes."""
    columns = ["enabled", "alive", "base_domain", "bind", "https_port", "tls", "routes"]
    _print(_call(url, "GET", "/api/v1/edge"), as_json, columns)


@pool_app.command("status")
def pool_status(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Members per plan (wanted, ready, filling, stale) and this control plane's claims,
    misses and refills."""
    data = _call(url, "GET", "/api/v1/pool")
    if as_json:
        _print(data, True)
        return
    if not data["enabled"]:
        typer.echo("no warm pool (STOREFLEET_WARM_POOL=0): every signup deploys cold")
        return
    plans = sorted(set(data["targets"]) | set(data["members"]))
    rows = [
        {
            "plan": plan,
            "target": data["targets"].get(plan, 0),
            **{k: data["members"].get(plan, {}).get(k, 0) for k in ("ready", "filling", "stale")},
        }
        for plan in plans
    ]
    _print(rows, False, ["plan", "target", "ready", "filling", "stale"])
    typer.echo(
        f"version {data['version']}: {data['claims']} claimed, {data['misses']} missed, "
        f"{data['failed_claims']} failed; {data['refilling']} refilling now, "
        f"{data['refilled']} made, {data['destroyed']} destroyed ({data['recycled']} recycled)"
    )


@edge_app.command("ca")
def edge_ca(url: UrlOpt = None) -> None:
    """Print the edge's root certificate (PEM), to trust its HTTPS."""
    with _client(url) as client:
        response = client.get("/api/v1/edge/ca.pem")
    if response.status_code != 200:
        _fail(response)
    typer.echo(response.text, nl=False)


@stores_app.command("delete")
def stores_delete(
    store_id: str,
    purge: Annotated[bool, typer.Option(help="Also delete the store's data.")] = False,
    final_backup: Annotated[
        bool,
        typer.Option(
            "--final-backup/--no-final-backup",
            help="With --purge: back the data up first (the default).",
        ),
    ] = True,
    url: UrlOpt = None,
) -> None:
    """Undeploy and delete a store (its data is kept unless --purge)."""
    store_id = _store(store_id, url)
    had_data = purge and _call(url, "GET", f"/api/v1/stores/{store_id}/deploy/status")["db_exists"]
    params = {"purge": purge, "final_backup": final_backup}
    _call(url, "DELETE", f"/api/v1/stores/{store_id}", params=params)
    typer.echo(f"deleted store {store_id}")
    if purge and not had_data:
        typer.echo("no final backup was needed: the store had no data")
    elif purge and final_backup:
        typer.echo(f"its final backup is in the backups folder of the data dir ({store_id}/)")


def _client(url: str | None, read_timeout: float | None = None) -> httpx.Client:
    token = _token()
    return httpx.Client(
        base_url=_url(url).rstrip("/"),
        headers={"Authorization": f"Bearer {token}"} if token else {},
        timeout=httpx.Timeout(10.0, read=read_timeout),
    )


def _stream_events(url: str | None, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Events from `GET /api/v1/events` as they arrive (Server-Sent Events)."""
    try:
        with (
            _client(url) as client,
            connect_sse(client, "GET", "/api/v1/events", params=params) as source,
        ):
            if source.response.status_code >= 400:
                source.response.read()
                _fail(source.response)
            for sse in source.iter_sse():
                if sse.data:
                    yield json.loads(sse.data)
    except httpx.HTTPError as exc:
        _die(f"event stream from {_url(url)} broke off: {exc}", 2)


def _fail(response: httpx.Response) -> NoReturn:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 401:
        where = (
            "--token / STOREFLEET_TOKEN"
            if _session.token
            else (f"no --token or STOREFLEET_TOKEN, and {_data_dir().resolve() / 'admin-token'}")
        )
        detail = f"{detail} (the token came from: {where}; set STOREFLEET_DATA_DIR or --token)"
    _die(f"error {response.status_code}: {detail}")


def _summary(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    kind = event["type"]
    if kind == "operation.step":
        error = f": {data['error']}" if data.get("error") else ""
        return f"{data.get('kind')} step {data.get('step')} {data.get('state')}{error}"
    if kind in ("operation.started", "operation.finished"):
        error = f": {data['error']}" if data.get("error") else ""
        return f"{data.get('kind')} {data.get('state', 'started')}{error}"
    if kind == "store.status":
        detail = f" ({data['detail']})" if data.get("detail") else ""
        return f"{data.get('from')} -> {data.get('to')}{detail}"
    if kind == "reconciler.action":
        return str(data.get("action"))
    return json.dumps(data, ensure_ascii=False)


def _follow_operation(url: str | None, op: dict[str, Any]) -> dict[str, Any]:
    """Show an operation's steps live (on stderr) until it ends; return its final record."""
    marks = {"ok": "[green]✓[/green]", "failed": "[red]✗[/red]", "running": "[dim]…[/dim]"}
    started: dict[int, float] = {}
    params = {"operation_id": op["id"], "after": 0}
    for event in _stream_events(url, params):
        data = event.get("data") or {}
        if event["type"] == "operation.step":
            at = datetime.fromisoformat(event["at"]).timestamp()
            index = int(data.get("index", -1))
            if data.get("state") == "running":
                started[index] = at
                err.print(f"  {marks['running']} {data.get('step')}")
                continue
            took = f" [dim]{at - started.get(index, at):.2f} s[/dim]"
            error = f": {data['error']}" if data.get("error") else ""
            mark = marks.get(str(data.get("state")), "?")
            err.print(f"  {mark} {data.get('step')}{took}{error}")
        elif event["type"] == "operation.finished":
            break
    final: dict[str, Any] = _call(url, "GET", f"/api/v1/operations/{op['id']}")
    return final


@app.command()
def deploy(
    store_id: str,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the steps live.")
    ] = True,
) -> None:
    """Deploy a store's stack and wait until it is healthy, showing each step as it runs."""
    store_id = _store(store_id, url)
    if not progress:
        data = _call(url, "POST", f"/api/v1/stores/{store_id}/deploy")
        _print(data, as_json, ["store_id", "status", "back_link", "db_link"])
        return
    if _call(url, "GET", f"/api/v1/stores/{store_id}/deploy/status")["status"] == "running":
        data = _call(url, "POST", f"/api/v1/stores/{store_id}/deploy")  # a no-op: no operation
        if data["status"] == "already_deployed":
            err.print(f"store {store_id} is already deployed")
            _print(data, as_json, ["store_id", "status", "back_link", "db_link"])
            return
    op = _call(url, "POST", f"/api/v1/stores/{store_id}/deploy", params={"wait": "false"})
    err.print(f"deploying store {store_id} (operation {op['id']})")
    final = _follow_operation(url, op)
    if final["state"] != "succeeded":
        err.print(f"[red]deploy {final['state']}: {final.get('error')}[/red]")
        raise typer.Exit(1)
    _print(final["result"], as_json, ["store_id", "status", "back_link", "db_link"])


@app.command()
def events(
    store: Annotated[str | None, typer.Option(help="Only this store's events.")] = None,
    types: Annotated[
        str | None,
        typer.Option(help="Comma-separated types or families, e.g. operation.*,store.status"),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", "-f", help="Keep waiting for new events.")
    ] = False,
    after: Annotated[
        int | None,
        typer.Option(help="Replay every retained event after this id (to resume)."),
    ] = None,
    last: Annotated[
        int, typer.Option(help="Without --after: the newest N events first (0: only new ones).")
    ] = 100,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print events (operation steps, status changes, reconciler actions); -f follows new ones."""
    # the server's one rule: the newest `last` events, or every one after `after`; then new ones
    params: dict[str, Any] = {"follow": follow, "last": last}
    if after is not None:
        params["after"] = after
    if store:
        params["store_id"] = _store(store, url)
    if types:
        params["types"] = ",".join(t.strip() for t in types.split(",") if t.strip())
    for event in _stream_events(url, params):
        if as_json:
            typer.echo(json.dumps(event, ensure_ascii=False))
            continue
        store_id = event.get("store_id") or "-"
        console.print(
            f"{event['at'][:23]} [bold]{event['type']:<20}[/bold] {store_id} {_summary(event)}",
            highlight=False,
            markup=True,
        )


@app.command()
def status(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show a store's deployment status, observed from its runtime."""
    store_id = _store(store_id, url)
    data = _call(url, "GET", f"/api/v1/stores/{store_id}/deploy/status")
    if as_json:
        _print(data, True)
        return
    columns = ["store_id", "status", "runtime", "containers_running", "services_running"]
    _print(data, False, [*columns, "back_link"])
    if data.get("services"):
        _print(data["services"], False, ["name", "state", "healthy"])
    if data.get("last_error"):
        err.print(f"last error: {data['last_error']}")


@app.command()
def undeploy(
    store_id: str,
    purge: Annotated[bool, typer.Option(help="Also delete the store's data.")] = False,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop and remove a store's stack (its data is kept unless --purge)."""
    store_id = _store(store_id, url)
    data = _call(url, "DELETE", f"/api/v1/stores/{store_id}/deploy", params={"purge": purge})
    _print(data, as_json, ["store_id", "status", "message"])


def _action(url: str | None, store_id: str, action: str, as_json: bool) -> None:
    data = _call(url, "POST", f"/api/v1/stores/{store_id}/{action}")
    _print(data, as_json, ["store_id", "status", "message"])


@app.command()
def stop(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Stop a store's stack (ports, links and data kept)."""
    store_id = _store(store_id, url)
    _action(url, store_id, "stop", as_json)


@app.command()
def start(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Start a stopped store on the same ports."""
    store_id = _store(store_id, url)
    _action(url, store_id, "start", as_json)


@app.command()
def restart(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Restart a store's stack and wait until it is healthy."""
    store_id = _store(store_id, url)
    _action(url, store_id, "restart", as_json)


@app.command()
def upgrade(
    store_id: str,
    version: str,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upgrade a store's backend to VERSION (rolled back automatically if it is unhealthy)."""
    store_id = _store(store_id, url)
    data = _call(url, "POST", f"/api/v1/stores/{store_id}/upgrade", json={"version": version})
    _print(data, as_json, ["store_id", "status", "version", "message"])


@app.command("fleet-upgrade")
def fleet_upgrade(
    version: str,
    batch_size: Annotated[int, typer.Option(help="Stores upgraded at once (a wave).")] = 5,
    max_failures: Annotated[int, typer.Option(help="Stop after more failures.")] = 0,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upgrade every deployed store to VERSION in waves, showing the waves live."""
    body = {"version": version, "batch_size": batch_size, "max_failures": max_failures}
    op = _call(url, "POST", "/api/v1/fleet/upgrade", json=body)
    err.print(f"fleet upgrade to {version} (operation {op['id']})")
    final = _follow_operation(url, op)
    result = final.get("result") or {}
    if as_json:
        _print(result, True)
    else:
        rows = [{"store_id": sid, "outcome": "upgraded"} for sid in result.get("upgraded", [])]
        rows += [
            {"store_id": sid, "outcome": f"failed: {why}"}
            for sid, why in (result.get("failed") or {}).items()
        ]
        _print(rows, False, ["store_id", "outcome"])
    if final["state"] != "succeeded":
        err.print(f"[red]fleet upgrade {final['state']}: {final.get('error')}[/red]")
        raise typer.Exit(1)


@nodes_app.command("list")
def nodes_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """The nodes with their state, availability and the stores pinned to each (`local` on a
    runtime that runs every store on this host)."""
    data = _call(url, "GET", "/api/v1/nodes")
    columns = ["name", "state", "availability", "address", "stores", "reserved_cpus"]
    _print(data, as_json, [*columns, "reserved_memory_mb"])


@nodes_app.command("drain")
def nodes_drain(node: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Move every store off NODE, one by one, showing each move live; then the node takes none."""
    op = _call(url, "POST", f"/api/v1/nodes/{node}/drain")
    err.print(f"draining node {node} (operation {op['id']})")
    final = _follow_operation(url, op)
    result = final.get("result") or {}
    moved = [{"store_id": sid, "node": to} for sid, to in (result.get("moved") or {}).items()]
    _print(result if as_json else moved, as_json, ["store_id", "node"])
    if final["state"] != "succeeded":
        err.print(f"[red]drain {final['state']}: {final.get('error')}[/red]")
        raise typer.Exit(1)


@app.command()
def move(
    store_id: str,
    node: Annotated[str, typer.Option("--node", help="The node to move the store to.")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move a running store and its data to another node (Swarm), showing the steps live; on
    failure it runs where it was."""
    store_id = _store(store_id, url)
    columns = ["store_id", "status", "from_node", "node", "message"]
    op = _call(
        url, "POST", f"/api/v1/stores/{store_id}/move", params={"wait": "false"},
        json={"node": node},
    )  # fmt: skip
    if "id" not in op or "state" not in op:  # an answer without an operation (already there)
        _print(op, as_json, columns)
        return
    err.print(f"moving store {store_id} to {node} (operation {op['id']})")
    final = _follow_operation(url, op)
    if final["state"] != "succeeded":
        err.print(f"[red]move {final['state']}: {final.get('error')}[/red]")
        raise typer.Exit(1)
    _print(final["result"], as_json, columns)


@backups_app.command("create")
def backups_create(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Back up a store's database now."""
    store_id = _store(store_id, url)
    data = _call(url, "POST", f"/api/v1/stores/{store_id}/backups")
    _print(data, as_json, BACKUP_COLUMNS)


@backups_app.command("list")
def backups_list(store_id: str, url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List a store's backups, newest first."""
    store_id = _store(store_id, url)
    _print(_call(url, "GET", f"/api/v1/stores/{store_id}/backups"), as_json, BACKUP_COLUMNS)


@backups_app.command("restore")
def backups_restore(
    store_id: str, backup_id: str, url: UrlOpt = None, as_json: JsonOpt = False
) -> None:
    """Restore a backup into its store (refused if its checksum does not match)."""
    store_id = _store(store_id, url)
    backup_id = _backup(store_id, backup_id, url)
    data = _call(url, "POST", f"/api/v1/stores/{store_id}/backups/{backup_id}/restore")
    _print(data, as_json, ["store_id", "backup_id", "status", "message"])


@backups_app.command("download")
def backups_download(
    store_id: str,
    backup_id: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    url: UrlOpt = None,
) -> None:
    """Download a backup file (its SHA-256 is checked after the download)."""
    store_id = _store(store_id, url)
    backup_id = _backup(store_id, backup_id, url)
    if output.is_dir():
        _die(f"{output} is a folder: give a file name (-o {output / 'backup.bin'})")
    if not output.parent.is_dir():
        _die(f"folder {output.parent} does not exist: create it or choose another -o")
    if output.exists() and not force:
        _die(f"{output} exists: give --force to overwrite it")
    path = f"/api/v1/stores/{store_id}/backups/{backup_id}/download"
    digest = hashlib.sha256()
    partial = output.with_name(output.name + ".part")
    try:
        with _client(url, read_timeout=300) as client, client.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                _fail(response)
            with partial.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
                    digest.update(chunk)
            expected = response.headers.get("x-checksum-sha256")
        if digest.hexdigest() != expected:
            _die(f"checksum mismatch: got {digest.hexdigest()}, expected {expected}")
        partial.replace(output)
    except OSError as exc:
        _die(f"cannot write {output}: {exc.strerror or exc}")
    except httpx.HTTPError as exc:
        _die(f"download from {_url(url)} broke off: {exc}", 2)
    finally:
        partial.unlink(missing_ok=True)
    typer.echo(f"wrote {output} (sha256 {expected})")


@app.command()
def logs(
    store_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    service: Annotated[str | None, typer.Option(help="backend (default), db, supervisor.")] = None,
    tail: Annotated[int, typer.Option(help="Lines from the end to start with.")] = 100,
    url: UrlOpt = None,
) -> None:
    """Print a store's logs (secrets redacted); -f follows them."""
    store_id = _store(store_id, url)
    params: dict[str, Any] = {"follow": follow, "tail": tail}
    if service:
        params["service"] = service
    path = f"/api/v1/stores/{store_id}/logs"
    try:
        with _client(url) as client, client.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                _fail(response)
            for line in response.iter_lines():
                typer.echo(line)
    except httpx.HTTPError as exc:
        _die(f"log stream from {_url(url)} broke off: {exc}", 2)


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="admin, operator or store.")],
    store: Annotated[str | None, typer.Option(help="The store of a store token.")] = None,
    expires_at: Annotated[
        str | None, typer.Option(help="ISO 8601 time, e.g. 2027-01-01T00:00:00Z.")
    ] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token; its value is printed once."""
    if (role == "store") != (store is not None):
        _die("--store STORE is required with --role store, and only with it")
    body = {
        "role": role,
        "store_id": _store(store, url) if store else None,
        "expires_at": expires_at,
    }
    data = _call(url, "POST", "/api/v1/tokens", json=body)
    if as_json:
        _print(data, True)
        return
    _print(data, False, ["id", "role", "store_id", "expires_at"])
    typer.echo(f"token (shown once): {data['token']}")


@tokens_app.command("list")
def tokens_list(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """List tokens (never their values)."""
    columns = ["id", "prefix", "role", "store_id", "expires_at", "revoked_at"]
    _print(_call(url, "GET", "/api/v1/tokens"), as_json, columns)


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, url: UrlOpt = None) -> None:
    """Revoke a token at once."""
    _call(url, "DELETE", f"/api/v1/tokens/{token_id}")
    typer.echo(f"revoked token {token_id}")


@secrets_app.command("rotate-key")
def secrets_rotate_key(
    new_key_file: Annotated[
        Path | None,
        typer.Option(help="File with the new Fernet key (default: generate one)."),
    ] = None,
) -> None:
    """Re-encrypt every secret under a new key. Key-file mode: the new key replaces secret.key
    and running control planes pick it up. With STOREFLEET_SECRET_KEY: configure NEW,OLD on
    every plane first, then rotate (or give --new-key-file), then drop OLD."""
    from storefleet.errors import StorefleetError
    from storefleet.registry.db import Registry
    from storefleet.services.secrets import rotate_key

    settings = _settings()
    configured = settings.secret_key.get_secret_value() if settings.secret_key else None
    try:
        new_key = new_key_file.read_bytes().strip() if new_key_file else None
    except OSError as exc:
        err.print(f"storefleet: cannot read {new_key_file}: {exc.strerror}", markup=False)
        raise typer.Exit(2) from exc
    registry = Registry.open(settings.registry_url)
    try:
        done = rotate_key(registry, settings.data_dir, new_key, configured=configured)
    except StorefleetError as exc:
        err.print(f"storefleet: {exc.message}", markup=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    finally:
        registry.close()
    typer.echo(f"re-encrypted {done.rotated} secret(s) under the new key")
    if done.still_old:
        typer.echo(f"{done.still_old} secret(s) still need an old key: it is kept")
    elif not done.key_files:
        typer.echo("no secret needs the old key: set STOREFLEET_SECRET_KEY to the new key alone")


@app.command()
def versions(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Backend versions the control plane's runtime can run, and the default."""
    data = _call(url, "GET", "/api/v1/versions")
    if as_json:
        _print(data, True)
        return
    rows = [
        {"version": v, "default": "yes" if v == data.get("default") else ""}
        for v in data.get("available", [])
    ]
    typer.echo(f"runtime: {data.get('runtime')}")
    _print(rows, False, ["version", "default"])


@app.command()
def doctor() -> None:
    """Check this host for the control plane (settings, registry, data dir, runtime, ports,
    clock, disk): one line each, ok or fail with the fix; exit 1 on any failure."""
    from storefleet.services.doctor import run_checks

    checks = run_checks(_settings())
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        fix = "" if check.ok or not check.fix else f"  -> {check.fix}"
        typer.echo(f"{mark} {check.name:<16} {check.detail}{fix}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def main() -> None:
    """The `storefleet` command: every error is one line naming what to do, never a trace."""
    try:
        app(prog_name="storefleet")
    except OSError as exc:
        err.print(f"storefleet: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()

"""Settings, read once from `STOREFLEET_*` environment variables."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

RuntimeName = Literal["process", "docker", "swarm"]
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
# A backend version: an image tag's alphabet (no `/`, `:` or spaces), at most 100 characters.
VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$"


class PlanLimit(BaseModel):
    cpus: float = Field(gt=0, le=64)
    memory_mb: int = Field(ge=16, le=1024 * 1024)


class PortRange:
    """An inclusive range of TCP ports, written `9000-9999`."""

    __slots__ = ("first", "last")

    def __init__(self, first: int, last: int) -> None:
        if not (1024 <= first <= last <= 65535):
            raise ValueError(f"port range {first}-{last} must lie within 1024-65535, low to high")
        if last - first + 1 < 3:
            raise ValueError(
                f"port range {first}-{last} holds fewer than the 3 ports a store needs"
            )
        self.first = first
        self.last = last

    @classmethod
    def parse(cls, text: str) -> PortRange:
        parts = text.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"port range {text!r} must look like 9000-9999")
        return cls(int(parts[0]), int(parts[1]))

    def bases(self) -> range:
        """Every backend port of a whole triple (backend, websocket, db) inside the range."""
        return range(self.first, self.last - 1, 3)

    @property
    def size(self) -> int:
        """Ports usable by stores (whole triples)."""
        return len(self.bases()) * 3

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortRange) and (self.first, self.last) == (other.first, other.last)

    def __hash__(self) -> int:
        return hash((self.first, self.last))


class Settings(BaseSettings):
    """Every knob of the control plane. Environment variables are `STOREFLEET_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="STOREFLEET_", frozen=True, extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    runtime: RuntimeName = "process"
    port_range: str = "9000-9999"

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Server processes of `storefleet serve`, each serving every route on the one port (see
    # `storefleet.shared` for what they share; one of them runs the reconciler).
    workers: int = Field(default=1, ge=1, le=32)
    # Host name put into a store's back_link / db_link.
    public_host: str = "127.0.0.1"

    deploy_timeout_s: float = Field(default=60.0, gt=0)
    undeploy_timeout_s: float = Field(default=30.0, gt=0)
    health_poll_interval_s: float = Field(default=0.05, gt=0)
    # A running operation's lock on its store is renewed every ttl/6; if its control plane dies,
    # the lock expires after this long and a reconciler recovers the store.
    store_lock_ttl_s: float = Field(default=30.0, gt=0)
    # Reconciler: a full pass at least this often (and after every operation).
    reconcile_interval_s: float = Field(default=10.0, gt=0)
    # Back-off of repairs of one store's stack: initial, doubling up to max.
    repair_backoff_initial_s: float = Field(default=10.0, gt=0)
    repair_backoff_max_s: float = Field(default=300.0, gt=0)
    # Test hook: `kind:step` SIGKILLs the control plane right after that step (crash tests).
    fault_after: str | None = None
    max_body_bytes: int = Field(default=64 * 1024, gt=0)
    # Concurrent status requests of one store share an observation of the runtime this recent.
    status_max_age_s: float = Field(default=0.5, ge=0, le=5)

    # Process runtime: restart back-off of a store backend that exits.
    restart_backoff_initial_s: float = Field(default=0.5, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    # Process runtime: the Python module run as each store's backend (`python -m MODULE`).
    process_backend_module: str = Field(default="storefleet_backend", pattern=MODULE_PATTERN)
    # Process runtime: run each store's backend as a user of its own (`on`: required, needs
    # root and an interpreter other users can run; `auto`: when that holds; `off`: never).
    process_store_users: Literal["auto", "on", "off"] = "auto"
    # Consecutive failed starts after which a store shows `error` instead of `degraded`.
    crashloop_error_after: int = Field(default=5, ge=1)

    # Encryption of per-store secrets at rest. Without it a key file is made in data_dir.
    secret_key: SecretStr | None = None
    # The admin API token. Without it one is made once and written to data_dir/admin-token.
    admin_token: SecretStr | None = None
    # Per-token limit of mutating requests: a burst, refilled at a rate per minute.
    rate_limit_per_minute: int = Field(default=120, ge=1)
    rate_limit_burst: int = Field(default=60, ge=1)
    # Requests without a valid token, per client address: a burst, refilled per minute (429
    # past it); they are counted in the audit log once a minute per address, not one row each.
    auth_failures_per_minute: int = Field(default=60, ge=1)
    auth_failures_burst: int = Field(default=30, ge=1)
    # A dashboard session (signed in with an API token) lasts this long at most (default 8 h),
    # never past its token's expiry; it ends at once when the token is revoked.
    session_ttl_s: float = Field(default=8 * 3600.0, gt=0, le=30 * 24 * 3600.0)
    # Audit entries are kept this long (default 90 days).
    audit_retention_s: float = Field(default=90 * 24 * 3600.0, gt=0)
    # Long-lived streams (followed logs, the event stream): per token, and in all.
    streams_per_token: int = Field(default=8, ge=1, le=10_000)
    streams_max: int = Field(default=200, ge=1, le=10_000)
    # Webhook URLs may target only public addresses unless their network is listed here
    # (comma-separated CIDRs, e.g. `127.0.0.0/8,10.1.0.0/16`).
    webhook_allow_nets: str = ""

    # Browser origins allowed to call a store's backend (orders API, websocket), comma-separated
    # (`https://shop.example.com`); requests from other origins are refused. None by default.
    store_allowed_origins: str = Field(default="", pattern=r"^[A-Za-z0-9.:/,_ -]*$")

    # Docker runtime.
    backend_image: str = "storefleet/store-backend:0.1.0"
    postgres_image: str = "storefleet/postgres:15"
    publish_db_port: bool = True
    stack_template: Path | None = None
    docker_host: str | None = None
    # Host address the store backends' ports are published on (0.0.0.0 to serve other hosts).
    backend_bind_host: str = "127.0.0.1"
    # Prefix of every Compose project name (`<prefix>-<store id>`).
    project_prefix: str = Field(default="sf", pattern=r"^[a-z][a-z0-9]{0,9}$")
    # Extra labels put on every Docker object, `key=value,key=value` (tests mark their objects).
    extra_labels: str = ""
    # Docker's own health checks of a store's containers: each runs a process in the container
    # (a Python interpreter for the backend), so their cost grows with the fleet: at 1 s, 8
    # idle stores kept a two-core host about 55% busy, at 10 s about 12%. A deploy does not
    # wait for them (it polls the backend's /health itself); a container not checked yet
    # says `healthy: null`.
    docker_health_interval: str = Field(default="10s", pattern=r"^[0-9]+(ms|s)$")
    # Swarm's: a task gets traffic only once healthy, so a new store waits for its first check.
    swarm_health_interval: str = Field(default="1s", pattern=r"^[0-9]+(ms|s)$")

    # Swarm runtime: the node labels a node needs to take new stores (`zone=eu,disk=ssd`), on
    # top of `io.storefleet.node` (its name), which every node that takes stores carries.
    node_labels: str = Field(default="", pattern=r"^[A-Za-z0-9._=, -]*$")

    # Plans as resources: CPU and memory limits of each container of a store, per plan (JSON).
    plan_limits: dict[str, PlanLimit] = Field(
        default_factory=lambda: {
            "basic": PlanLimit(cpus=0.5, memory_mb=256),
            "premium": PlanLimit(cpus=1.0, memory_mb=512),
            "enterprise": PlanLimit(cpus=2.0, memory_mb=1024),
        }
    )
    # Process runtime: the reference backend's version, and more versions (version -> module).
    process_default_version: str = Field(default="0.1.0", pattern=VERSION_PATTERN)
    process_versions: dict[str, str] = Field(default_factory=dict)
    # Backups: every store is backed up this often (0: only on request); the newest
    # `backup_retention` scheduled and manual backups of a store are kept (final ones always).
    backup_interval_s: float = Field(default=0.0, ge=0)
    backup_retention: int = Field(default=7, ge=1)

    # The edge: one reverse proxy (Caddy) serving every store at `<slug>.<base_domain>` over
    # HTTPS. `caddy` or `none`; unset: on with the Docker runtime, off with the process runtime.
    edge: Literal["caddy", "none"] | None = None
    edge_https_port: int = Field(default=443, ge=1, le=65535)
    edge_http_port: int = Field(default=80, ge=1, le=65535)
    # The address the edge listens on (0.0.0.0 to serve the world).
    edge_bind: str = "127.0.0.1"
    # Every store's hostname is `<slug>.<base_domain>` (names under .localhost reach loopback in
    # browsers and curl; point a wildcard DNS record at the edge for a real domain).
    base_domain: str = Field(default="stores.localhost", min_length=3, max_length=50)
    # ACME (Let's Encrypt) instead of the edge's own CA: the account's e-mail address.
    acme_email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    # The edge's image on the Docker runtime (built by `make images`).
    edge_image: str = "storefleet/edge:2.6"

    # The warm pool: stacks made ahead of signups, paused, claimed by `POST /stores/`. `n`
    # (members of the basic plan) or per plan, `basic=5,premium=2`; 0: no pool. Recommended
    # with Docker: a few more than the signups expected within a refill (about 4 s each).
    warm_pool: str = Field(default="0", max_length=100)
    # Members made at once (a refill waits while regular operations run on this plane).
    pool_refill_parallel: int = Field(default=2, ge=1, le=16)

    # Logs: `json` (one object per line), `text`, or `auto` (text on a terminal, else JSON).
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One log line per HTTP request (uvicorn's access log). Mutating requests are in the
    # audit log either way; under heavy polling these lines cost the API some throughput.
    access_log: bool = True

    @field_validator(
        "log_level", "log_format", "runtime", "process_store_users", "edge", mode="before"
    )
    @classmethod
    def _any_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if value.strip().upper() in _LEVELS else value.strip().lower()

    @field_validator("base_domain")
    @classmethod
    def _base_domain(cls, value: str) -> str:
        value = value.strip().lower().rstrip(".")
        label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        if not re.fullmatch(rf"{label}(\.{label})+", value):
            raise ValueError(f"{value!r} is not a domain name of two labels or more (a-z, 0-9, -)")
        return value

    @field_validator("warm_pool")
    @classmethod
    def _warm_pool(cls, value: str) -> str:
        parse_pool(value)
        return value

    @property
    def warm_pool_targets(self) -> dict[str, int]:
        """Members wanted per plan (plans with none left out)."""
        return parse_pool(self.warm_pool)

    @field_validator("edge_bind")
    @classmethod
    def _edge_bind(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address") from exc
        return value

    @property
    def edge_on(self) -> bool:
        """The edge serves stores: asked for, or by default with the Docker and Swarm
        runtimes."""
        if self.edge is None:
            return self.runtime in ("docker", "swarm")
        return self.edge == "caddy"

    @property
    def edge_dir(self) -> Path:
        return self.data_dir / "edge"

    @field_validator("webhook_allow_nets")
    @classmethod
    def _nets(cls, value: str) -> str:
        for item in filter(None, (i.strip() for i in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a network (e.g. 10.0.0.0/8)") from exc
        return value

    @property
    def webhook_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        items = (i.strip() for i in self.webhook_allow_nets.split(","))
        return [ipaddress.ip_network(i, strict=False) for i in items if i]

    # Events (SSE stream, webhooks) are kept this long.
    event_retention_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Webhook deliveries: attempts in all, back-off (initial, doubling up to max), timeout.
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_retry_initial_s: float = Field(default=1.0, gt=0)
    webhook_retry_max_s: float = Field(default=300.0, gt=0)
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("plan_limits")
    @classmethod
    def _every_plan(cls, value: dict[str, PlanLimit]) -> dict[str, PlanLimit]:
        missing = {"basic", "premium", "enterprise"} - set(value)
        if missing:
            raise ValueError(f"plan_limits lacks {sorted(missing)}")
        return value

    @field_validator("process_versions")
    @classmethod
    def _modules(cls, value: dict[str, str]) -> dict[str, str]:
        for version, module in value.items():
            good = re.fullmatch(VERSION_PATTERN, version) and re.fullmatch(MODULE_PATTERN, module)
            if not good:
                raise ValueError(f"process version {version!r} -> {module!r} is malformed")
        return value

    @field_validator("port_range")
    @classmethod
    def _valid_port_range(cls, value: str) -> str:
        PortRange.parse(value)
        return value

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        object.__setattr__(self, "data_dir", self.data_dir.expanduser().resolve())
        return self

    @field_validator("extra_labels")
    @classmethod
    def _valid_labels(cls, value: str) -> str:
        for item in filter(None, value.split(",")):
            key, sep, val = item.partition("=")
            if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,99}", key):
                raise ValueError(f"extra label {item!r} must be key=value with a lowercase key")
            if not re.fullmatch(r"[A-Za-z0-9._-]{0,100}", val):
                raise ValueError(f"extra label {item!r} has a value with unsafe characters")
        return value

    @property
    def extra_label_map(self) -> dict[str, str]:
        return dict(i.split("=", 1) for i in self.extra_labels.split(",") if i)

    @property
    def ports(self) -> PortRange:
        return PortRange.parse(self.port_range)

    @property
    def registry_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'storefleet.db'}"

    @property
    def stores_dir(self) -> Path:
        return self.data_dir / "stores"


POOL_PLANS = ("basic", "premium", "enterprise")
POOL_MAX = 100  # members per plan


def parse_pool(value: str) -> dict[str, int]:
    """`n` (the basic plan) or `plan=n,plan=n` -> {plan: n} for n > 0."""
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,3}", text):
        count = int(text)
        if count > POOL_MAX:
            raise ValueError(f"at most {POOL_MAX} members per plan")
        return {"basic": count} if count else {}
    targets: dict[str, int] = {}
    for item in text.split(","):
        plan, sep, raw = item.strip().partition("=")
        if not sep or plan not in POOL_PLANS or not re.fullmatch(r"[0-9]{1,3}", raw.strip()):
            raise ValueError(f"{item!r}: expected n or plan=n,... with plans {POOL_PLANS}")
        if plan in targets:
            raise ValueError(f"plan {plan} is named twice")
        count = int(raw)
        if count > POOL_MAX:
            raise ValueError(f"at most {POOL_MAX} members per plan")
        targets[plan] = count
    return {plan: n for plan, n in targets.items() if n}


class SettingsError(ValueError):
    """A setting is malformed: one line per variable, naming it and what it accepts."""


def load_settings() -> Settings:
    """Settings from the environment; a bad value is a `SettingsError` whose lines each name
    the variable (`STOREFLEET_LOG_LEVEL`) and what it accepts, never a validation trace."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "STOREFLEET_" + "_".join(str(p) for p in error["loc"][:1]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            got = error.get("input")
            shown = "" if isinstance(got, dict) or "SECRET" in name or "TOKEN" in name else got
            lines.append(f"{name}: {message}" + (f" (got {shown!r})" if shown else ""))
        raise SettingsError("\n".join(lines)) from None

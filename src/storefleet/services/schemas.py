"""Typed requests and the views services return (pydantic v2). Field names are the seed's."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from storefleet.services.countries import list_countries
from storefleet.services.validation import NAME_MAX, NOMBRE_PATTERN, TOKENS_MAX, clean_nombre

Plan = Literal["basic", "premium", "enterprise"]
StatusWord = Literal[
    "not_deployed", "deploying", "running", "degraded", "stopped", "undeploying", "error"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1000)


def _whole_number(value: object) -> object:
    """A JSON number with no fractional part (JSON Schema's `integer`: 3 and 3.0 alike); never a
    string or a boolean (lax parsing would read "3" and true as numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a whole number")
    return value


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    """An RFC 3339 date-time with its offset, as the schema's `format: date-time` says; not a
    number of seconds nor a time without a zone (which lax parsing would take)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with its offset, e.g. 2027-01-01T00:00:00Z")
    return value


# A moment in time as clients send it (query parameters and bodies alike).
Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


def _country_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = [c.id for c in list_countries()]


def _nombre_schema(schema: dict[str, Any]) -> None:
    schema["pattern"] = NOMBRE_PATTERN


# For the integers of JSON bodies, after their bounds (`Annotated[int, Field(ge=..), WHOLE]`: in
# that order the schema states the bounds as minimum/maximum).
WHOLE = BeforeValidator(_whole_number)
Tokens = Annotated[int, Field(ge=0, le=TOKENS_MAX), WHOLE]
Nombre = Annotated[
    str,
    Field(
        max_length=NAME_MAX,
        description="Display name; unique regardless of case and accents. Trimmed; no control "
        "or invisible characters.",
        json_schema_extra=_nombre_schema,
    ),
]
CountryId = Annotated[
    str, Field(description="An id from GET /countries.", json_schema_extra=_country_enum)
]


class StoreCreate(_Strict):
    nombre: Nombre
    country_id: CountryId
    tokens_disponibles: Tokens
    plan: Plan

    @field_validator("nombre")
    @classmethod
    def _nombre(cls, value: str) -> str:
        return clean_nombre(value)


class StoreUpdate(_Strict):
    """Fields left out keep their value (null is not a value: it is refused)."""

    nombre: Nombre | SkipJsonSchema[None] = None
    country_id: CountryId | SkipJsonSchema[None] = None
    tokens_disponibles: Tokens | SkipJsonSchema[None] = None
    plan: Plan | SkipJsonSchema[None] = None
    domains: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=253)]],
            Field(
                max_length=10,
                description="The store's custom domains (replacing those it has; [] removes "
                "them): served by the edge with a certificate of their own once their DNS "
                "points at it. IDNA names are accepted; wildcards, IP addresses, names under "
                "the base domain and another store's domains are not.",
            ),
        ]
        | SkipJsonSchema[None]
    ) = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(
                    f"{', '.join(nulls)}: leave a field out to keep its value; null is not one"
                )
        return data

    @field_validator("nombre")
    @classmethod
    def _nombre(cls, value: str | None) -> str | None:
        return None if value is None else clean_nombre(value)


class PortsView(BaseModel):
    backend_port: int
    websocket_port: int
    db_port: int


class StoreView(BaseModel):
    id: str
    nombre: str
    country_id: str
    tokens_disponibles: int
    plan: Plan
    created_at: datetime
    back_link: str | None
    db_link: str | None
    status: StatusWord | None = Field(
        default=None, description="Observed status (in listings: without a live health probe)."
    )
    hostname: str | None = Field(
        default=None,
        description="The store's own hostname (`<slug>.<base domain>`), kept for its life; "
        "served over HTTPS when the edge is on.",
    )
    domains: list[str] = Field(default_factory=list, description="Its custom domains.")


class DeploymentView(BaseModel):
    status: Literal["deployed", "already_deployed"]
    back_link: str
    db_link: str
    ports: PortsView
    hostname: str | None = Field(
        default=None, description="The hostname the edge serves the store at (edge on)."
    )


class DeployResult(BaseModel):
    message: str
    store_id: str
    back_link: str
    db_link: str
    ports: PortsView = Field(
        description="The store's host ports; a store routed by the edge on the Docker runtime "
        "publishes none: these are then the ports its services listen on inside its stack."
    )
    status: Literal["deployed", "already_deployed"]
    hostname: str | None = None


class UndeployResult(BaseModel):
    message: str
    store_id: str
    status: Literal["undeployed"]


class ServiceView(BaseModel):
    name: str
    state: str
    healthy: bool | None = Field(
        description="The runtime's own health check; null: it has none, or none ran yet"
    )


class PathsView(BaseModel):
    backend_path: str | None
    db_path: str | None


class ServiceUsageView(BaseModel):
    name: str
    cpu_percent: float | None
    memory_bytes: int


class UsageView(BaseModel):
    """Resources a store uses: CPU in percent of one core (averaged between two readings of
    the runtime's counters, `window_s` apart), memory in use, disk used by its data."""

    store_id: str
    sampled_at: datetime
    window_s: float | None
    cpu_percent: float | None
    memory_bytes: int
    disk_bytes: int | None
    services: list[ServiceUsageView]


class DeployStatus(BaseModel):
    store_id: str
    status: StatusWord
    backend_exists: bool
    db_exists: bool
    containers_running: bool = Field(
        description="True while every container (or process) of the store's stack runs."
    )
    services_running: int = Field(description="How many of the stack's services run.")
    ports: PortsView | None
    paths: PathsView
    back_link: str | None
    db_link: str | None
    runtime: str | None
    services: list[ServiceView]
    last_error: str | None
    version: str | None = None  # the backend version the store runs (recorded at deploy)
    usage: UsageView | None = None
    node: str | None = Field(
        default=None, description="The node the store is pinned to (a runtime of several hosts)."
    )


OpStateWord = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class StepView(BaseModel):
    name: str
    state: Literal["running", "ok", "failed"]
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


class OperationView(BaseModel):
    id: str
    store_id: str
    kind: str
    state: OpStateWord
    params: dict[str, Any]
    steps: list[StepView]
    result: dict[str, Any] | None
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

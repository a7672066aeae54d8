"""Typed requests and the views services return (pydantic v2). Field names are the seed's."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storefleet.services.validation import TOKENS_MAX, clean_nombre

Plan = Literal["basic", "premium", "enterprise"]
StatusWord = Literal[
    "not_deployed", "deploying", "running", "degraded", "stopped", "undeploying", "error"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=1000)


class StoreCreate(_Strict):
    nombre: str = Field(description="Display name; unique regardless of case and accents.")
    country_id: str = Field(max_length=36, description="An id from GET /countries.")
    tokens_disponibles: int = Field(ge=0, le=TOKENS_MAX, strict=True)
    plan: Plan

    @field_validator("nombre")
    @classmethod
    def _nombre(cls, value: str) -> str:
        return clean_nombre(value)


class StoreUpdate(_Strict):
    nombre: str | None = None
    country_id: str | None = Field(default=None, max_length=36)
    tokens_disponibles: int | None = Field(default=None, ge=0, le=TOKENS_MAX, strict=True)
    plan: Plan | None = None

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


class DeploymentView(BaseModel):
    status: Literal["deployed", "already_deployed"]
    back_link: str
    db_link: str
    ports: PortsView


class DeployResult(BaseModel):
    message: str
    store_id: str
    back_link: str
    db_link: str
    ports: PortsView
    status: Literal["deployed", "already_deployed"]


class UndeployResult(BaseModel):
    message: str
    store_id: str
    status: Literal["undeployed"]


class ServiceView(BaseModel):
    name: str
    state: str
    healthy: bool | None


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

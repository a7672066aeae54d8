"""Store stack templates: a Compose file with per-store variables, filled in as data and checked.

Variables are substituted in parsed YAML values, never in text, so a value can not add keys;
every `$` left afterwards is escaped so that Compose does not interpolate the environment.
A template may not escape the store's sandbox: no privileged containers, no host network, PID,
IPC or UTS namespace, no added capabilities or devices, no Docker socket, no bind mount or file
outside the store's folder (nor under `~`), no `include:` of other files, no external network,
no fixed container names, no builds. Every container's log is capped (json-file, 10 MiB x 3).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from storefleet.errors import InvalidInputError

VARIABLES = (
    "STORE_ID",
    "BACKEND_IMAGE",
    "POSTGRES_IMAGE",
    "BACKEND_PORT",
    "WS_PORT",
    "DB_PORT",
    "BIND_HOST",
    "DB_BIND_HOST",
    "PGDATA",
    "HEALTH_INTERVAL",
    "BACKEND_VERSION",
    "CPU_LIMIT",
    "MEMORY_LIMIT",
    "ALLOWED_ORIGINS",
)
SOCKET_MOUNT = "/run/storefleet-edge"  # a routed backend's socket folder, inside its container
LOG_MAX_SIZE = "10m"  # per container log file
LOG_MAX_FILES = "3"
_VAR = re.compile(r"\$\{([A-Z_]+)\}")
_HOST_NAMESPACE_KEYS = ("network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup")
_FORBIDDEN_SERVICE_KEYS = (
    "privileged",
    "cap_add",
    "devices",
    "device_cgroup_rules",
    "build",
    "container_name",
    "volumes_from",
    "extends",
    "sysctls",
)


class TemplateError(InvalidInputError):
    code = "bad_stack_template"


def default_template() -> str:
    return (
        resources.files("storefleet.runtime.docker") / "templates" / "store-stack.yaml"
    ).read_text()


def _fill(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {str(k): _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise TemplateError(f"stack template uses unknown variable ${{{name}}}")
            return values[name]

        return _VAR.sub(replace, node).replace("$", "$$")
    return node


def _inside(path: str, root: Path) -> bool:
    if path.startswith("~"):  # Compose expands it to a home directory
        return False
    candidate = (root / path).resolve() if not path.startswith("/") else Path(path).resolve()
    return candidate == root or root in candidate.parents


def _check_mount(service: str, mount: Any, root: Path, named: set[str]) -> None:
    if isinstance(mount, str):
        source = mount.split(":", 1)[0] if ":" in mount else ""
        kind = "volume" if source in named or not source else "bind"
    elif isinstance(mount, dict):
        kind, source = str(mount.get("type", "volume")), str(mount.get("source", ""))
    else:
        raise TemplateError(f"service {service}: malformed volume entry")
    if "docker.sock" in source:
        raise TemplateError(f"service {service}: the Docker socket may not be mounted")
    if kind == "bind" and not _inside(source, root):
        raise TemplateError(f"service {service}: bind mount {source!r} is outside the store folder")
    if kind not in ("bind", "volume", "tmpfs"):
        raise TemplateError(f"service {service}: mount type {kind!r} is not allowed")


def validate(doc: Mapping[str, Any], root: Path) -> None:
    """Refuse anything that could reach outside the store's own sandbox."""
    for key in ("include", "extends"):
        if key in doc:
            raise TemplateError(f"{key!r} is not allowed in a store stack: it reads other files")
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        raise TemplateError("stack template has no services")
    named = set((doc.get("volumes") or {}).keys())
    for name, service in services.items():
        if not isinstance(service, dict):
            raise TemplateError(f"service {name} is malformed")
        for key in _FORBIDDEN_SERVICE_KEYS:
            if service.get(key):
                raise TemplateError(f"service {name}: {key!r} is not allowed in a store stack")
        for key in _HOST_NAMESPACE_KEYS:
            value = str(service.get(key, ""))
            if value == "host" or value.startswith(("container:", "service:")):
                raise TemplateError(f"service {name}: {key}: {value} is not allowed")
        for option in service.get("security_opt") or []:
            if "unconfined" in str(option):
                raise TemplateError(f"service {name}: security_opt {option!r} is not allowed")
        for mount in service.get("volumes") or []:
            _check_mount(name, mount, root, named)
        for env_file in service.get("env_file") or []:
            path = env_file if isinstance(env_file, str) else str(env_file.get("path", ""))
            if not _inside(path, root):
                raise TemplateError(
                    f"service {name}: env_file {path!r} is outside the store folder"
                )
    for section in ("secrets", "configs"):
        for key, item in (doc.get(section) or {}).items():
            item = item or {}
            if "environment" in item or item.get("external"):
                raise TemplateError(f"{section}.{key}: only files in the store folder are allowed")
            if "file" in item and not _inside(str(item["file"]), root):
                raise TemplateError(f"{section}.{key}: file is outside the store folder")
    for key, network in (doc.get("networks") or {}).items():
        network = network or {}
        if network.get("external") or network.get("driver") in ("host", "none"):
            raise TemplateError(f"networks.{key}: external or host networks are not allowed")
    for key, volume in (doc.get("volumes") or {}).items():
        volume = volume or {}
        if volume.get("external") or (volume.get("driver_opts") or {}).get("device"):
            raise TemplateError(f"volumes.{key}: external or device-backed volumes are not allowed")


def render(
    template: str,
    *,
    values: Mapping[str, str],
    project: str,
    labels: Mapping[str, str],
    secret_files: Mapping[str, str],
    root: Path,
    publish_db_port: bool,
    socket_dir: Path | None = None,
) -> dict[str, Any]:
    """The Compose document of one store (validated), ready to be written as compose.yaml.

    With `socket_dir` (the store is routed by the edge) no service publishes a port; the
    `backend` service gets that folder (and only it) mounted for its unix sockets."""
    try:
        raw = yaml.safe_load(template)
    except yaml.YAMLError as exc:
        raise TemplateError(f"stack template is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise TemplateError("stack template must be a mapping")
    raw.pop("name", None)
    doc: dict[str, Any] = _fill(raw, values)
    validate(doc, root)
    doc = {"name": project, **doc}
    for section in ("services", "networks", "volumes"):
        for key in list((doc.get(section) or {}).keys()):
            item = doc[section][key] or {}
            existing = item.get("labels") or {}
            if isinstance(existing, list):
                existing = {str(x).partition("=")[0]: str(x).partition("=")[2] for x in existing}
            item["labels"] = {**existing, **labels}
            doc[section][key] = item
    for service in doc["services"].values():
        # container logs are capped: a chatty store can not fill the host's disk
        logging = service.setdefault("logging", {"driver": "json-file"})
        if str(logging.get("driver", "json-file")) in ("json-file", "local"):
            options = logging.setdefault("options", {})
            options.setdefault("max-size", LOG_MAX_SIZE)
            options.setdefault("max-file", LOG_MAX_FILES)
    if not publish_db_port and "db" in doc["services"]:
        doc["services"]["db"].pop("ports", None)
    if socket_dir is not None:
        for service in doc["services"].values():
            service.pop("ports", None)
    _drop_port_networks(doc)
    if socket_dir is not None:
        backend = doc["services"].get("backend")
        if backend is None:
            raise TemplateError("a routed stack needs a service named `backend`")
        backend.setdefault("volumes", []).append(
            {"type": "bind", "source": str(socket_dir), "target": SOCKET_MOUNT}
        )
        env = backend.get("environment") or {}
        if isinstance(env, list):
            env = dict(str(item).partition("=")[::2] for item in env)
        env["STORE_SOCKET_DIR"] = SOCKET_MOUNT
        backend["environment"] = env
    doc["secrets"] = {name: {"file": path} for name, path in secret_files.items()}
    return doc


# The networks that carry the database's published port (an internal network publishes none):
# `edge` (the default stack's), or `dbport` (stacks made before it was merged into `edge`, and
# templates that keep it). A database that publishes no port leaves them.
DB_PORT_NETWORKS = ("edge", "dbport")


def _drop_port_networks(doc: dict[str, Any]) -> None:
    """A database that publishes no port leaves its port networks (it keeps no route out), and
    a network no service joins is not made: every network of a store takes one of the
    engine's address pools (31 with Docker's defaults), so a store makes two."""
    db = doc["services"].get("db")
    if db is not None and not db.get("ports") and isinstance(db.get("networks"), list):
        db["networks"] = [n for n in db["networks"] if n not in DB_PORT_NETWORKS]
    used: set[str] = set()
    for service in doc["services"].values():
        joined = service.get("networks")
        if joined is None:
            used.add("default")
        else:
            used.update(joined if isinstance(joined, list) else dict(joined))
    networks = doc.get("networks")
    if isinstance(networks, dict):
        for name in [n for n in networks if n not in used]:
            del networks[name]

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from storefleet.runtime.docker.stack import split_image
from storefleet.runtime.docker.template import TemplateError, default_template, render

VALUES = {
    "STORE_ID": "0b7d4c2e-1111-4222-8333-444455556666",
    "BACKEND_IMAGE": "backend:1",
    "POSTGRES_IMAGE": "postgres:16-alpine",
    "BACKEND_PORT": "9000",
    "WS_PORT": "9001",
    "DB_PORT": "9002",
    "BIND_HOST": "127.0.0.1",
    "DB_BIND_HOST": "127.0.0.1",
    "PGDATA": "/var/lib/postgresql/data",
    "HEALTH_INTERVAL": "1s",
    "BACKEND_VERSION": "1",
    "CPU_LIMIT": "0.5",
    "MEMORY_LIMIT": "256m",
    "ALLOWED_ORIGINS": "",
}
LABELS = {"io.storefleet.managed": "true", "io.storefleet.store_id": VALUES["STORE_ID"]}


def _render(template: str, root: Path, publish: bool = True, **values: str) -> dict[str, Any]:
    return render(
        template,
        values={**VALUES, **values},
        project="sf-x",
        labels=LABELS,
        secret_files={"db_password": "./secrets/db_password"},
        root=root,
        publish_db_port=publish,
    )


def test_default_template_renders_isolated_labelled_stack(tmp_path: Path) -> None:
    doc = _render(default_template(), tmp_path)
    assert doc["name"] == "sf-x"
    db, backend = doc["services"]["db"], doc["services"]["backend"]
    # the internal db network is shared with the backend only; the published ports (the
    # backend's, the db's on loopback) live on `edge`: two networks per store
    assert doc["networks"]["db"]["internal"] is True
    assert doc["networks"]["edge"].get("internal") is not True
    assert set(doc["networks"]) == {"db", "edge"}
    assert set(db["networks"]) == {"db", "edge"}
    assert set(backend["networks"]) == {"db", "edge"}
    assert db["ports"] == ["127.0.0.1:9002:5432"]
    assert db["volumes"] == ["dbdata:/var/lib/postgresql/data"]
    # the plan's memory limit on every container; its CPU limit is set once the stack is
    # healthy (test_docker_driver.py): the stack starts without one
    assert db["mem_limit"] == backend["mem_limit"] == "256m"
    assert "cpus" not in db and "cpus" not in backend
    for section in ("services", "networks", "volumes"):
        for item in doc[section].values():
            assert item["labels"]["io.storefleet.store_id"] == VALUES["STORE_ID"]
    assert doc["secrets"] == {"db_password": {"file": "./secrets/db_password"}}
    assert "PASSWORD:" not in yaml.safe_dump(doc).replace("PASSWORD_FILE", "")


def test_db_port_can_stay_unpublished(tmp_path: Path) -> None:
    doc = _render(default_template(), tmp_path, publish=False)
    # and its publishing network is not made (each network takes one of the engine's pools)
    assert "ports" not in doc["services"]["db"]
    assert doc["services"]["db"]["networks"] == ["db"]
    assert set(doc["networks"]) == {"db", "edge"}


def test_a_routed_stack_makes_two_networks(tmp_path: Path) -> None:
    doc = render(
        default_template(),
        values=VALUES,
        project="sf-x",
        labels=LABELS,
        secret_files={"db_password": "./secrets/db_password"},
        root=tmp_path,
        publish_db_port=True,
        socket_dir=tmp_path / "s",
    )
    assert all("ports" not in service for service in doc["services"].values())
    assert set(doc["networks"]) == {"db", "edge"}  # the backend keeps its way out
    assert doc["networks"]["db"]["internal"] is True
    assert doc["services"]["db"]["networks"] == ["db"]  # the database has none


def test_a_template_that_keeps_a_db_port_network_still_makes_two(tmp_path: Path) -> None:
    template = default_template().replace(
        'networks: [db, edge]\n    healthcheck:\n      test: ["CMD", "pg_isready"',
        'networks: [db, dbport]\n    healthcheck:\n      test: ["CMD", "pg_isready"',
    )
    template = template.replace("  edge: {}\n", "  edge: {}\n  dbport: {}\n")
    published = _render(template, tmp_path)
    assert published["services"]["db"]["networks"] == ["db", "dbport"]
    unpublished = _render(template, tmp_path, publish=False)
    assert unpublished["services"]["db"]["networks"] == ["db"]
    assert set(unpublished["networks"]) == {"db", "edge"}


def test_values_are_data_not_yaml_or_interpolation(tmp_path: Path) -> None:
    template = "services:\n  backend:\n    image: x\n    environment:\n      A: ${STORE_ID}\n"
    evil = "x\n    privileged: true ${HOME} $(id)"
    doc = _render(template, tmp_path, STORE_ID=evil)
    service = doc["services"]["backend"]
    assert "privileged" not in service
    assert service["environment"]["A"] == evil.replace("$", "$$")


@pytest.mark.parametrize(
    "service",
    [
        "privileged: true",
        "network_mode: host",
        "pid: host",
        "ipc: host",
        "cap_add: [SYS_ADMIN]",
        "devices: ['/dev/sda:/dev/sda']",
        "volumes: ['/var/run/docker.sock:/var/run/docker.sock']",
        "volumes: ['/etc:/host-etc']",
        "volumes: ['../../other-store:/data']",
        "volumes: [{type: bind, source: /, target: /host}]",
        "build: .",
        "container_name: fixed",
        "security_opt: ['seccomp:unconfined']",
        "env_file: ['/etc/shadow']",
        "volumes: ['~/.ssh:/keys']",
        "volumes: [{type: bind, source: '~/x', target: /x}]",
        "env_file: ['~/.env']",
    ],
)
def test_templates_that_escape_the_sandbox_are_refused(tmp_path: Path, service: str) -> None:
    template = f"services:\n  backend:\n    image: x\n    {service}\n"
    with pytest.raises(TemplateError):
        _render(template, tmp_path)


@pytest.mark.parametrize(
    "extra",
    [
        "networks: {outside: {external: true}}",
        "volumes: {v: {driver_opts: {type: none, o: bind, device: /etc}}}",
        "secrets: {s: {file: /etc/shadow}}",
        "secrets: {s: {environment: HOME}}",
        "secrets: {s: {file: '~/.aws/credentials'}}",
        "include: [/etc/other-compose.yaml]",
        "include: [{path: ../other/compose.yaml}]",
    ],
)
def test_top_level_escapes_are_refused(tmp_path: Path, extra: str) -> None:
    with pytest.raises(TemplateError):
        _render(f"services:\n  backend:\n    image: x\n{extra}\n", tmp_path)


def test_bind_mount_inside_store_folder_and_unknown_variable(tmp_path: Path) -> None:
    ok = "services:\n  backend:\n    image: x\n    volumes: ['./files:/files:ro']\n"
    assert _render(ok, tmp_path)["services"]["backend"]["volumes"] == ["./files:/files:ro"]
    with pytest.raises(TemplateError, match="unknown variable"):
        _render("services:\n  backend:\n    image: ${NOPE}\n", tmp_path)
    with pytest.raises(TemplateError):
        _render("services: [", tmp_path)


def test_every_container_log_is_capped(tmp_path: Path) -> None:
    doc = _render(default_template(), tmp_path)
    for service in doc["services"].values():
        assert service["logging"] == {
            "driver": "json-file",
            "options": {"max-size": "10m", "max-file": "3"},
        }
    own = (
        "services:\n  backend:\n    image: x\n"
        "    logging: {driver: local, options: {max-size: 1m}}\n"
    )
    logging = _render(own, tmp_path)["services"]["backend"]["logging"]
    assert logging == {"driver": "local", "options": {"max-size": "1m", "max-file": "3"}}


def test_an_image_splits_into_repository_and_tag() -> None:
    assert split_image("registry:5000/x/y:1.0") == ("registry:5000/x/y", "1.0")
    assert split_image("registry:5000/x/y") == ("registry:5000/x/y", "latest")
    assert split_image("storefleet/store-backend:0.1.0") == ("storefleet/store-backend", "0.1.0")
    assert split_image("postgres") == ("postgres", "latest")

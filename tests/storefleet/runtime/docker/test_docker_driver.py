"""The Docker runtime on a real engine: real Compose stacks, real PostgreSQL, real HTTP.

Every object these tests make carries the label `io.storefleet.test=<pid>` and is removed
afterwards, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from helpers import (
    REPO,
    TEST_LABEL,
    Server,
    add_order,
    back_of,
    free_port,
    orders,
    store_body,
    wait_for,
)
from storefleet.config import Settings
from storefleet.runtime.docker.driver import DockerDriver

pytestmark = pytest.mark.docker

# the Docker SDK's filter mapping
Filters = dict[str, str | list[str] | bool]


DOCKER_ENV = {
    "STOREFLEET_RUNTIME": "docker",
    "STOREFLEET_EDGE": "none",  # stores at their ports here (tests/storefleet/edge: the edge)
    "STOREFLEET_EXTRA_LABELS": TEST_LABEL,
    "STOREFLEET_PROJECT_PREFIX": "sft",
    "STOREFLEET_DEPLOY_TIMEOUT_S": "90",
}


@pytest.fixture
def docker_server(
    docker_client: docker.DockerClient, start_server: Callable[..., Server], tmp_path: Path
) -> Server:
    # docker_client first: its clean-up then runs after the servers have stopped
    return start_server(tmp_path / "var", **DOCKER_ENV)


def _exec_python(client: docker.DockerClient, container: str, code: str) -> str:
    result = client.containers.get(container).exec_run(["python3", "-c", code])
    output = result.output
    assert isinstance(output, bytes)
    return output.decode(errors="replace").strip()


def _deploy(api: httpx.Client, nombre: str) -> dict[str, Any]:
    response = api.post("/stores/", json=store_body(api, nombre))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_two_stores_are_isolated_and_secrets_stay_secret(
    docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with docker_server.client() as api:
        a = _deploy(api, "Docker A")
        b = _deploy(api, "Docker B")
        sid_a, sid_b = a["store"]["id"], b["store"]["id"]
        status = api.get(f"/stores/{sid_a}/deploy/status").json()
        responses = [json.dumps(x) for x in (a, b, status, api.get("/stores/").json())]
    assert status["status"] == "running" and status["runtime"] == "docker"
    assert {s["name"] for s in status["services"]} == {"backend", "db"}
    # Docker's first health check is an interval away (10 s): not checked yet, not unhealthy
    assert all(s["healthy"] is not False for s in status["services"])

    # orders: written in A, absent from B
    back_a, back_b = back_of(a), back_of(b)
    order = {"amount": 4200, "currency": "COP", "reference": "solo-A"}
    assert (
        httpx.post(
            back_a + "/api/v1/orders", headers=back_a.headers, json=order, timeout=10
        ).status_code
        == 201
    )
    assert [
        o["reference"] for o in httpx.get(back_a + "/api/v1/orders", headers=back_a.headers).json()
    ] == ["solo-A"]
    assert httpx.get(back_b + "/api/v1/orders", headers=back_b.headers).json() == []
    # each backend requires its own store's key; a rotated key reaches the running container
    assert httpx.get(back_b + "/api/v1/orders", headers=back_a.headers).status_code == 401
    assert httpx.get(back_a + "/api/v1/orders").status_code == 401
    with docker_server.client() as api:
        rotated = api.post(f"/stores/{sid_a}/api-key/rotate").json()["api_key"]
    assert rotated != back_a.key
    wait_for(
        lambda: httpx.get(back_a + "/api/v1/orders", headers=back_a.headers).status_code == 401, 10
    )
    fresh = {"X-Api-Key": rotated}
    assert httpx.get(back_a + "/api/v1/orders", headers=fresh).json()[0]["reference"] == "solo-A"

    # A's backend can neither resolve nor reach B's database
    backend_a = f"sft-{sid_a}-backend-1"
    db_b = docker_client.containers.get(f"sft-{sid_b}-db-1")
    b_ips = [n["IPAddress"] for n in db_b.attrs["NetworkSettings"]["Networks"].values()]
    probe = (
        "import socket\n"
        f"for name in ['sft-{sid_b}-db-1', 'db.sft-{sid_b}_db']:\n"
        "    try: socket.gethostbyname(name); print('RESOLVED', name)\n"
        "    except OSError: print('unresolved')\n"
        f"for ip in {b_ips!r}:\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        "    try: s.connect((ip, 5432)); print('REACHED', ip)\n"
        "    except OSError: print('unreachable')\n"
    )
    output = _exec_python(docker_client, backend_a, probe)
    assert "RESOLVED" not in output and "REACHED" not in output, output
    assert output.count("unreachable") == len(b_ips) >= 1
    # ...while A's backend does reach its own database by name
    own = _exec_python(docker_client, backend_a, "import socket; print(socket.gethostbyname('db'))")
    assert own.count(".") == 3

    # the database port is published on 127.0.0.1 only
    db_a = docker_client.containers.get(f"sft-{sid_a}-db-1")
    bindings = db_a.attrs["HostConfig"]["PortBindings"]["5432/tcp"]
    assert [x["HostIp"] for x in bindings] == ["127.0.0.1"]
    assert bindings[0]["HostPort"] == str(a["deployment"]["ports"]["db_port"])
    listeners = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    db_port = f":{a['deployment']['ports']['db_port']}"
    local = [
        line.split()[3] for line in listeners.splitlines() if line.split()[3].endswith(db_port)
    ]
    assert local and all(addr.startswith("127.0.0.1:") for addr in local), local

    # every object is labelled; the data volume is mounted where the image declares it
    both: Filters = {
        "label": [f"io.storefleet.store_id={sid_a}", "io.storefleet.managed=true", TEST_LABEL]
    }
    assert len(docker_client.containers.list(filters=both)) == 2
    assert len(docker_client.networks.list(filters=both)) == 2  # db (internal), edge
    assert len(docker_client.volumes.list(filters=both)) == 1
    declared = set(
        docker_client.images.get(db_a.attrs["Config"]["Image"]).attrs["Config"]["Volumes"]
    )
    mounts = {m["Destination"]: m for m in db_a.attrs["Mounts"]}
    (data_path,) = declared
    assert (
        mounts[data_path]["Type"] == "volume" and mounts[data_path]["Name"] == f"sft-{sid_a}_dbdata"
    )

    # the generated database password never leaves its secret files
    workspace = docker_server.data_dir / "stores" / sid_a / "deploy"
    password = (workspace / "secrets" / "db_password").read_text()
    assert (
        len(password) >= 32
        and (workspace / "secrets" / "db_password").stat().st_mode & 0o777 == 0o600
    )
    assert password not in (workspace / "compose.yaml").read_text()
    assert all(password not in r for r in responses)
    assert password not in docker_server.log()
    for container in docker_client.containers.list(
        filters={"label": f"io.storefleet.store_id={sid_a}"}
    ):
        config = container.attrs["Config"]
        assert password not in json.dumps(config.get("Env")) + json.dumps(config.get("Cmd"))
        assert password.encode() not in container.logs()
    registry = (docker_server.data_dir / "storefleet.db").read_bytes()
    assert password.encode() not in registry


def test_usage_comes_from_the_engine_api(docker_server: Server) -> None:
    with docker_server.client() as api:
        sid = _deploy(api, "Docker Consumo")["store"]["id"]
        response = api.get(f"/stores/{sid}/usage")
        assert response.status_code == 200, response.text
        usage = response.json()
        services = {s["name"]: s for s in usage["services"]}
        assert set(services) == {"backend", "db"}
        assert all(
            s["memory_bytes"] > 2**20 and s["cpu_percent"] is not None for s in services.values()
        )
        assert usage["disk_bytes"] > 10 * 2**20  # an initialised PostgreSQL data directory
        assert usage["memory_bytes"] == sum(s["memory_bytes"] for s in services.values())
        assert api.get(f"/stores/{sid}/deploy/status").json()["usage"]["disk_bytes"] > 0


def test_killed_backend_turns_status_and_comes_back(
    docker_server: Server, docker_client: docker.DockerClient
) -> None:
    """Docker starts the killed containers again at once, and checks their health only an
    interval (10 s) later: meanwhile the status asks the backend's /health itself, which fails
    until the backend runs again and reaches its database (killed too, so that the stack is
    down for longer than the status window of 0.5 s: a backend back within it may never be
    seen down, as the README says of a status's age)."""
    with docker_server.client() as api:
        sid = _deploy(api, "Docker Kill")["store"]["id"]
        for service in ("db", "backend"):
            container = docker_client.containers.get(f"sft-{sid}-{service}-1")
            os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)
        wait_for(lambda: api.get(f"/stores/{sid}/deploy/status").json()["status"] != "running", 10)
        wait_for(lambda: api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running", 60)


def test_undeploy_keeps_the_volume_and_purge_removes_it(
    docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with docker_server.client() as api:
        deployment = _deploy(api, "Docker Datos")
        sid = deployment["store"]["id"]
        back = back_of(deployment)
        order = {"amount": 1, "currency": "EUR", "reference": "survives"}
        assert (
            httpx.post(
                back + "/api/v1/orders", headers=back.headers, json=order, timeout=10
            ).status_code
            == 201
        )

        assert api.delete(f"/stores/{sid}/deploy").json()["status"] == "undeployed"
        label: Filters = {"label": f"io.storefleet.store_id={sid}"}
        assert docker_client.containers.list(all=True, filters=label) == []
        assert docker_client.networks.list(filters=label) == []
        assert [v.name for v in docker_client.volumes.list(filters=label)] == [f"sft-{sid}_dbdata"]
        status = api.get(f"/stores/{sid}/deploy/status").json()
        assert status["status"] == "not_deployed" and status["db_exists"] is True

        again = api.post(f"/stores/{sid}/deploy").json()
        assert again["status"] == "deployed"
        orders = httpx.get(again["back_link"] + "/api/v1/orders", headers=back.headers).json()
        assert [o["reference"] for o in orders] == ["survives"]

        assert api.delete(f"/stores/{sid}", params={"purge": "true"}).status_code == 204
        assert docker_client.volumes.list(filters=label) == []
        assert docker_client.containers.list(all=True, filters=label) == []


def test_bad_stack_template_is_refused_at_start(tmp_path: Path) -> None:
    template = tmp_path / "stack.yaml"
    template.write_text("services:\n  backend:\n    image: x\n    privileged: true\n")
    server = Server(
        tmp_path / "var",
        {
            "STOREFLEET_RUNTIME": "docker",
            "STOREFLEET_EDGE": "none",
            "STOREFLEET_STACK_TEMPLATE": str(template),
        },
    )
    with pytest.raises(RuntimeError, match="privileged"):
        server.start(timeout_s=30)


FAST = {
    "STOREFLEET_RECONCILE_INTERVAL_S": "0.5",
    "STOREFLEET_REPAIR_BACKOFF_INITIAL_S": "1",
    "STOREFLEET_STORE_LOCK_TTL_S": "2",
}


@pytest.fixture
def fast_docker_server(
    docker_client: docker.DockerClient, start_server: Callable[..., Server], tmp_path: Path
) -> Server:
    return start_server(tmp_path / "var", **DOCKER_ENV, **FAST)


def _status(api: httpx.Client, sid: str) -> str:
    return str(api.get(f"/stores/{sid}/deploy/status").json()["status"])


def test_removed_database_container_is_recreated_with_its_rows(
    fast_docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with fast_docker_server.client() as api:
        deployment = _deploy(api, "Docker Repara")
        sid, back = deployment["store"]["id"], back_of(deployment)
        for i in range(3):
            order = {"amount": i, "currency": "EUR", "reference": f"row-{i}"}
            assert (
                httpx.post(
                    back + "/api/v1/orders", headers=back.headers, json=order, timeout=10
                ).status_code
                == 201
            )
        old = docker_client.containers.get(f"sft-{sid}-db-1")
        old.remove(force=True, v=True)  # its anonymous volume too (the rows are in the named one)
        wait_for(lambda: _status(api, sid) != "running", 5)
        wait_for(lambda: _status(api, sid) == "running", 90)
        new = docker_client.containers.get(f"sft-{sid}-db-1")
        assert new.id != old.id
        assert {m["Name"] for m in new.attrs["Mounts"] if m["Type"] == "volume"} == {
            f"sft-{sid}_dbdata"
        }
        wait_for(
            lambda: (
                httpx.get(back + "/api/v1/orders", headers=back.headers, timeout=5).status_code
                == 200
            ),
            30,
        )
        rows = [
            o["reference"] for o in httpx.get(back + "/api/v1/orders", headers=back.headers).json()
        ]
        assert rows == ["row-0", "row-1", "row-2"]
        assert "repair" in [o["kind"] for o in api.get(f"/stores/{sid}/operations").json()]


def test_docker_killed_backend_is_started_again(
    fast_docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with fast_docker_server.client() as api:
        sid = _deploy(api, "Docker Matada")["store"]["id"]
        docker_client.containers.get(f"sft-{sid}-backend-1").kill()  # no restart policy applies
        wait_for(lambda: _status(api, sid) != "running", 5)
        wait_for(lambda: _status(api, sid) == "running", 90)


def test_stores_come_back_after_a_docker_daemon_restart(
    fast_docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with fast_docker_server.client() as api:
        deployment = _deploy(api, "Docker Reinicio")
        sid, back = deployment["store"]["id"], back_of(deployment)
        order = {"amount": 7, "currency": "EUR", "reference": "before-restart"}
        assert (
            httpx.post(
                back + "/api/v1/orders", headers=back.headers, json=order, timeout=10
            ).status_code
            == 201
        )

        # the host's engine (the Swarm lab's engines are dockerd processes too)
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        repo = REPO
        try:
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60)
            down = api.get(f"/stores/{sid}/deploy/status").json()
            assert down["status"] == "error" and "Docker" in down["last_error"], down
        finally:
            # whatever happened above, the machine gets its Docker engine back
            subprocess.run(
                ["bash", str(repo / "scripts" / "install-docker.sh")], check=True, timeout=180
            )
        wait_for(lambda: _status(api, sid) == "running", 120)
        rows = [
            o["reference"]
            for o in httpx.get(back + "/api/v1/orders", headers=back.headers, timeout=10).json()
        ]
        assert rows == ["before-restart"]


@pytest.mark.parametrize("fault", ["deploy:apply", "deploy:lease_ports", "undeploy:remove_stack"])
def test_killed_control_plane_converges_on_docker(
    docker_client: docker.DockerClient,
    start_server: Callable[..., Server],
    tmp_path: Path,
    fault: str,
) -> None:
    data_dir = tmp_path / "var"
    env = {**DOCKER_ENV, **FAST}
    first = start_server(data_dir, STOREFLEET_FAULT_AFTER=fault, **env)
    with first.client() as api:
        deploy_first = fault.startswith("undeploy")
        created = api.post(
            f"/stores/?deploy={str(deploy_first).lower()}", json=store_body(api, "Caida D")
        )
        sid = created.json()["store"]["id"]
        with pytest.raises(httpx.HTTPError):
            if deploy_first:
                api.delete(f"/stores/{sid}/deploy")
            else:
                api.post(f"/stores/{sid}/deploy")
    assert first.proc is not None and first.proc.wait(30) == -signal.SIGKILL
    second = start_server(data_dir, STOREFLEET_PORT_RANGE=first.env["STOREFLEET_PORT_RANGE"], **env)
    label: Filters = {"label": f"io.storefleet.store_id={sid}"}
    with second.client() as api:
        wait_for(lambda: _status(api, sid) in ("running", "not_deployed"), 120)
        status = api.get(f"/stores/{sid}/deploy/status").json()
        containers = docker_client.containers.list(all=True, filters=label)
        networks = docker_client.networks.list(filters=label)
        volumes = docker_client.volumes.list(filters=label)
        if status["status"] == "running":
            assert len(containers) == 2 and all(c.status == "running" for c in containers)
            assert len(networks) == 2 and len(volumes) == 1
            # finished by the next control plane: at its plan's CPU limit like any other
            assert {c.attrs["HostConfig"]["NanoCpus"] for c in containers} == {500_000_000}
        else:
            assert containers == [] and networks == [] and status["ports"] is None
            # a volume exists only if the stack had started, and it is never lost
            assert len(volumes) == (0 if fault == "deploy:lease_ports" else 1)
        if fault == "undeploy:remove_stack":
            assert status["status"] == "not_deployed" and len(volumes) == 1


def test_crash_looping_backend_shows_error_and_backs_off(
    docker_client: docker.DockerClient, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    # an operator template whose backend crashes while the file flags/crash exists
    from storefleet.runtime.docker.template import default_template

    template = tmp_path / "stack.yaml"
    anchor = "    networks: [db, edge]\n    depends_on:\n"  # the backend's (not the db's)
    assert default_template().count(anchor) == 1
    text = default_template().replace(
        anchor,
        "    volumes: ['./flags:/flags:ro']\n"
        "    entrypoint: ['sh', '-c', 'test -e /flags/crash && exit 3; "
        "exec python3 -m storefleet_backend']\n" + anchor,
    )
    template.write_text(text)
    server = start_server(
        tmp_path / "var",
        **DOCKER_ENV,
        STOREFLEET_STACK_TEMPLATE=str(template),
        STOREFLEET_CRASHLOOP_ERROR_AFTER="3",
    )
    with server.client() as api:
        sid = _deploy(api, "Docker Bucle")["store"]["id"]
        flags = server.data_dir / "stores" / sid / "deploy" / "flags"
        flags.mkdir(exist_ok=True)
        (flags / "crash").write_text("1")
        backend = docker_client.containers.get(f"sft-{sid}-backend-1")
        os.kill(int(backend.attrs["State"]["Pid"]), signal.SIGKILL)
        wait_for(lambda: _status(api, sid) == "error", 60)
        status = api.get(f"/stores/{sid}/deploy/status").json()
        # Docker reports the last exit code; mid-restart it may already be reset
        assert "backend keeps crashing: exited with code" in status["last_error"], status
        assert re.search(r"restarted \d+ times", status["last_error"])
        assert backend.id is not None
        before = docker_client.api.inspect_container(backend.id)["RestartCount"]
        time.sleep(3)
        after = docker_client.api.inspect_container(backend.id)["RestartCount"]
        assert after - before <= 3  # growing back-off, not a hot loop
        (flags / "crash").unlink()
        wait_for(lambda: _status(api, sid) == "running", 120)


# -- day-2 operations on Docker -----------------------------------------------------------


def _backend(client: docker.DockerClient, sid: str) -> Any:
    return client.containers.get(f"sft-{sid}-backend-1")


def _limits(client: docker.DockerClient, sid: str) -> dict[str, tuple[int, int]]:
    """(CPU limit in nano CPUs, memory limit in bytes) of each of the store's containers."""
    found = {}
    for service in ("backend", "db"):
        host = client.containers.get(f"sft-{sid}-{service}-1").attrs["HostConfig"]
        found[service] = (host["NanoCpus"], host["Memory"])
    return found


def test_docker_stop_start_and_plan_limits(
    docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with docker_server.client() as api:
        deployment = _deploy(api, "Docker Pausa")
        sid, back = deployment["store"]["id"], back_of(deployment)
        add_order(back, "kept")
        basic = (500_000_000, 256 * 2**20)
        assert _limits(docker_client, sid) == {"backend": basic, "db": basic}
        assert api.post(f"/stores/{sid}/stop").json()["status"] == "stopped"
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "stopped"
        assert _backend(docker_client, sid).status == "exited"
        assert api.post(f"/stores/{sid}/start").json()["status"] == "started"
        assert orders(back) == ["kept"]
        assert _limits(docker_client, sid) == {"backend": basic, "db": basic}
        patched = api.patch(f"/stores/{sid}", json={"plan": "premium"})
        assert patched.status_code == 200, patched.text
        premium = (1_000_000_000, 512 * 2**20)
        assert _limits(docker_client, sid) == {"backend": premium, "db": premium}
        assert orders(back) == ["kept"]
        assert api.post(f"/stores/{sid}/restart").json()["status"] == "restarted"
        assert orders(back) == ["kept"]


@pytest.fixture
def extra_versions(docker_client: docker.DockerClient) -> Iterator[None]:
    """Two more tags of the backend image: 0.2.0 (the same backend) and 9.9.9-broken (an image
    without Python: its backend exits at once and never gets healthy). Removed afterwards."""
    docker_client.images.get("storefleet/store-backend:0.1.0").tag(
        "storefleet/store-backend", "0.2.0"
    )
    docker_client.images.get("storefleet/debian-base:bookworm").tag(
        "storefleet/store-backend", "9.9.9-broken"
    )
    yield
    for tag in ("0.2.0", "9.9.9-broken"):
        docker_client.images.remove(f"storefleet/store-backend:{tag}", noprune=True)


def test_docker_upgrade_and_automatic_rollback(
    extra_versions: None, docker_server: Server, docker_client: docker.DockerClient
) -> None:
    with docker_server.client() as api:
        available = api.get("/versions").json()["available"]
        assert {"0.1.0", "0.2.0", "9.9.9-broken"} <= set(available)
        deployment = _deploy(api, "Docker Version")
        sid, back = deployment["store"]["id"], back_of(deployment)
        add_order(back, "survives")
        upgraded = api.post(f"/stores/{sid}/upgrade", json={"version": "0.2.0"})
        assert upgraded.status_code == 200, upgraded.text
        assert _backend(docker_client, sid).attrs["Config"]["Image"].endswith(":0.2.0")
        assert httpx.get(back + "/health").json()["version"] == "0.2.0"
        assert orders(back) == ["survives"]
        broken = api.post(f"/stores/{sid}/upgrade", json={"version": "9.9.9-broken"})
        assert broken.status_code in (502, 504), broken.text
        assert "rolled back to 0.2.0" in broken.json()["detail"]
        assert _backend(docker_client, sid).attrs["Config"]["Image"].endswith(":0.2.0")
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        assert orders(back) == ["survives"]


def test_docker_backup_restore_logs(docker_server: Server) -> None:
    with docker_server.client() as api:
        deployment = _deploy(api, "Docker Copia")
        sid, back = deployment["store"]["id"], back_of(deployment)
        for i in range(4):
            add_order(back, f"o{i}")
        created = api.post(f"/stores/{sid}/backups")
        assert created.status_code == 201, created.text
        backup = created.json()
        assert backup["format"] == "pg_dump-custom" and backup["size_bytes"] > 0
        for i in range(4, 9):
            add_order(back, f"o{i}")
        restored = api.post(f"/stores/{sid}/backups/{backup['id']}/restore")
        assert restored.status_code == 200, restored.text
        assert sorted(orders(back)) == ["o0", "o1", "o2", "o3"]
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "running"
        path = next((docker_server.data_dir / "backups" / sid).glob(f"{backup['id']}.*"))
        path.write_bytes(path.read_bytes()[:-10] + b"corrupted!")
        refused = api.post(f"/stores/{sid}/backups/{backup['id']}/restore")
        assert refused.status_code == 409 and refused.json()["code"] == "backup_corrupted"
        db_logs = api.get(f"/stores/{sid}/logs", params={"service": "db", "tail": 200}).text
        assert "database system is ready to accept connections" in db_logs
        backend_logs = api.get(f"/stores/{sid}/logs", params={"tail": 200}).text
        assert "GET /api/v1/orders" in backend_logs
        password = docker_server.data_dir / "stores" / sid / "deploy" / "secrets" / "db_password"
        assert password.read_text() not in db_logs + backend_logs


def test_ports_are_probed_on_the_engine_that_publishes_them(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A remote engine's ports are not this host's: the driver asks the engine what its
    containers publish (here the local engine stands in for a remote one)."""
    taken = free_port()
    key, value = TEST_LABEL.split("=")
    container = docker_client.containers.run(
        Settings().postgres_image,
        ["sleep", "300"],  # only holds the port (no database needed)
        entrypoint=[],
        detach=True,
        labels={key: value},
        ports={"5432/tcp": ("127.0.0.1", taken)},
    )
    try:
        name = container.id or ""
        wait_for(lambda: docker_client.containers.get(name).status == "running", 30)
        remote = DockerDriver(
            tmp_path,
            backend_image="unused",
            postgres_image="unused",
            docker_host="ssh://engine.invalid",
        )
        remote._client = docker_client  # the engine "over there"
        assert remote.port_is_free(taken) is False
        assert remote.port_is_free(free_port()) is True
        local = DockerDriver(tmp_path, backend_image="unused", postgres_image="unused")
        assert local.port_is_free(taken) is False  # a bind probe here sees it too
    finally:
        container.remove(force=True)

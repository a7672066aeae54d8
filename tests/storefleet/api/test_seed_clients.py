"""The seed's own clients, unchanged, against the embedded runtime: its curl examples script,
its create-and-deploy script (three plans, a refused duplicate) and its Python test client
(one-call create-and-deploy, `containers_running` as a boolean, countries by `nombre`)."""

from __future__ import annotations

import json
import os
import subprocess

import httpx

from helpers import Server

CURL_EXAMPLES = r"""
set -euo pipefail
H="Authorization: Bearer $TOKEN"
ES=$(curl -sf -H "$H" "$API/countries" | python3 -c '
import json, sys
print(next(c["id"] for c in json.load(sys.stdin) if c["nombre"] == "España"))')
BODY="{\"nombre\": \"Ejemplo Curl\", \"country_id\": \"$ES\", \"tokens_disponibles\": 100,"
BODY="$BODY \"plan\": \"basic\"}"
STORE=$(curl -sf -H "$H" -X POST "$API/stores/?deploy=false" -H "Content-Type: application/json" \
  -d "$BODY" | python3 -c 'import json, sys; print(json.load(sys.stdin)["store"]["id"])')
echo "deploy=$(curl -sf -H "$H" -X POST "$API/stores/$STORE/deploy")"
echo "again=$(curl -sf -H "$H" -X POST "$API/stores/$STORE/deploy")"
echo "status=$(curl -sf -H "$H" "$API/stores/$STORE/deploy/status")"
echo "undeploy=$(curl -sf -H "$H" -X DELETE "$API/stores/$STORE/deploy")"
echo "after=$(curl -sf -H "$H" "$API/stores/$STORE/deploy/status")"
"""


def _answers(output: str) -> dict[str, dict[str, object]]:
    return {
        line.split("=", 1)[0]: json.loads(line.split("=", 1)[1])
        for line in output.splitlines()
        if "=" in line
    }


def test_the_curl_examples_script(server: Server) -> None:
    env = {**os.environ, "API": server.url + "/api/v1", "TOKEN": server.token}
    done = subprocess.run(
        ["bash", "-c", CURL_EXAMPLES], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = _answers(done.stdout)
    assert seen["deploy"]["status"] == "deployed"
    assert seen["again"]["status"] == "already_deployed"
    assert seen["status"]["status"] == "running" and seen["status"]["containers_running"] is True
    assert seen["undeploy"]["status"] == "undeployed"
    assert seen["after"]["status"] == "not_deployed"
    assert seen["after"]["containers_running"] is False


def test_the_create_and_deploy_script(server: Server) -> None:
    with server.client() as api:
        countries = api.get("/countries").json()
        mexico = next(c for c in countries if c["nombre"] == "México")
        assert mexico["code"] == "MX" and mexico["name"] == "Mexico"
        for plan in ("basic", "premium", "enterprise"):
            body = {
                "nombre": f"Tienda {plan}",
                "country_id": mexico["id"],
                "tokens_disponibles": 10,
                "plan": plan,
            }
            created = api.post("/stores/", json=body)
            assert created.status_code == 201, created.text
            assert created.json()["deployment"]["status"] == "deployed"
        duplicate = api.post("/stores/", json={**body, "nombre": "TIENDA BASIC"})
        assert duplicate.status_code == 409 and duplicate.json()["code"] == "duplicate_nombre"


def test_the_python_test_clients_one_call_create_and_deploy(server: Server) -> None:
    api = server.url + "/api/v1"
    headers = {"Authorization": f"Bearer {server.token}"}
    countries = httpx.get(f"{api}/countries", headers=headers).json()
    spain = next(c["id"] for c in countries if c["nombre"] == "España")
    body = {
        "nombre": "Prueba Automática",
        "country_id": spain,
        "tokens_disponibles": 5,
        "plan": "premium",
    }
    response = httpx.post(f"{api}/stores/deploy", json=body, headers=headers, timeout=120)
    assert response.status_code == 201, response.text
    created = response.json()
    assert {"message", "store", "deployment"} <= set(created)
    store_id = created["store"]["id"]
    assert created["deployment"]["status"] == "deployed"
    status = httpx.get(f"{api}/stores/{store_id}/deploy/status", headers=headers).json()
    assert status["containers_running"] is True  # the client compares with True
    assert httpx.get(created["deployment"]["back_link"] + "/health").status_code == 200
    again = httpx.post(f"{api}/stores/deploy", json=body, headers=headers, timeout=120)
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]
    # it does not shadow a store's own deploy path, and it follows POST /stores/'s roles
    assert httpx.post(f"{api}/stores/{store_id}/deploy", headers=headers).json()["status"] == (
        "already_deployed"
    )
    with httpx.Client(base_url=api, headers=headers) as admin:
        token = admin.post("/tokens", json={"role": "store", "store_id": store_id}).json()
        audit = admin.get("/audit", params={"limit": 50}).json()
    assert any(e["action"] == "POST /api/v1/stores/deploy" for e in audit)
    own = {"Authorization": f"Bearer {token['token']}"}
    other = {**body, "nombre": "Desde Token De Tienda"}
    assert httpx.post(f"{api}/stores/deploy", json=other, headers=own).status_code == 403


def test_the_store_list_pages_when_asked_and_stays_whole_for_seed_clients(
    server: Server,
) -> None:
    from helpers import store_body

    with server.client() as api:
        for i in range(3):
            api.post("/stores/?deploy=false", json=store_body(api, f"Lista {i}")).raise_for_status()
        whole = api.get("/stores/")
        assert len(whole.json()) == 3 and whole.headers["x-total-count"] == "3"
        first = api.get("/stores/", params={"limit": 2})
        rest = api.get("/stores/", params={"limit": 2, "offset": 2})
        assert [s["id"] for s in first.json() + rest.json()] == [s["id"] for s in whole.json()]
        assert first.headers["x-total-count"] == rest.headers["x-total-count"] == "3"
        assert api.get("/stores/", params={"limit": 0}).status_code == 422

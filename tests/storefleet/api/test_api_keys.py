"""Each store's API key, with a real control plane and real store backends (process runtime)."""

from __future__ import annotations

import httpx

from helpers import Server, store_body, wait_for


def test_a_stores_key_is_shown_readable_by_its_token_and_rotatable(server: Server) -> None:
    with server.client() as api:
        created = api.post("/stores/", json=store_body(api, "Con Llave")).json()
        other = api.post("/stores/?deploy=false", json=store_body(api, "Otra")).json()
        sid, key = created["store"]["id"], created["api_key"]
        back = created["deployment"]["back_link"]
        assert len(key) >= 32 and other["api_key"] and other["api_key"] != key
        token = api.post("/tokens", json={"role": "store", "store_id": sid}).json()["token"]
        assert api.get(f"/stores/{sid}/api-key").json() == {"store_id": sid, "api_key": key}
        # the key is no part of the store's other views
        for path in (f"/stores/{sid}", f"/stores/{sid}/deploy/status", "/stores/"):
            assert key not in api.get(path).text
    orders = back + "/api/v1/orders"
    assert httpx.get(orders).status_code == 401
    assert httpx.get(orders, headers={"X-Api-Key": key}).status_code == 200
    with server.client(token) as own:
        assert own.get(f"/stores/{sid}/api-key").json()["api_key"] == key
        assert own.get(f"/stores/{other['store']['id']}/api-key").status_code == 404
        rotated = own.post(f"/stores/{sid}/api-key/rotate")
        assert rotated.status_code == 200
        new = rotated.json()["api_key"]
    assert new != key
    wait_for(lambda: httpx.get(orders, headers={"X-Api-Key": key}).status_code == 401, 10)
    assert httpx.get(orders, headers={"X-Api-Key": new}).status_code == 200
    # the key never shows in the store's logs, nor in the control plane's
    httpx.get(orders + f"?api_key={new}", headers={"X-Api-Key": new})
    with server.client() as api:
        wait_for(lambda: "api_key=" in api.get(f"/stores/{sid}/logs").text, 10)
        assert new not in api.get(f"/stores/{sid}/logs", params={"tail": 1000}).text
    assert key not in server.log() and new not in server.log()

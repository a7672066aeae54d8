"""Hostile input to every endpoint: a clear 4xx or inert data, never a 5xx, nothing executed,
nothing odd on disk or in the registry."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from helpers import Server, store_body

CANARY = Path("/tmp/storefleet-pwned")
HOSTILE_TEXT = [
    "; rm -rf / #",
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    f"| touch {CANARY}",
    f"&& touch {CANARY}",
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "a\nb",
    "a\r\nX-Injected: 1",
    "nul\x00byte",
    "x" * 10_000,
    "${HOME}",
    "${PATH:-x}",
    "{{7*7}}",
    "key: value\nprivileged: true",
    "- item\n- other",
    "]}{[",
    '{"a":',
    "'; DROP TABLE stores; --",
    "<script>alert(1)</script>",
    "\uff34\uff49\uff45\uff4e\uff44\uff41",  # full-width homoglyphs
    "\u0422ienda",  # Cyrillic capital TE
    "\u202eevil",  # right-to-left override
    "%00%2e%2e%2f",
    "*",
    "\\",
    "caf\u00e9\u0301",
    " ",
]
HOSTILE_NUMBERS: list[Any] = [-1, 10**30, -(10**30), 1e308, 1.5, True, None, [], {}, "0x1F", "NaN"]
HOSTILE_IDS = [*HOSTILE_TEXT[:20], "-1", "0", str(10**30), "00000000-0000-0000-0000-00000000000g"]


def _ok(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("detail"), str) and body["detail"], body


def test_hostile_values_on_every_endpoint(server: Server) -> None:
    CANARY.unlink(missing_ok=True)
    with server.client() as api:
        schema = httpx.get(server.url + "/openapi.json").json()
        real = api.post("/stores/?deploy=false", json=store_body(api, "Real")).json()["store"]["id"]
        accepted: dict[str, str] = {}
        calls = 0

        # 1. every path with hostile path parameters and hostile query parameters
        for path, methods in schema["paths"].items():
            for method, spec in methods.items():
                params = [p["name"] for p in spec.get("parameters", []) if p["in"] == "query"]
                # the event stream follows forever unless told not to
                ends = {"follow": "false"} if path == "/api/v1/events" else {}
                for value in HOSTILE_IDS:
                    url = re.sub(r"\{[^}]+\}", quote(value, safe=""), path)
                    _ok(api.request(method, url.removeprefix("/api/v1"), params=ends))
                    calls += 1
                for name in params:
                    for value in HOSTILE_TEXT[:12]:
                        url = re.sub(r"\{[^}]+\}", real, path).removeprefix("/api/v1")
                        _ok(api.request(method, url, params={**ends, name: value}))
                        calls += 1

        # 2. every body field of the store endpoints with hostile values
        base = store_body(api, "Base")
        for field in base:
            for value in [*HOSTILE_TEXT, *HOSTILE_NUMBERS]:
                body = {**base, field: value}
                if field != "nombre":
                    body["nombre"] = f"n-{uuid.uuid4().hex[:8]}"
                response = api.post("/stores/?deploy=false", json=body)
                _ok(response)
                calls += 1
                if response.status_code == 201:
                    assert field == "nombre", (field, value)
                    accepted[response.json()["store"]["id"]] = body["nombre"]
                _ok(api.patch(f"/stores/{real}", json={field: value}))
                calls += 1

        # 3. malformed and oversized bodies
        for raw in [
            b"",
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe\x00garbage",
            b"[" * 100_000,
            b'{"nombre": "' + b"x" * 70_000 + b'"}',
            json.dumps({"nombre": {"$gt": ""}}).encode(),
            b'{"nombre": "a", "nombre": "b"}',
        ]:
            for method, url in [("POST", "/stores/"), ("PATCH", f"/stores/{real}")]:
                _ok(
                    api.request(
                        method, url, content=raw, headers={"content-type": "application/json"}
                    )
                )
                calls += 1
        assert calls > 700  # every path x 24 ids, every query x 12, 4 fields x 39, 18 raw

        # accepted names are kept verbatim, and deploying one derives every name from the id
        for sid, nombre in accepted.items():
            assert api.get(f"/stores/{sid}").json()["nombre"] == nombre.strip()
        tricky = next(s for s, n in accepted.items() if "$(" in n or "../" in n)
        deployed = api.post(f"/stores/{tricky}/deploy")
        assert deployed.status_code == 200, deployed.text
        assert httpx.get(deployed.json()["back_link"] + "/health").status_code == 200

    # nothing was executed, and nothing but server-made names reached the disk
    assert not CANARY.exists()
    allowed = re.compile(r"^[0-9a-f-]{36}$|^[A-Za-z0-9._-]+$")
    for path in server.data_dir.rglob("*"):
        assert allowed.match(path.name), path
    assert accepted, "no hostile-but-legitimate name was accepted"

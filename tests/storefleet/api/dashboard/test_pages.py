"""The dashboard over plain HTTP against a real control plane: sign-in and its cookie, CSRF,
security headers, redirects, audit, the live stream, the vendored files."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from helpers import Server, store_body

STATIC = Path(__file__).parents[4] / "src/storefleet/api/dashboard/static"


def _login_form(client: httpx.Client, next_path: str = "/") -> str:
    page = client.get("/login", params={"next": next_path})
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


@contextmanager
def _signed_in(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        csrf = _login_form(client)
        answer = client.post("/login", data={"token": server.token, "csrf": csrf})
        assert answer.status_code == 303, answer.text
        yield client


def _csrf(client: httpx.Client) -> str:
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', client.get("/ui/stores").text)
    assert found is not None
    return found.group(1)


def test_signed_out_pages_redirect_to_login_and_htmx_is_told_to(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        answer = client.get("/")
        assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2F"
        answer = client.get("/ui/stores", headers={"HX-Request": "true"})
        assert answer.status_code == 401
        assert answer.headers["hx-redirect"] == "/login?next=%2Fui%2Fstores"
        assert client.post("/ui/stores").status_code == 401
        # a bearer token opens the API, not the dashboard; the cookie never opens the API
        bearer = {"Authorization": f"Bearer {server.token}"}
        assert client.get("/ui/stores", headers=bearer).status_code == 303
    with _signed_in(server) as client:
        assert client.get("/api/v1/stores/").status_code == 401


def test_the_session_cookie_and_the_security_headers(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        csrf = _login_form(client)
        answer = client.post("/login", data={"token": server.token, "csrf": csrf})
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("sf_session=")
        for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age="):
            assert flag in cookie, cookie
        assert "Secure" not in cookie  # plain HTTP here
        for path in ("/login", "/", "/ui/stores", "/ui/static/app.js"):
            headers = client.get(path).headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert "frame-ancestors 'none'" in csp
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "same-origin"
            assert headers["x-content-type-options"] == "nosniff"
        page = client.get("/ui/stores").text
        assert "<script>" not in page and " on" + "click=" not in page  # no inline script
        assert re.findall(r"<script src=\"([^\"]+)\"", page) == [
            "/ui/static/vendor/htmx-2.0.11.min.js",
            "/ui/static/vendor/htmx-ext-sse-2.2.4.js",
            "/ui/static/app.js",
        ]
    # behind a TLS proxy on this host (X-Forwarded-Proto: https): the cookie is Secure
    with httpx.Client(base_url=server.url, headers={"X-Forwarded-Proto": "https"}) as client:
        form = client.get("/login")
        assert "Secure" in form.headers["set-cookie"]
        csrf = form.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        answer = client.post(
            "/login",
            data={"token": server.token, "csrf": csrf},
            headers={"Cookie": f"sf_login={csrf}"},  # httpx keeps Secure cookies off http
        )
        assert answer.status_code == 303
        assert "Secure" in answer.headers["set-cookie"]


def test_csrf_guards_every_change_and_signing_out_ends_the_session(server: Server) -> None:
    with _signed_in(server) as client, server.client() as api:
        body = {**store_body(api, "Con CSRF"), "tokens_disponibles": "3"}
        assert client.post("/ui/stores", data=body).status_code == 403
        wrong = client.post("/ui/stores", data=body, headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403 and wrong.json()["code"] == "csrf"
        csrf = _csrf(client)
        made = client.post("/ui/stores", data=body, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201 and made.headers["hx-trigger"] == "store-created"
        audit = api.get("/audit", params={"outcome": "denied"}).json()
        assert sum(e["action"] == "POST /ui/stores" for e in audit) == 2
        assert client.post("/logout").status_code == 403  # signing out is a change too
        out = client.post("/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert client.get("/ui/stores").status_code == 303


def test_sign_in_refuses_bad_tokens_forged_forms_and_floods(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(
        STOREFLEET_AUTH_FAILURES_PER_MINUTE="1", STOREFLEET_AUTH_FAILURES_BURST="3"
    )
    with httpx.Client(base_url=server.url) as client:
        csrf = _login_form(client)
        # no form token (a page elsewhere posting its own form): refused
        assert client.post("/login", data={"token": server.token}).status_code == 403
        for _ in range(3):
            bad = client.post("/login", data={"token": "sf_" + "x" * 40, "csrf": csrf})
            assert bad.status_code == 401 and "not valid" in bad.text
        flooded = client.post("/login", data={"token": server.token, "csrf": csrf})
        assert flooded.status_code == 429 and "too many" in flooded.text
        assert "sf_session" not in flooded.headers.get("set-cookie", "")


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil"])
def test_no_open_redirect_after_sign_in(server: Server, target: str) -> None:
    with httpx.Client(base_url=server.url) as client:
        csrf = _login_form(client)
        answer = client.post("/login", data={"token": server.token, "csrf": csrf, "next": target})
        assert answer.status_code == 303 and answer.headers["location"] == "/"
        csrf = _login_form(client)
        answer = client.post(
            "/login", data={"token": server.token, "csrf": csrf, "next": "/ui/fleet"}
        )
        assert answer.headers["location"] == "/ui/fleet"


def test_errors_are_html_messages(server: Server) -> None:
    with _signed_in(server) as client:
        missing = client.get("/ui/stores/00000000-0000-4000-8000-000000000000")
        assert missing.status_code == 404 and "does not exist" in missing.text
        assert missing.headers["content-type"].startswith("text/html")
        fragment = client.get(
            "/ui/stores/00000000-0000-4000-8000-000000000000/status",
            headers={"HX-Request": "true"},
        )
        assert fragment.status_code == 404 and fragment.headers["hx-retarget"] == "#flash"
        assert client.get("/ui/stores?page=0").status_code == 422


def test_the_live_stream_sends_status_badges_of_changed_stores(server: Server) -> None:
    with server.client() as api:
        sid = api.post("/stores/", params={"deploy": "false"}, json=store_body(api, "Viva")).json()[
            "store"
        ]["id"]
    events: list[tuple[str, str]] = []
    with _signed_in(server) as client:
        opened = threading.Event()

        def read() -> None:
            with client.stream("GET", "/ui/live", timeout=30) as stream:
                name = ""
                opened.set()
                for line in stream.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: ") and name.startswith("st-"):
                        events.append((name, line.removeprefix("data: ")))
                        if "running" in line:
                            return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert opened.wait(10)
        time.sleep(0.3)
        with server.client() as api:
            assert api.post(f"/stores/{sid}/deploy").status_code == 200
        reader.join(30)
    words = [re.sub(r"<[^>]+>", "", data) for name, data in events if name == f"st-{sid}"]
    assert words[-1] == "running" and "deploying" in words, events


def test_vendored_files_are_the_pinned_releases() -> None:
    table = (STATIC / "vendor/VENDORED.md").read_text()
    for name, digest in re.findall(r"\| (\S+\.js) \| [^|]+ \| [^|]+ \| ([0-9a-f]{64}) \|", table):
        assert hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest() == digest
    assert len(re.findall(r"\.js \|", table)) == 2


def test_a_hostname_the_edge_does_not_serve_is_not_linked(server: Server) -> None:
    """With the edge off (the process runtime's default) the store's hostname is reserved, not
    served: shown, never linked."""
    with server.client() as api:
        body = api.post("/stores/", json=store_body(api, "Sin borde")).json()
    host = body["store"]["hostname"]
    with _signed_in(server) as client:
        page = client.get(f"/ui/stores/{body['store']['id']}").text
    assert f"<code>{host}</code>" in page and "reserved: served once the edge is on" in page
    assert f'href="https://{host}' not in page

"""The dashboard in a real headless browser (Debian's chromium, Playwright) against a real
control plane and real stores (process runtime)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from helpers import Server, chromium, sign_in, store_body, watch_dialogs

HOSTILE = ("<img src=x onerror=alert(1)>", '"><script>alert(1)</script>')
TIMEOUT_MS = 30_000


def _record_badges(page: Page) -> None:
    """Record every status badge text the stores table shows, in order, per row (a page
    reload would lose the record: the test reads it back at the end)."""
    page.evaluate(
        """() => {
          window.__badges = {};
          const note = () => document.querySelectorAll('tr[id^="row-"]').forEach(row => {
            const text = row.querySelector('.status .badge')?.textContent?.trim();
            const seen = (window.__badges[row.id] ||= []);
            if (text && seen[seen.length - 1] !== text) seen.push(text);
          });
          new MutationObserver(note).observe(document.body,
            {subtree: true, childList: true, characterData: true});
          note();
        }"""
    )


def _badges(page: Page, store_id: str) -> list[str]:
    found: dict[str, list[str]] = page.evaluate("() => window.__badges")
    return found.get(f"row-{store_id}", [])


def _store_id_by_name(api: httpx.Client, name: str) -> str:
    return str(next(s["id"] for s in api.get("/stores/").json() if s["nombre"] == name))


def test_operator_flow_live_without_reloads(server: Server) -> None:
    """Sign in; create a store and watch its row go deploying -> running without a reload;
    stop and start it; its logs come; a backup is made and listed; sign out."""
    name = "Tienda Navegador"
    with chromium() as browser, server.client() as api:
        page = browser.new_page()
        dialogs = watch_dialogs(page)
        sign_in(page, server.url, server.token)
        expect(page.locator("h1")).to_have_text("Overview")

        page.goto(server.url + "/ui/stores")
        _record_badges(page)
        page.click("#create summary")
        page.fill("#create-form input[name=nombre]", name)
        page.select_option("#create-form select[name=country_id]", label="Spain")
        page.fill("#create-form input[name=tokens_disponibles]", "25")
        page.click("#create-form button[type=submit]")
        expect(page.locator("#create-form .notice")).to_contain_text(name)
        row = page.locator("tr", has_text=name)
        expect(row).to_have_count(1, timeout=TIMEOUT_MS)
        expect(row.locator(".status .badge")).to_have_text("running", timeout=TIMEOUT_MS)
        sid = _store_id_by_name(api, name)
        assert _badges(page, sid)[-2:] == ["deploying", "running"], _badges(page, sid)
        assert page.evaluate("() => typeof window.__badges") == "object"  # never reloaded

        page.click(f"a[href='/ui/stores/{sid}']")
        expect(page.locator("h1")).to_have_text(name)
        status = page.locator("#status-word .badge")
        expect(status).to_have_text("running")
        page.click("button[data-action=stop]")
        expect(page.locator("#op-area .operation")).to_contain_text("stop")
        expect(status).to_have_text("stopped", timeout=TIMEOUT_MS)
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "stopped"
        page.click("button[data-action=start]")
        expect(status).to_have_text("running", timeout=TIMEOUT_MS)

        # logs: the backend's lines, followed live (a request to it adds one)
        back_link = api.get(f"/stores/{sid}").json()["back_link"]
        httpx.get(back_link + "/health", timeout=10)
        expect(page.locator("#log-lines .line").first).to_be_visible(timeout=TIMEOUT_MS)

        page.click("#backups-card button")
        backup = page.locator("#backups tr.backup")
        expect(backup).to_have_count(1, timeout=TIMEOUT_MS)
        listed = api.get(f"/stores/{sid}/backups").json()
        assert len(listed) == 1
        expect(backup.locator("code.sha")).to_have_attribute("title", listed[0]["sha256"])
        with page.expect_download() as download:
            backup.locator("a[download]").click()
        assert download.value.suggested_filename.startswith(sid)
        # restore it: only once the name is typed
        backup.locator("summary").click()
        backup.locator("input[name=confirm]").fill(name)
        backup.locator("button").click()
        restore = page.locator("#backup-op .operation")
        expect(restore).to_contain_text("restore")
        expect(restore.locator(".badge")).to_have_text("succeeded", timeout=TIMEOUT_MS)
        expect(status).to_have_text("running", timeout=TIMEOUT_MS)
        page.select_option("select[name=plan]", "premium")
        page.click("#actions form:has(select[name=plan]) button")
        expect(page.locator("#op-area .notice")).to_contain_text("plan changed to premium")
        assert api.get(f"/stores/{sid}").json()["plan"] == "premium"

        page.click("header form button")  # sign out
        page.wait_for_url("**/login**")
        page.goto(server.url + "/ui/stores")
        assert "/login" in page.url
        assert dialogs == []


def test_hostile_names_are_text_and_no_dialog_opens(server: Server) -> None:
    with server.client() as api:
        ids = [
            api.post("/stores/", params={"deploy": "false"}, json=store_body(api, n)).json()[
                "store"
            ]["id"]
            for n in HOSTILE
        ]
    with chromium() as browser:
        page = browser.new_page()
        dialogs = watch_dialogs(page)
        sign_in(page, server.url, server.token)
        page.goto(server.url + "/ui/stores")
        names = page.locator("a.name").all_inner_texts()
        assert sorted(names) == sorted(HOSTILE)
        for sid, hostile in zip(ids, HOSTILE, strict=True):
            page.goto(f"{server.url}/ui/stores/{sid}")
            expect(page.locator("h1")).to_have_text(hostile)
        page.goto(server.url + "/")
        page.goto(server.url + "/ui/stores?q=" + "%3Cimg")
        expect(page.locator("a.name")).to_have_text([HOSTILE[0]])
        assert page.locator("img").count() == 0 and dialogs == []


def test_csrf_is_required_for_every_change(server: Server) -> None:
    with chromium() as browser, server.client() as api:
        page = browser.new_page()
        sign_in(page, server.url, server.token)
        form = store_body(api, "Forged")
        form["tokens_disponibles"] = "1"
        # the page's own cookies, as a forged request from a page would carry them
        for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
            answer = page.request.post(server.url + "/ui/stores", form=form, headers=headers)
            assert answer.status == 403, answer.text()
            assert json.loads(answer.text())["code"] == "csrf"
        assert "Forged" not in [s["nombre"] for s in api.get("/stores/").json()]
        headers = json.loads(page.get_attribute("body", "hx-headers") or "{}")
        answer = page.request.post(server.url + "/ui/stores", form=form, headers=headers)
        assert answer.status == 201
        # the sign-in form has its own: without it, no session
        answer = page.request.post(server.url + "/login", form={"token": server.token})
        assert answer.status == 403


def test_store_token_sees_its_own_store_only(server: Server) -> None:
    with server.client() as api:
        mine, other = (
            api.post("/stores/", params={"deploy": "false"}, json=store_body(api, n)).json()[
                "store"
            ]["id"]
            for n in ("Mine", "Other")
        )
        token = api.post("/tokens", json={"role": "store", "store_id": mine}).json()["token"]
        operator = api.post("/tokens", json={"role": "operator"}).json()
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, server.url, token)
        page.wait_for_url(f"**/ui/stores/{mine}")
        expect(page.locator("h1")).to_have_text("Mine")
        assert page.locator("#actions").count() == 0  # no actions for a store token
        assert page.locator("nav a", has_text="Tokens").count() == 0
        page.goto(f"{server.url}/ui/stores/{other}")
        expect(page.locator("p.error")).to_contain_text("does not exist")
        page.goto(server.url + "/ui/stores")
        expect(page.locator("a.name")).to_have_text(["Mine"])
        for path in ("/ui/admin/tokens", "/ui/fleet", "/ui/admin/audit"):
            answer = page.goto(server.url + path)
            assert answer is not None and answer.status == 403, path

        # an operator: stores yes, token and webhook management no
        page = browser.new_page()
        sign_in(page, server.url, operator["token"])
        expect(page.locator("h1")).to_have_text("Overview")
        assert page.locator("nav a", has_text="Tokens").count() == 0
        assert page.locator("nav a", has_text="Webhooks").count() == 0
        for path in ("/ui/admin/tokens", "/ui/admin/webhooks"):
            answer = page.goto(server.url + path)
            assert answer is not None and answer.status == 403, path
        # revoking the operator's token ends its session at once
        with server.client() as api:
            assert api.delete(f"/tokens/{operator['id']}").status_code == 204
        page.goto(server.url + "/ui/stores")
        assert "/login" in page.url


def _register(api: httpx.Client, names: list[str]) -> None:
    body = store_body(api, "x")

    def one(name: str) -> int:
        answer = api.post("/stores/", params={"deploy": "false"}, json={**body, "nombre": name})
        return answer.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, names)) == {201}


def test_stores_page_with_1000_stores_pages_searches_and_sorts(server: Server) -> None:
    with server.client() as api:
        _register(api, [f"Tienda {i:04d}" for i in range(1000)])
    with chromium() as browser:
        page = browser.new_page()
        dialogs = watch_dialogs(page)
        sign_in(page, server.url, server.token)
        page.goto(server.url + "/ui/stores")
        count = page.locator("#stores-count")
        expect(count).to_contain_text("1000 of 1000 stores · page 1 of 40")
        expect(page.locator("a.name")).to_have_count(25)
        page.click("a[rel=next]")
        expect(count).to_contain_text("page 2 of 40")
        assert "page=2" in page.url  # the page is in the address (back, share)
        page.click("th >> text=Name")  # sort by name, ascending
        expect(page.locator("a.name").first).to_have_text("Tienda 0000")
        page.click("th >> text=Name")
        expect(page.locator("a.name").first).to_have_text("Tienda 0999")
        page.select_option("select[name=per_page]", "100")
        expect(page.locator("a.name")).to_have_count(100)
        page.fill("input[name=q]", "tienda 012")
        expect(count).to_contain_text("10 of 1000 stores")
        page.select_option("select[name=status]", "not_deployed")
        expect(count).to_contain_text("10 of 1000 stores")
        assert dialogs == []


def test_create_form_shows_the_apis_errors_inline(server: Server) -> None:
    with server.client() as api:
        api.post("/stores/", params={"deploy": "false"}, json=store_body(api, "Taken"))
    with chromium() as browser:
        page = browser.new_page()
        sign_in(page, server.url, server.token)
        page.goto(server.url + "/ui/stores")
        page.click("#create summary")
        form = page.locator("#create-form")
        page.fill("#create-form input[name=nombre]", "taken")  # case-insensitive duplicate
        page.select_option("#create-form select[name=country_id]", label="Spain")
        page.click("#create-form button[type=submit]")
        expect(form.locator("#err-nombre")).to_contain_text("already exists")
        page.fill("#create-form input[name=nombre]", "New one")
        page.fill("#create-form input[name=tokens_disponibles]", "-5")
        page.select_option("#create-form select[name=country_id]", index=0)
        page.click("#create-form button[type=submit]")
        expect(form.locator("#err-tokens")).to_contain_text("greater than or equal to 0")
        expect(form.locator("#err-country")).to_contain_text("choose a country")
        expect(form.locator("input[name=nombre]")).to_have_value("New one")


def test_upgrade_fleet_upgrade_and_delete_show_their_operations(
    start_server: Callable[..., Server],
) -> None:
    """A store upgraded from its page, the fleet upgraded in waves from the fleet page (both
    operations followed live), then the store deleted once its name is typed."""
    server = start_server(STOREFLEET_PROCESS_VERSIONS=json.dumps({"0.2.0": "storefleet_backend"}))
    with server.client() as api:
        sid, other = (
            api.post("/stores/", json=store_body(api, n)).json()["store"]["id"]
            for n in ("Borrar", "Otra")
        )
    with chromium() as browser, server.client() as api:
        page = browser.new_page()
        dialogs = watch_dialogs(page)
        sign_in(page, server.url, server.token)
        page.goto(f"{server.url}/ui/stores/{sid}")
        page.select_option("select[name=version]", "0.2.0")
        page.click("#actions form:has(select[name=version]) button")
        operation = page.locator("#op-area .operation")
        expect(operation).to_contain_text("upgrade")
        expect(operation.locator(".badge")).to_have_text("succeeded", timeout=TIMEOUT_MS)
        expect(operation.locator(".steps li").first).to_be_visible()
        assert api.get(f"/stores/{sid}/deploy/status").json()["version"] == "0.2.0"
        # nothing to do: said so, no operation
        page.click("#actions form:has(select[name=version]) button")
        expect(page.locator("#op-area .notice")).to_contain_text("already runs version 0.2.0")

        page.goto(server.url + "/ui/fleet")
        page.select_option("select[name=version]", "0.2.0")
        page.fill("input[name=batch_size]", "1")
        page.click("#main form button")
        fleet = page.locator("#fleet-op .operation")
        expect(fleet.locator(".badge")).to_have_text("succeeded", timeout=TIMEOUT_MS)
        expect(fleet).to_contain_text("1 upgraded, 0 failed")
        expect(fleet.locator(".steps li")).to_have_text([re.compile("wave_1_of_1")])
        assert api.get(f"/stores/{other}/deploy/status").json()["version"] == "0.2.0"

        page.goto(f"{server.url}/ui/stores/{sid}")
        page.click("details.danger summary")
        page.fill("details.danger input[name=confirm]", "wrong name")
        page.click("details.danger button")
        expect(page.locator("#flash")).to_contain_text("exact name")
        assert api.get(f"/stores/{sid}").status_code == 200
        page.fill("details.danger input[name=confirm]", "Borrar")
        page.click("details.danger button")
        page.wait_for_url("**/ui/stores", timeout=TIMEOUT_MS)
        assert api.get(f"/stores/{sid}").status_code == 404
        assert dialogs == []


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1 that answers 204 to every delivery."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


def test_admin_tokens_webhooks_and_audit(start_server: Callable[..., Server]) -> None:
    server = start_server(STOREFLEET_WEBHOOK_ALLOW_NETS="127.0.0.0/8")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{receiver.server_port}/hook"
    try:
        with chromium() as browser, server.client() as api:
            page = browser.new_page()
            dialogs = watch_dialogs(page)
            sign_in(page, server.url, server.token)
            page.click("nav >> text=Tokens")
            page.select_option("select[name=role]", "operator")
            page.click("#tokens form button")
            secret = page.locator("#new-token input.secret")
            expect(secret).to_have_value(re.compile(r"^sf_"))
            token = secret.input_value()
            headers = {"Authorization": f"Bearer {token}"}
            assert httpx.get(server.url + "/api/v1/stores/", headers=headers).status_code == 200
            page.reload()  # shown once: never again
            assert token not in page.content()
            row = page.locator("tr", has_text=token[:10])
            row.locator("button", has_text="Revoke").click()
            expect(page.locator("tr", has_text=token[:10])).to_contain_text("revoked")
            assert httpx.get(server.url + "/api/v1/stores/", headers=headers).status_code == 401

            page.click("nav >> text=Webhooks")
            page.fill("input[name=url]", hook_url)
            page.click("#webhooks form button")
            expect(page.locator("#webhooks .notice input.secret")).to_have_value(
                re.compile(".{20,}")
            )
            api.post("/stores/", params={"deploy": "false"}, json=store_body(api, "Hooked"))
            page.click(f"a:has-text('{hook_url}')")
            delivered = page.locator("tr", has_text="store.created")
            for _ in range(30):  # the delivery log, as the deliverer fills it
                if delivered.count() and "delivered" in delivered.first.inner_text():
                    break
                page.wait_for_timeout(500)
                page.reload()
            expect(delivered.first).to_contain_text("delivered")
            expect(delivered.first).to_contain_text("204")

            page.click("nav >> text=Audit log")
            expect(page.locator("table.audit")).to_contain_text("POST /ui/admin/tokens")
            page.select_option("select[name=outcome]", "ok")
            page.click("form.filters button")
            outcomes = page.locator("table.audit tbody tr td:nth-child(7)").all_inner_texts()
            assert outcomes and set(outcomes) == {"ok"}
            assert dialogs == []
    finally:
        receiver.shutdown()


def test_an_operation_can_be_cancelled_from_its_page(start_server: Callable[..., Server]) -> None:
    """A deploy whose backend runs but never answers its health check waits; Cancel rolls it
    back completely."""
    server = start_server(STOREFLEET_PROCESS_BACKEND_MODULE="storefleet_backend.idle")
    with server.client() as api:
        body = store_body(api, "Cancelable")
        sid = api.post("/stores/", params={"deploy": "false"}, json=body).json()["store"]["id"]
    with chromium() as browser, server.client() as api:
        page = browser.new_page()
        sign_in(page, server.url, server.token)
        page.goto(f"{server.url}/ui/stores/{sid}")
        page.click("button[data-action=deploy]")
        operation = page.locator("#op-area .operation")
        expect(operation.locator(".badge")).to_have_text("running", timeout=TIMEOUT_MS)
        expect(operation.locator(".steps li").first).to_be_visible()
        operation.locator("button", has_text="Cancel").click()
        expect(operation.locator(".badge")).to_have_text("cancelled", timeout=TIMEOUT_MS)
        expect(page.locator("#status-word .badge")).to_have_text("not_deployed")
        assert api.get(f"/stores/{sid}/deploy/status").json()["status"] == "not_deployed"


def test_keyboard_only_and_a_narrow_window(server: Server) -> None:
    with server.client() as api:
        api.post("/stores/", params={"deploy": "false"}, json=store_body(api, "Estrecha"))
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 800})
        page.goto(server.url + "/")
        page.keyboard.type(server.token)  # the token field has the focus
        page.keyboard.press("Enter")
        expect(page.locator("h1")).to_have_text("Overview")
        for _ in range(12):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.textContent.trim()") == "Stores":
                break
        page.keyboard.press("Enter")
        expect(page.locator("h1")).to_have_text("Stores")
        expect(page.locator("a.name")).to_have_text(["Estrecha"])
        for path in ("/", "/ui/stores", "/ui/fleet", "/ui/admin/tokens"):
            page.goto(server.url + path)
            wide = page.evaluate("() => document.documentElement.scrollWidth")
            assert wide <= 390, (path, wide)  # nothing runs off a phone-sized window

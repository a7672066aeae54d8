"""The control plane's /docs in a real headless browser (Debian's chromium, driven by Playwright)
on a machine without internet: Swagger UI renders every operation, and no request leaves the
control plane."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Request

from helpers import Server, chromium, store_body


def test_docs_render_their_operations_offline(server: Server) -> None:
    """The control plane's /docs and a deployed store backend's, with no request elsewhere."""
    with server.client() as api:
        created = api.post("/stores/", json=store_body(api, "Docs"))
        back_link = created.json()["deployment"]["back_link"]
    elsewhere: list[str] = []

    def seen(request: Request) -> None:
        if urlsplit(request.url).hostname != "127.0.0.1":
            elsewhere.append(request.url)

    rendered: dict[str, tuple[int, str]] = {}
    with chromium() as browser:
        page = browser.new_page()
        page.on("request", seen)
        for name, url in (("control plane", server.url), ("store", back_link)):
            page.goto(url + "/docs")
            page.wait_for_selector(".opblock", timeout=20_000)
            title = page.locator(".info .title").inner_text()
            rendered[name] = (page.locator(".opblock").count(), title)
    operations, title = rendered["control plane"]
    assert operations >= 30 and title.startswith("storefleet"), rendered
    operations, title = rendered["store"]  # health and the orders API
    assert operations >= 3 and title.startswith("Store "), rendered
    assert elsewhere == []

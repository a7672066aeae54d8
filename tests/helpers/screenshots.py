"""Screenshots of the dashboard for the README: `make screenshots` (also run by the tests).

Starts a real control plane (process runtime) in a scratch folder, registers a small fleet
(some deployed, one stopped, some only registered), signs in with headless Chromium and writes
the overview, the stores page and a store page as PNGs to the folder given (docs/img/).

    PYTHONPATH=tests .venv/bin/python -m helpers.screenshots docs/img
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import Page, ViewportSize, expect

from helpers.browser import chromium, sign_in
from helpers.cleanup import kill_store_processes
from helpers.servers import Server, store_body

PAGES = ("overview", "stores", "store")
SIZE: ViewportSize = {"width": 1280, "height": 860}
FLEET = [
    ("Zapatería Ana", "premium", True),
    ("Librería del Centro", "basic", True),
    ("Café Aurora", "enterprise", True),
    ("Mercado Norte", "basic", False),
    ("Floristería Lila", "premium", False),
]


def _fleet(api: httpx.Client) -> str:
    """Register the fleet; returns the id of the store to show."""
    ids = []
    for name, plan, deploy in FLEET:
        answer = api.post(
            "/stores/", params={"deploy": str(deploy).lower()}, json=store_body(api, name, plan)
        )
        answer.raise_for_status()
        ids.append(answer.json()["store"]["id"])
    api.post(f"/stores/{ids[1]}/stop").raise_for_status()
    api.post(f"/stores/{ids[0]}/backups").raise_for_status()
    return str(ids[0])


def _shoot(page: Page, url: str, out: Path, wait_for: str, *, goto: bool = True) -> Path:
    if goto:
        page.goto(url)
    expect(page.locator(wait_for).first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(600)  # htmx settles its swaps
    path = out / f"{page_name(url)}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def page_name(url: str) -> str:
    if "/ui/stores/" in url:
        return "dashboard-store"
    if url.endswith("/ui/stores"):
        return "dashboard-stores"
    return "dashboard-overview"


def take(server: Server, out: Path) -> list[Path]:
    """Register a fleet on `server` and write the three screenshots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with server.client() as api:
        store_id = _fleet(api)
    with chromium() as browser:
        page = browser.new_page(viewport=SIZE)
        sign_in(page, server.url, server.token)
        shots = [
            _shoot(page, server.url + "/", out, "#overview .tile"),
            _shoot(page, server.url + "/ui/stores", out, "tr[id^=row-]"),
        ]
        page.goto(f"{server.url}/ui/stores/{store_id}")
        expect(page.locator("#backups tr.backup")).to_have_count(1, timeout=30_000)
        expect(page.locator("#log-lines .line").first).to_be_visible(timeout=30_000)
        url = f"{server.url}/ui/stores/{store_id}"
        shots.append(_shoot(page, url, out, "svg.chart", goto=False))  # two usage readings
    return shots


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "docs/img").resolve()
    with tempfile.TemporaryDirectory(prefix="storefleet-shots-") as scratch:
        server = Server(Path(scratch) / "var").start()
        try:
            for path in take(server, out):
                print(path)
        finally:
            server.stop()
            kill_store_processes(server.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

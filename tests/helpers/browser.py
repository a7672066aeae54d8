"""A real headless browser: Debian's chromium driven by Playwright (environment.md: it runs here
headless with these flags), and signing in to the dashboard with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Dialog, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def watch_dialogs(page: Page) -> list[str]:
    """Every dialog (alert, confirm, prompt) the page opens, dismissed and recorded."""
    opened: list[str] = []

    def seen(dialog: Dialog) -> None:
        opened.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", seen)
    return opened


def sign_in(page: Page, url: str, token: str) -> None:
    """Sign in through the form, as a person would (the page `/` sends us there)."""
    page.goto(url + "/")
    page.wait_for_url("**/login**")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_load_state("load")

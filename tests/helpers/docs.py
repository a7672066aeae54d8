"""Checking that an app's /docs loads with no internet: every file the page names is served by
the app itself, and is the real Swagger UI."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx

Get = Callable[[str], httpx.Response]


def assert_docs_offline(get: Get) -> None:
    page = get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url: *["']([^"']+)["']""", page.text)  # the OpenAPI document
    assert urls, page.text
    assert not [u for u in urls if "//" in u], f"a file from elsewhere: {urls}"
    for url in urls:
        answer = get(url)
        assert answer.status_code == 200, url
        assert len(answer.content) > 100, url
    js = get("/docs/assets/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content
    assert get("/docs/oauth2-redirect").status_code == 200
    redoc = get("/redoc")  # ReDoc too
    assert redoc.status_code == 200 and "//" not in "".join(
        re.findall(r"""src=["']([^"']+)["']""", redoc.text)
    )

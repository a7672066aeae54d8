"""`make screenshots` writes the README's pictures of the dashboard: the same code, run here
into a scratch folder against a real control plane."""

from __future__ import annotations

import struct
from pathlib import Path

from helpers import Server
from helpers.screenshots import SIZE, take


def test_screenshots_of_overview_stores_and_store_pages(server: Server, tmp_path: Path) -> None:
    shots = take(server, tmp_path / "img")
    assert [p.name for p in shots] == [
        "dashboard-overview.png",
        "dashboard-stores.png",
        "dashboard-store.png",
    ]
    for path in shots:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert (width, height) == (SIZE["width"], SIZE["height"])
        assert len(data) > 20_000  # a rendered page, not a blank one

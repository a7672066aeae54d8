"""The OpenAPI schema tells the truth about authentication and errors; 405 names every method."""

from __future__ import annotations

import httpx

from helpers import Server


def test_the_schema_declares_bearer_auth_and_the_real_error_body(server: Server) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (admin, operator or store role)",
    }
    error = schema["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"detail", "code", "errors"}
    assert "HTTPValidationError" not in str(schema)
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if path in ("/health", "/api/v1/edge/ca.pem", "/api/v1/edge/ask"):  # public
                assert operation["security"] == []
                continue
            assert operation["security"] == [{"bearer": []}], (method, path)
            for status in ("401", "404", "422", "429"):
                ref = operation["responses"][status]["content"]["application/json"]["schema"]
                assert ref == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    with server.client() as api:
        bad = api.post("/stores/", json={"nombre": ""}).json()
    assert set(bad) == {"detail", "code", "errors"}
    assert all(set(item) == {"field", "message"} for item in bad["errors"])


def test_a_405_lists_every_method_of_the_path(server: Server) -> None:
    with server.client() as api:
        answer = api.request("OPTIONS", "/stores/")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "GET, POST"
        one = api.request("PUT", "/stores/00000000-0000-4000-8000-000000000000")
        assert one.status_code == 405 and one.headers["allow"] == "DELETE, GET, PATCH"

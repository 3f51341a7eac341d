"""The OpenAPI document matches the code: every route the app serves is documented, every
documented path and method is routed, and the document is valid OpenAPI 3.1 whose
references all resolve."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
from schemathesis.specs.openapi.definitions import OPENAPI_31

from orchestrator.api.app import OPERATIONS, create_app
from orchestrator.api.openapi import DOCUMENT
from orchestrator.settings import Settings


def _app_and_document() -> tuple[Any, dict[str, Any]]:
    app = create_app(None, Settings())  # type: ignore[arg-type]  # no request is made
    return app, app[DOCUMENT]


def test_every_route_is_documented_and_every_documented_path_routed() -> None:
    app, doc = _app_and_document()
    routed = {(route.method, route.resource.canonical) for route in app.router.routes()}
    documented = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item}
    assert routed == documented
    assert len(documented) == len(OPERATIONS)
    assert "/api/v1/rollouts/{id}/events" in doc["paths"]


def test_the_document_is_valid_openapi_31() -> None:
    _, doc = _app_and_document()
    errors = [str(e) for e in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(doc)]
    assert not errors, errors[:3]
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    text = json.dumps(doc)
    for name in doc["components"]["schemas"]:
        jsonschema_rs.meta.validate(doc["components"]["schemas"][name])
    # every $ref points at a component that exists
    refs = {part.split('"', 1)[0] for part in text.split('"$ref": "')[1:]}
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
    # every operation documents its errors as problems; protected ones their 401/403
    for path, item in doc["paths"].items():
        for method, op in item.items():
            statuses = set(op["responses"])
            assert "500" in statuses, (method, path)
            if op["security"]:
                assert {"401", "403"} <= statuses, (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert "application/problem+json" in response["content"], (path, status)


def test_links_and_examples_are_consistent() -> None:
    _, doc = _app_and_document()
    ids = {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}
    for item in doc["paths"].values():
        for op in item.values():
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    target = ids[link["operationId"]]
                    names = {p["name"] for p in target.get("parameters", [])}
                    assert set(link["parameters"]) <= names, link
    for name, schema in doc["components"]["schemas"].items():
        for example in schema.get("examples", []):
            wrapped = {**schema, "components": doc["components"]}
            validator = jsonschema_rs.Draft202012Validator(wrapped)
            assert validator.is_valid(example), (name, example)

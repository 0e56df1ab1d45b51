"""An OpenAPI 3.1 document built from the admin API's own route table.

The table that registers the handlers is the one described here, so the
document cannot list a route that does not exist or miss one that does.
Request and response schemas come from the same pydantic models that
validate the bodies.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter

__all__ = ["Query", "Route", "build_document"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Route:
    """One admin endpoint: how it is served and how it is described."""

    method: str
    path: str  # relative to the API's base, with {placeholders}
    handler: Handler
    summary: str
    tag: str
    body: Any = None  # a type pydantic validates the JSON body against
    body_media: str = "application/json"
    response: Any = None  # a type describing the JSON answer
    response_media: str = "application/json"
    status: int = 200
    query: Sequence[Query] = ()
    auth: bool = True


_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}


def _schema(kind: Any, defs: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(kind).json_schema(ref_template=_REF)
    defs.update(schema.pop("$defs", {}))
    title = schema.get("title")
    # Name whole models once, in components, and refer to them.
    if (
        isinstance(title, str)
        and schema.get("type") == "object"
        and "properties" in schema
    ):
        defs[title] = schema
        return {"$ref": _REF.format(model=title)}
    return schema


def _operation(route: Route, defs: dict[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", route.path)
    ]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "description": q.description,
            "schema": q.schema,
        }
        for q in route.query
    ]
    answer: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        answer["content"] = {
            route.response_media: {"schema": _schema(route.response, defs)}
        }
    elif route.response_media != "application/json":
        answer["content"] = {route.response_media: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(route.status): answer}
    error = {
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(model="Error")}}
        }
    }
    for status, text in (
        ("400", "The request is malformed"),
        ("404", "No such object for this tenant"),
        ("409", "The object's state forbids this"),
        ("413", "The body is too large"),
        ("422", "The body does not validate; details name each bad field"),
    ):
        responses[status] = {"description": text, **error}
    if route.auth:
        responses["401"] = {"description": "No valid API key", **error}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": [route.tag],
        "operationId": route.handler.__name__,
        "parameters": params,
        "responses": responses,
    }
    if route.body is not None:
        if route.body_media == "application/json":
            schema = _schema(route.body, defs)
        else:
            schema = {"type": "string", "format": "binary"}
        operation["requestBody"] = {
            "required": True,
            "content": {route.body_media: {"schema": schema}},
        }
    if not route.auth:
        operation["security"] = []
    return operation


def build_document(
    routes: Sequence[Route], base: str, title: str, version: str
) -> dict[str, Any]:
    defs: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(base + route.path, {})[route.method.lower()] = _operation(
            route, defs
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(defs.items())),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant's API key: `voxdial apikey create`.",
                }
            },
        },
        "security": [{"apiKey": []}],
    }

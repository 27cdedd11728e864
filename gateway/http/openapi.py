"""The OpenAPI document at /openapi.json, with the request bodies the handlers really parse.

Handlers read their bodies themselves (JSON whatever the Content-Type, ollama-api.md §1.2), so
FastAPI sees no body parameter and would describe none. `gateway_openapi` adds, for each route
that takes a body, the JSON schema of the pydantic model it is validated with (`$defs` inlined,
so each schema stands alone) and the `{"error": "..."}` responses every such endpoint can give.
Nothing here changes how a body is parsed. A route that sets its own `openapi_extra` keeps it.

FastAPI names both methods of a GET+HEAD route alike; each operation's id ends in its own method here.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_ERROR_STATUSES = {
    "400": "The request cannot be served as sent",
    "404": "No such model",
    "413": "Request body too large",
    "429": "The upstream is rate limiting",
    "500": "Internal error",
    "502": "The upstream cannot be used",
    "503": "Busy, or shutting down",
    "504": "The upstream did not answer in time",
}
_METHOD_SUFFIX = re.compile(r"_(get|head|post|put|patch|delete|options)$")
_OPENAI_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {"model": {"type": "string"}},
    "required": ["model"],
    "description": "An OpenAI request body, passed to the routed upstream with its model id",
}


def request_models() -> dict[tuple[str, str], type[BaseModel] | dict[str, Any]]:
    """(method, path) -> the model its body is validated with (or a schema for relayed bodies)."""
    from gateway.http.management import CopyRequest, TransferRequest
    from gateway.translators.anthropic_messages import MessagesRequest
    from gateway.translators.responses_items import ResponsesRequest
    from gateway.ollama import (
        ChatRequest,
        EmbeddingsRequest,
        EmbedRequest,
        GenerateRequest,
        ShowRequest,
    )

    return {
        ("post", "/api/chat"): ChatRequest,
        ("post", "/api/generate"): GenerateRequest,
        ("post", "/api/embed"): EmbedRequest,
        ("post", "/api/embeddings"): EmbeddingsRequest,
        ("post", "/api/show"): ShowRequest,
        ("post", "/api/pull"): TransferRequest,
        ("post", "/api/push"): TransferRequest,
        ("post", "/api/create"): TransferRequest,
        ("delete", "/api/delete"): TransferRequest,
        ("post", "/api/copy"): CopyRequest,
        ("post", "/v1/chat/completions"): _OPENAI_BODY,
        ("post", "/v1/completions"): _OPENAI_BODY,
        ("post", "/v1/embeddings"): _OPENAI_BODY,
        ("post", "/v1/messages"): MessagesRequest,
        ("post", "/v1/messages/count_tokens"): MessagesRequest,
        ("post", "/v1/responses"): ResponsesRequest,
    }


def gateway_openapi(app: FastAPI) -> dict[str, Any]:
    """`app.openapi` for the gateway: built once, then cached on the app as FastAPI does."""
    if app.openapi_schema:
        return app.openapi_schema
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate Operation ID", category=UserWarning)
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    models = request_models()
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            # FastAPI gives both methods of a GET+HEAD route one id, ending in either method.
            stem = _METHOD_SUFFIX.sub("", operation.get("operationId", path))
            operation["operationId"] = f"{stem}_{method}"
            model = models.get((method, path))
            if model is None or "requestBody" in operation:
                continue
            schema = model if isinstance(model, dict) else inline_schema(model)
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
            responses = operation.setdefault("responses", {})
            for status, description in _ERROR_STATUSES.items():
                responses.setdefault(
                    status, {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
                )
    app.openapi_schema = document
    return document


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with every `#/$defs/...` reference replaced by its definition."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                name = reference.removeprefix("#/$defs/")
                if name in seen:  # a recursive model: stop at an open object
                    return {"type": "object"}
                rest = {key: value for key, value in node.items() if key != "$ref"}
                return {**resolve(definitions[name], (*seen, name)), **resolve(rest, seen)}
            return {key: resolve(value, seen) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema, ())
    return resolved

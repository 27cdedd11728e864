"""Every error the gateway answers, rendered in Ollama's shape `{"error": "..."}`.

    GatewayError (500)
    ├── BadRequest (400)            the client's request cannot be served as sent
    ├── ModelNotFound (404)         no route for the model name
    ├── UpstreamRejected (4xx/5xx)  the upstream answered with an error; status already mapped
    ├── UpstreamUnavailable (502)   no usable answer: refused, DNS, TLS, garbage, bad credentials
    └── UpstreamTimeout (504)       the upstream did not answer in time

Before the first streamed byte an error is a status and a JSON body; after it, one final NDJSON
line `{"error": ...}` (see `streaming.py`).
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json; charset=utf-8"


class GatewayError(Exception):
    status_code = 500

    def __init__(self, message: str, *, status_code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class BadRequest(GatewayError):
    status_code = 400


class ModelNotFound(GatewayError):
    status_code = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")


class UpstreamRejected(GatewayError):
    """An upstream error status, translated to the status Ollama clients expect."""


class UpstreamUnavailable(GatewayError):
    status_code = 502


class UpstreamTimeout(GatewayError):
    status_code = 504


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(error: GatewayError) -> Response:
    return Response(
        error_body(error.message),
        status_code=error.status_code,
        headers=error.headers,
        media_type=JSON_MEDIA_TYPE,
    )


# Upstream status -> status answered to the Ollama client (openai-mapping.md §7). Credential
# problems are the gateway's own misconfiguration: 502, so clients do not start a re-login.
UPSTREAM_STATUS = {
    400: 400,
    401: 502,
    403: 502,
    404: 404,
    408: 504,
    409: 503,
    413: 400,
    422: 400,
    429: 429,
    500: 500,
    502: 502,
    503: 503,
    504: 504,
}


def ollama_status(upstream_status: int) -> int:
    """The status an Ollama client gets for an upstream error status."""
    mapped = UPSTREAM_STATUS.get(upstream_status)
    if mapped is not None:
        return mapped
    return 400 if 400 <= upstream_status < 500 else 502

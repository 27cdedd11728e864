"""A third-party translator as routes.yaml `endpoints` binds one: its `upstream_body()` is a plain
dict, typed as such (tests/test_upstream_body.py serves /api/chat through it)."""

from __future__ import annotations

from typing import Any

from gateway.translators.chat import ChatTranslator


class VendorChat(ChatTranslator):
    def upstream_body(self) -> dict[str, Any]:  # type: ignore[override]  # a plain dict, as plugins write it
        body = dict(super().upstream_body())
        body["vendor_flag"] = {"from": "plugin"}
        return body

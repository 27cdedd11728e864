"""Translators: one per Ollama endpoint family, bound to endpoints by routes.yaml `endpoints`."""

from __future__ import annotations

import importlib

from gateway.translators.base import StreamingTranslator, Translator

DEFAULT_BINDINGS: dict[str, str] = {
    "/api/chat": "gateway.translators.chat:ChatTranslator",
    "/api/generate": "gateway.translators.generate:GenerateTranslator",
    "/api/embed": "gateway.translators.embed:EmbedTranslator",
    "/api/embeddings": "gateway.translators.embed:LegacyEmbeddingsTranslator",
}

__all__ = ["DEFAULT_BINDINGS", "StreamingTranslator", "Translator", "load_bindings"]


class BindingError(ValueError):
    """An `endpoints` entry that cannot be used."""


def load_bindings(overrides: dict[str, str]) -> dict[str, type[Translator]]:  # type: ignore[type-arg]
    """Import the translator class for every endpoint: the defaults, replaced by `overrides`."""
    unknown = sorted(set(overrides) - set(DEFAULT_BINDINGS))
    if unknown:
        raise BindingError(
            f"endpoints.{unknown[0]}: not an endpoint served by translators (one of: {', '.join(DEFAULT_BINDINGS)})"
        )
    return {endpoint: _import(endpoint, overrides.get(endpoint, default)) for endpoint, default in DEFAULT_BINDINGS.items()}


def _import(endpoint: str, dotted: str) -> type[Translator]:  # type: ignore[type-arg]
    module_name, _, class_name = dotted.partition(":")
    if not module_name or not class_name:
        raise BindingError(f"endpoints.{endpoint}: {dotted!r} is not of the form 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BindingError(f"endpoints.{endpoint}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Translator):
        raise BindingError(f"endpoints.{endpoint}: {dotted!r} is not a subclass of gateway.translators.base.Translator")
    if endpoint in ("/api/chat", "/api/generate") and not issubclass(cls, StreamingTranslator):
        raise BindingError(f"endpoints.{endpoint}: {dotted!r} must subclass StreamingTranslator (the endpoint streams)")
    return cls

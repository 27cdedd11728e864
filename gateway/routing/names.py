"""Ollama model names as the gateway compares and lists them: case-insensitive, `x` = `x:latest`."""

from __future__ import annotations


def has_tag(name: str) -> bool:
    return ":" in name.rsplit("/", 1)[-1]


def tagged(name: str) -> str:
    """The name as `/api/tags` lists it: with `:latest` when it has no tag."""
    return name if has_tag(name) else f"{name}:latest"


def strip_latest(name: str) -> str:
    return name[: -len(":latest")] if name.lower().endswith(":latest") else name


def canonical_name(name: str) -> str:
    """Ollama matches names case-insensitively, and `x` and `x:latest` are one model."""
    return strip_latest(name.strip().lower())

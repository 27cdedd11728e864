"""Ollama Gateway: the Ollama REST API, served from OpenAI-compatible providers."""

__version__ = "0.1.0"

"""Ollama Gateway: the Ollama REST API, served from OpenAI-compatible providers."""

import sys

__version__ = "0.1.0"

# structlog imports `rich`, where it is installed (a development environment), for pretty
# tracebacks on a terminal: about 5 MiB per worker that serving never uses (the gateway's
# exceptions are one-line `unhandled_exception` events). Marked absent before structlog loads;
# a program that imported rich itself keeps it.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

"""`python -m gateway` is the `ollama-gateway` command."""

from gateway.cli import main

raise SystemExit(main())

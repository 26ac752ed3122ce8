# nnforge — the two commands a new user needs:  make demo  and  make test
#
# torch==2.13.0 is installed first, on its own, so that resolving the package's dependencies never
# pulls a (multi-GB) CUDA build of torch. Installation is stamped by the hash of pyproject.toml, so
# `make setup` is quick when nothing changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench-quick clean

setup: $(STAMP)

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(BIN)/nnforge run quickstart

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q

bench-quick: setup
	$(BIN)/python benchmarks/quickstart.py --quick

clean:
	rm -rf $(VENV) .nnforge runs .pytest_cache .mypy_cache .ruff_cache

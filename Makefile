# nnforge — the two commands a new user needs:  make demo  and  make test
#
# torch==2.13.0 is installed first, on its own, so that resolving the package's dependencies never
# pulls a (multi-GB) CUDA build of torch. Both installs are constrained by constraints.txt, the versions
# the tests last passed with (`make lock` rewrites it from .venv). Installation is stamped by the hash of
# pyproject.toml, Makefile and constraints.txt, so `make setup` is quick when nothing changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile constraints.txt | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup lock demo test lint bench-quick clean

setup: $(STAMP) node_modules/onnxruntime-web

# onnxruntime-web (npm, pinned by package-lock.json) for `nnforge export --format web`: installed when missing or
# when the lock file changed, running no package's install script (the runtime is prebuilt files); without npm the
# rest of nnforge still installs (the web export then says what to do)
node_modules/onnxruntime-web: package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --ignore-scripts && touch $@; \
	else echo "npm not found: onnxruntime-web not installed (nnforge export --format web needs it: install Node.js" \
	  "and npm, then run make setup)" >&2; fi

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev,peers]'
	rm -f $(VENV)/.installed-*
	touch $@

# constraints.txt := the versions installed in .venv now (run it after an upgrade has passed `make test`)
lock: setup
	{ echo "# The versions \`make test\` passed with; \`make setup\` installs exactly these. Regenerate: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i -E '^(nnforge|torch)=='; \
	  echo "$(TORCH)"; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt

demo: setup
	$(BIN)/nnforge run quickstart

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# two pytest-xdist workers, one per core: each gets one torch thread, a file's tests stay on one worker (module
# fixtures are made once) and the tests that start Flower's engines share one worker (tests/conftest.py)
test: setup lint
	$(BIN)/python -m pytest -q --durations=25 -n 2 --dist loadfile

bench-quick: setup
	$(BIN)/python benchmarks/quickstart.py --quick

clean:
	rm -rf $(VENV) .nnforge runs .pytest_cache .mypy_cache .ruff_cache node_modules

# jukinet — everything a fresh machine needs is installed by these targets (Python venv, npm tools).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUF    := tools/node_modules/.bin/buf
PYTEST_ARGS ?= -n 2
DEMO_ARGS ?=

.PHONY: demo test lint proto bench clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing jukinet with its dev tools (first run: about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import jukinet, grpc, sqlalchemy, pytest" 
	touch $(STAMP)

$(BUF): tools/package.json tools/package-lock.json
	@echo "==> installing buf (npm @bufbuild/buf) into tools/node_modules"
	cd tools && npm install --no-audit --no-fund --loglevel=error  # (npm ci trips over buf's optional per-platform packages)
	touch $(BUF)

## demo: run the whole network locally (1 center, 2 prefectures, 3 municipalities) end to end
demo: $(STAMP)
	$(BIN)/jukinet demo $(DEMO_ARGS)

## lint: ruff, mypy --strict, import contracts, generated-code freshness, buf lint
lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports
	$(BIN)/python proto/generate.py --check
	cd proto && ../$(BUF) lint

## test: lint, then unit, integration (SQLite and PostgreSQL) and end-to-end tests
test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

## proto: regenerate jukinet/wire from proto/
proto: $(STAMP)
	$(BIN)/python proto/generate.py

## bench: the relay benchmark (see bench/relay.py --help)
bench: $(STAMP)
	$(BIN)/python bench/relay.py

clean:
	rm -rf $(VENV) tools/node_modules demo-run .mypy_cache .ruff_cache .pytest_cache

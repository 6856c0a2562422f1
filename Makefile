# `make demo` and `make test` bootstrap .venv themselves on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck pytest install lock bench clean dashboard docs browser

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,mcp]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tooltrail demo $(DEMO_ARGS)

dashboard: $(STAMP)
	$(BIN)/tooltrail dashboard

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	./scripts/typecheck-tree
	$(BIN)/mypy

typecheck: lint

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Every benchmark the docs quote; bench/proxy.py needs the npm servers (cd tests/js && npm ci).
bench: $(STAMP)
	$(BIN)/python bench/exporter.py
	$(BIN)/python bench/queries.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/instrumentation.py
	$(BIN)/python bench/killwindow.py
	$(BIN)/python bench/approvals.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/redact.py --clock cpu
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/session_end.py
	$(BIN)/python bench/signin.py
	$(BIN)/python bench/access.py
	$(BIN)/python bench/retention.py
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/proxy.py --http

# The real-browser dashboard tests drive Debian's chromium (never a downloaded browser);
# without it they (tests/browser/) are skipped. Needs root (or run the apt-get line with sudo).
browser:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

# Re-pin every dependency from a clean environment (after changing pyproject.toml).
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet -e '.[dev,mcp]'
	build/lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^tooltrail' > requirements.lock
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache tooltrail-data

# Regenerate the CLI reference from --help (tests/test_cli_reference.py keeps it in sync).
docs: $(STAMP)
	$(BIN)/python -m tooltrail.cli_reference > docs/CLI.md

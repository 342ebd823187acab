PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: venv demo dashboard ui-vendor test lint bench clean lock audit

venv: $(VENV)/.installed

# Exactly the files in the lock files (what was tested, each checked against its sha256), then the
# project itself, built with the locked setuptools.
$(VENV)/.installed: pyproject.toml requirements.lock requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

# After changing dependencies in pyproject.toml: resolve them afresh and write the lock files.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	$(BIN)/python scripts/lock.py

# Known vulnerabilities in the locked packages (needs the PyPI JSON API or OSV reachable).
audit: venv
	$(BIN)/pip install --disable-pip-version-check -q pip-audit
	$(BIN)/pip-audit --strict -r requirements.lock -r requirements-dev.lock --no-deps --disable-pip

demo: venv
	$(BIN)/python -m cli.service_demo

# The embedded service kept up (state in .state/) with the dashboard at /ui/ and a token to sign in
# with; Ctrl-C stops it. DASHBOARD_ARGS="--port 8080 --example" picks a port and starts a run to watch.
dashboard: venv
	$(BIN)/python -m cli.dashboard $(DASHBOARD_ARGS)

# After changing a version in ui/package.json: the dashboard's third-party files into api/ui/vendor/ (needs npm).
ui-vendor:
	bash scripts/vendor_ui.sh

# Starts Postgres and Redis if installed; without them the service tests run embedded (scripts/test.sh).
test: venv
	VENV=$(VENV) bash scripts/test.sh

# Ruff's lint rules and formatting (configured in pyproject.toml); `make format` applies them.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .cache

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/python -m cli.service_demo

# Starts Postgres and Redis if installed; without them the service tests run embedded (scripts/test.sh).
test: venv
	VENV=$(VENV) bash scripts/test.sh

clean:
	rm -rf $(VENV) runs .cache

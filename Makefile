# Two entry points: `make dev` runs the gateway with embedded Postgres + S3, `make test` runs the tests.
# Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: dev test install bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: install
	$(VENV)/bin/gateway dev

test: install
	$(PY) -m pytest

bench: install
	$(PY) bench/presign.py

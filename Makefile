# Two entry points: `make dev` runs the gateway with embedded Postgres + S3, `make test` runs the tests.
# Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: dev test install bench system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian's Chromium for the browser tests (a test tool must never download its own browser).
system-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium (apt-get install chromium) to run the browser tests"; fi; \
	fi

dev: install
	$(VENV)/bin/gateway dev

test: install system-deps
	$(PY) -m pytest

bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench

# Entry points: `make dev` runs the gateway with embedded Postgres + S3, `make test` runs the tests,
# `make lint` runs ruff and mypy.
# Each installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: dev test lint install bench system-deps

# setup.py is a dependency too: it maps migrations/ and clients/js/ into the package (also for -e).
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian's packages the tests drive: Chromium for the browser tests (a test tool must never download its
# own browser) and haproxy, the load balancer of the soak (bench/soak.py, `--quick` in the tests).
SYSTEM_PACKAGES := /usr/bin/chromium:chromium /usr/sbin/haproxy:haproxy
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do \
	  [ -x "$${entry%%:*}" ] || missing="$$missing $${entry##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: install Debian's$$missing (apt-get install$$missing) to run the browser tests and the soak"; fi; \
	fi

dev: install
	$(VENV)/bin/gateway dev

test: install system-deps
	$(PY) -m pytest

# Both linters run (and report) even when the first one finds something.
lint: install
	@status=0; \
	$(VENV)/bin/ruff check gateway tests bench || status=1; \
	$(VENV)/bin/mypy gateway || status=1; \
	exit $$status

bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m bench

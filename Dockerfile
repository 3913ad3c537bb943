# syntax=docker/dockerfile:1
#
# The gateway image: `docker build -t tus-s3-gateway .`
#
#   docker run --rm tus-s3-gateway gateway migrate      # once per release, before serving
#   docker run -p 8080:8080 -e GATEWAY_... tus-s3-gateway  # gateway serve
#
# Settings come from GATEWAY_* environment variables (see gateway/config.py); docker-compose.yml
# wires up a complete local stack (PostgreSQL, SeaweedFS S3, bucket setup, migrations, gateway).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The system CA bundle: TLS to Postgres (sslmode=verify-full) and to S3/IdP endpoints.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged account to run as; it owns none of the installed code (read-only to it).
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway

WORKDIR /app

# A regular (non-editable) install: the wheel carries migrations/ and clients/js/ as package data
# (setup.py maps them into gateway/_data), so the image needs no source tree. The build context is
# bind-mounted rather than copied, so no layer keeps it; `rw` lets the build write its build/ and
# *.egg-info there (discarded afterwards). pip byte-compiles what it installs.
RUN --mount=type=bind,target=/src,rw \
    pip install /src \
    && gateway --help >/dev/null \
    && python -c "import gateway.db.migrate as m, gateway.http.demo as d; \
                  assert m.migration_files() and (d.CLIENT_DIR / 'index.js').is_file(), 'no package data'"

ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_METRICS_PORT=9090

USER gateway:gateway

# 8080: the API; 9090: the ops port (/metrics, /healthz, /readyz), for the cluster, not the public.
EXPOSE 8080 9090

# python:3.11-slim has neither curl nor wget; Python's urllib does the probe. /healthz is the
# liveness endpoint (no dependencies); /readyz additionally checks PostgreSQL and S3.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=4)"]

# SIGTERM drains: /readyz answers 503, no new connections, requests in flight get GATEWAY_SHUTDOWN_TIMEOUT
# (30 s). With `serve --workers N` the parent (PID 1) forwards it to the workers and waits for them.
STOPSIGNAL SIGTERM
CMD ["gateway", "serve"]

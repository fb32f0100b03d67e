# syntax=docker/dockerfile:1
# One Dockerfile, two images: `--target operator`, and `service` (the default: the last stage).
#
# BASE_IMAGE is any Debian-based image with Python 3.11 and its venv module on PATH as
# `python3`: the official slim image by default, or the debootstrap base that `make image`
# builds where no registry is reachable. The build never relies on where Python lives.
#
# A build behind a TLS-intercepting proxy can hand its CA bundle in as a build secret
# (`--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt`); it is mounted only for the
# steps that download and never lands in a layer.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# uv, pinned, in a venv of its own (Debian's Python refuses pip installs into the system).
FROM ${BASE_IMAGE} AS uv
ARG UV_VERSION=0.13.8
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==${UV_VERSION}"

# The locked dependencies of one package, then the package itself: a code change reuses the
# dependency layer. Bytecode is compiled here, so the read-only runtime never writes .pyc files.
FROM uv AS build
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON=python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
COPY pyproject.toml uv.lock ./
COPY service/pyproject.toml service/
COPY operator/pyproject.toml operator/

FROM build AS build-service
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --package moorage-service --no-install-workspace
COPY service/src service/src
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --package moorage-service --no-editable

FROM build AS build-operator
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --package moorage-operator --no-install-workspace
COPY operator/src operator/src
RUN --mount=type=secret,id=ca-bundle,target=/run/secrets/ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --package moorage-operator --no-editable

# Shared runtime: no build tools, a numeric non-root user, nothing written at run time.
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
RUN groupadd --gid 10001 agent \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin agent
WORKDIR /app

FROM runtime AS operator
LABEL org.opencontainers.image.title="moorage-operator" \
      org.opencontainers.image.description="Moorage operator: reconciles AgentDeployment resources (kopf)"
# Owned by root and read-only to the process: the code cannot be altered at run time.
COPY --from=build-operator /app/.venv /app/.venv
USER 10001:10001
ENTRYPOINT ["agent-operator"]

FROM runtime AS service
LABEL org.opencontainers.image.title="moorage-service" \
      org.opencontainers.image.description="Moorage agent service: an LLM agent behind a production HTTP shell"
COPY --from=build-service /app/.venv /app/.venv
# Containers listen beyond loopback; the port is the one EXPOSEd and probed.
ENV AGENT_HOST=0.0.0.0 \
    AGENT_PORT=8080
EXPOSE 8080
USER 10001:10001
# Python's standard library instead of curl: nothing added to the image for the check.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AGENT_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["agent-service"]

# syntax=docker/dockerfile:1
# The light image, no torch: the echoforge CLI, the HTTP API (`echoforge serve`), the webhook delivery worker
# (`celery -A producer.webhooks.app worker`) and Flower.
#   docker build -f deploy/producer.Dockerfile -t echoforge-producer .
# The API's libraries (fastapi, uvicorn, sse-starlette, python-multipart, httpx) are core dependencies of the
# package, so '.[flower]' installs them; tests/integration/test_deploy.py checks that every library producer/ imports
# is installed here.
# Flower runs `celery -A control_app flower` (deploy/control_app.py): the workers' Celery settings (visibility
# timeout, JSON) without importing worker code, which needs torch.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY producer ./producer
COPY worker ./worker
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt '.[flower]'

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --uid 10001 --create-home --home-dir /home/echoforge echoforge \
    && mkdir -p /data /downloads && chown echoforge:echoforge /data /downloads
COPY --from=build /opt/venv /opt/venv
COPY deploy/control_app.py /home/echoforge/control_app.py
WORKDIR /home/echoforge
USER 10001
EXPOSE 5555 8000
CMD ["echoforge", "--help"]

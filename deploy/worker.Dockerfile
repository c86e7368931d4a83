# syntax=docker/dockerfile:1
# EchoForge worker images, from the repository root:
#   docker build -f deploy/worker.Dockerfile --target cuda -t echoforge-worker:cuda .   (default target)
#   docker build -f deploy/worker.Dockerfile --target cpu  -t echoforge-worker:cpu .
#
# Base: python:3.11-slim, not an nvidia/cuda image. torch 2.9.1 from PyPI is a CUDA 12.8 build that carries its
# own CUDA libraries as nvidia-*-cu12 wheels, pinned in constraints.txt exactly as CI installs them; a CUDA base
# image would add a second, unused copy of those libraries and a system Python other than 3.11. The host needs
# only an NVIDIA driver new enough for CUDA 12.8 (>= 570) and the NVIDIA Container Toolkit, which mounts libcuda
# into the container. The CPU variant takes torch's CPU wheel (same version, no CUDA libraries: ~1 GB, not ~8 GB).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS source
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY producer ./producer
COPY worker ./worker

FROM source AS build-cuda
RUN --mount=type=cache,target=/root/.cache/pip pip install -c constraints.txt '.[worker]'

FROM source AS build-cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu '.[worker]'

FROM ${PYTHON_IMAGE} AS runtime
# ECHOFORGE_TORCH_COMPILE needs a C/C++ compiler (inductor's CPU kernels; Triton's launchers on CUDA):
#   docker build ... --build-arg WITH_COMPILER=1 (about 200 MB more). Without one, a compile fails and runs eagerly.
ARG WITH_COMPILER=0
RUN if [ "$WITH_COMPILER" = 1 ]; then apt-get update && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*; fi
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HOME=/cache/huggingface \
    TORCHINDUCTOR_CACHE_DIR=/cache/inductor
RUN useradd --uid 10001 --create-home --home-dir /home/echoforge echoforge \
    && mkdir -p /cache/huggingface /cache/inductor && chown echoforge:echoforge /cache/huggingface /cache/inductor
WORKDIR /home/echoforge
# The health checks run `celery -A control_app inspect ping` from here: no torch import for a probe.
COPY deploy/control_app.py ./control_app.py
USER 10001
# One Celery process per GPU; SIGTERM (docker stop, Kubernetes) is Celery's warm shutdown.
CMD ["celery", "-A", "worker.app", "worker", "--pool", "prefork", "--concurrency", "1", \
     "--queues", "echoforge.narration", "--hostname", "worker@%h", "--loglevel", "INFO"]

FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
ENV ECHOFORGE_DEVICE=cpu

FROM runtime AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# syntax=docker/dockerfile:1
# Two images from one file (docker compose builds both, see docker-compose.yml):
#   docker build --target service -t obstacle-service .   the HTTP API: slim, no torch
#   docker build --target worker  -t obstacle-worker  .   the Celery worker: CUDA torch
# Configuration is OBSTACLE_* environment variables (`obstacle serve --help`).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OBSTACLE_DATA_DIR=/data
RUN useradd --create-home --uid 10001 obstacle \
    && mkdir -p /data /artifacts \
    && chown obstacle:obstacle /data /artifacts
WORKDIR /home/obstacle

# One wheel of the package; each image installs it with its own extra.
FROM base AS wheel
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip wheel --no-deps --wheel-dir /wheels /src

FROM base AS service
# Add s3fs, gcsfs, ... here for an object-store OBSTACLE_ARTIFACT_URL.
ARG EXTRA_PACKAGES=""
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/*.whl)[service]" ${EXTRA_PACKAGES}
USER obstacle
ENV OBSTACLE_HOST=0.0.0.0 OBSTACLE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
# Brings the database schema up to date, then serves; the broker and workers run elsewhere.
CMD ["obstacle", "serve", "--api-only"]

FROM base AS worker
# torch from PyPI is the CUDA build on Linux x86_64 (its CUDA libraries come as wheels): the worker
# uses the GPUs it is given (one process per GPU) and runs on the CPU without them.
ARG TORCH_VERSION=2.13.0
ARG EXTRA_PACKAGES=""
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "torch==${TORCH_VERSION}" "$(ls /wheels/*.whl)[worker]" ${EXTRA_PACKAGES}
USER obstacle
# Healthy while one of this container's worker nodes answers `celery inspect ping` (via the broker).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "-m", "obstacle.workers.health"]
CMD ["obstacle", "worker"]

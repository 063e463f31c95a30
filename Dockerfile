# The worker image for GPU (and CPU) work pools: CUDA torch, this repository at /opt/lmforge,
# installed. `make image` builds it as lmforge:cuda, the image deploy/*-gpu.json default to.
# A flow run in it loads flows/stage.py from /opt/lmforge and runs its stage in a fresh clone
# of the controller's commit (LMFORGE_WORKER_DIR), so the image needs rebuilding only when the
# dependencies change, not for every commit.
FROM python:3.11-slim

# git: workers fetch the controller's commit; DVC drives the stages through it too.
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/lmforge
ARG TORCH_VERSION=2.13.0
# PyPI's Linux torch wheel is the CUDA build (its CUDA libraries come as pip packages).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"
# The dependencies first (a layer that survives code changes), then the code: exactly
# requirements.lock, as `make install` does; then the `remote` extra (dvc-s3), which the lock
# leaves out, resolved around the locked versions.
COPY pyproject.toml README.md requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock \
    && mkdir -p components pipelines flows cli && pip install --no-cache-dir ".[remote]" && pip uninstall -y lmforge \
    && pip check
COPY . .
RUN pip install --no-cache-dir --no-deps -e . && git config --global --add safe.directory '*'

ENV LMFORGE_WORKER_DIR=/srv/lmforge/clone \
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

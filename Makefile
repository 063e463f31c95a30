# Two commands on a fresh machine: `make demo` (whole pipeline, built-in corpus) and `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
# dvc.yaml runs `python -m pipelines.<stage>`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install lock ui-check demo test test-fast deps pipeline summary clean audit gpu-check mlflow-server image

install: $(STAMP)

# requirements.lock pins every package but torch, with hashes (`make lock` writes it from
# pyproject.toml). torch comes first, at TORCH_VERSION, with its own deps: the CUDA build and
# its nvidia-* wheels where a GPU answers, else the CPU build; one hash list cannot hold both.
# Then the lock exactly (--no-deps: no resolver, nothing unlocked slips in), our code, `pip check`.
LOCK := requirements.lock
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# CUDA torch where an NVIDIA GPU answers, else the CPU build (a local +cpu wheel or PyTorch's CPU index).
	if nvidia-smi -L >/dev/null 2>&1; then \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	else \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Re-resolve pyproject.toml's ranges into requirements.lock (pins and sha256 hashes; torch left
# to the install above). pip-tools lives in its own venv, so the project's stays exactly the lock;
# pip-compile, unlike uv and poetry, sees pip's find-links (a local +cpu torch wheel) too.
# Without LOCK_ARGS it keeps the pins the ranges still allow: a pyproject edit changes only what it must.
LOCK_TOOLS := $(VENV)/lock-tools
LOCK_ARGS ?=  # `make lock LOCK_ARGS=--upgrade` moves every pin to the newest release the ranges allow
lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install -q pip-tools==7.7.0; }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOLS)/bin/pip-compile --quiet --generate-hashes --strip-extras \
	  --extra test --unsafe-package torch --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) \
	  --output-file $(LOCK) pyproject.toml
	$(PYTHON) -m components.registry.environment --stamp

demo: install
	$(BIN)/dvc repro
	$(BIN)/lmforge summary

pipeline: install
	$(BIN)/lmforge run

summary: install
	$(BIN)/lmforge summary

test: install
	$(BIN)/python -m pytest -q --durations=15

# The GPU check (benchmarks/gpu_check.py): no install, no network. It runs under the first of
# the venv's python, python3 and python that imports torch (a GPU machine's own), and needs only
# torch, transformers (and what it installs: tokenizers, safetensors, numpy, pyyaml); without
# CUDA it is a CPU dry run at tiny shapes.
GPU_CHECK_ARGS ?=
gpu-check:
	@py=$$(for p in "$(BIN)/python" python3 python; do "$$p" -c 'import torch' 2>/dev/null && { echo "$$p"; break; }; done); \
	test -n "$$py" || { echo "error: gpu-check: no python on PATH imports torch; install torch or put its python first on PATH" >&2; exit 1; }; \
	PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" PYTHONUNBUFFERED=1 "$$py" -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# Everything but the end-to-end runs through DVC/Prefect (marked slow): 585 tests, 8 min 55 s on two
# AMD EPYC cores shared with a pipeline run (2026-12-07; 478 took 1 min 25 s on a lightly loaded Intel Xeon). `pytest tests/train` (or any folder) runs one area.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Rewrite dvc.yaml's code deps from what each stage imports (tests/test_dvc_deps.py checks them).
deps:
	test -x $(BIN)/python || $(MAKE) install
	$(BIN)/python tests/code_deps.py --write

# Each tool's own UI after a tiny pipeline run, in headless Chromium (tests/ui_check.py): the MLflow
# registry, the Prefect flow run, GX's Data Docs. Screenshots and server logs in reports/ui/
# (git-ignored); one JSON line at the end. Not in `make test`: it needs a browser (Debian's
# chromium, installed here with apt-get when missing: root) and about 10 minutes on 2 cores.
ui-check: install
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	$(BIN)/python tests/ui_check.py --out reports/ui

# Known vulnerabilities in the installed dependencies (needs network: PyPI / OSV advisories).
audit: install
	$(BIN)/pip install -q pip-audit
	$(BIN)/pip-audit --skip-editable

# One MLflow for every worker of `lmforge run --pools`: a database backend and an artifact store,
# served on 127.0.0.1 (put it behind your own proxy or VPN for other machines). Workers set
# MLFLOW_TRACKING_URI=http://<host>:$(MLFLOW_PORT). For a team: a PostgreSQL URI and s3:// artifacts.
MLFLOW_PORT ?= 5000
MLFLOW_BACKEND ?= sqlite:///$(abspath mlflow-server)/mlflow.db
MLFLOW_ARTIFACTS ?= $(abspath mlflow-server)/artifacts
mlflow-server: install
	mkdir -p mlflow-server
	$(BIN)/mlflow server --backend-store-uri "$(MLFLOW_BACKEND)" --artifacts-destination "$(MLFLOW_ARTIFACTS)" \
	  --host 127.0.0.1 --port $(MLFLOW_PORT)

# The worker image (Dockerfile): CUDA torch and this repository at /opt/lmforge.
IMAGE ?= lmforge:cuda
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf data models reports mlflow.db mlartifacts checkpoints

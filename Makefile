# One command to set up and run the quickstart, one to set up and test.
PYTHON ?= python3
VENV ?= .venv
# Override to pick another torch build, e.g. `make setup TORCH_SPEC=torch` on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
SPEC ?= experiments/quickstart.yaml
# Test processes (pytest-xdist): one per core by default; TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= auto

.PHONY: setup run test bench ui clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Torch first, only when missing: a bare `torch` requirement would pull GBs of CUDA wheels.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

run: setup
	$(BIN)/gencv run $(SPEC)

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

bench: setup
	$(BIN)/python benchmarks/cv_overhead.py

ui: setup
	$(BIN)/gencv ui

clean:
	rm -rf $(VENV) build *.egg-info

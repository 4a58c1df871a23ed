# histograph — `make train` trains the default experiment, `make test` runs the offline test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
# One torch intra-op thread: on small CPUs (2 cores) more threads make small-graph training erratic
# and up to 30x slower. Override with `make ... OMP_NUM_THREADS=4` on bigger machines.
export OMP_NUM_THREADS ?= 1
export OUTDATED_IGNORE := 1
# Tests and CI use ../shared/data as the data mirror when it exists and no mirror is set.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(HISTOGRAPH_DATA_MIRROR),)
ifneq ($(wildcard $(SHARED_DATA)/TUDataset),)
TEST_ENV := HISTOGRAPH_DATA_MIRROR=$(SHARED_DATA)
endif
endif
ARGS ?=

.PHONY: install train test test-all test-slurm bench bench-quick bench-readout bench-gpu lint clean clean-venv help

help:
	@echo "make install | train [ARGS='key=value ...'] | test | test-all | test-slurm | bench | bench-quick | bench-readout | bench-gpu | clean"

install: $(VENV)/.installed

# torch==2.13.0 is pinned inside requirements.txt so pip never pulls a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt -c constraints.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

train: install
	$(PYTHON) train.py $(ARGS)

test: install
	$(TEST_ENV) WANDB_MODE=offline $(PYTHON) -m pytest -q

test-all: install
	$(TEST_ENV) WANDB_MODE=offline $(PYTHON) -m pytest -q -m ""

# The Slurm tests alone (slow ones included), on a local single-node Slurm they start (as root;
# scripts/slurm/start.sh) and stop again.
test-slurm: install
	$(TEST_ENV) WANDB_MODE=offline HISTOGRAPH_SLURM_TESTS=1 $(PYTHON) -m pytest -q -m slurm tests/test_slurm.py

# Speed tables (docs/benchmarks.md): framework overhead vs a bare PyG loop, scaling with depth and
# graph size, start-up; then the readout benchmark. One process at a time, one torch thread.
bench: install
	$(TEST_ENV) $(PYTHON) scripts/bench_framework.py
	$(TEST_ENV) $(PYTHON) scripts/bench_scaling.py
	$(TEST_ENV) $(PYTHON) scripts/bench_startup.py
	$(TEST_ENV) $(PYTHON) scripts/bench_readout.py

# A few minutes: the same scripts on their smallest matrices.
bench-quick: install
	$(TEST_ENV) $(PYTHON) scripts/bench_framework.py --quick
	$(TEST_ENV) $(PYTHON) scripts/bench_scaling.py --quick
	$(TEST_ENV) $(PYTHON) scripts/bench_startup.py --repeats 1 --datasets mutag
	$(TEST_ENV) $(PYTHON) scripts/bench_readout.py --quick

bench-readout: install
	$(TEST_ENV) $(PYTHON) scripts/bench_readout.py

# On a machine with a CUDA GPU: steps/s and peak memory, bf16 autocast off and on; 8 cells at a
# time, 50 training steps an epoch (364 s on an H200 with 16 cores; GPU_CHECK_ARGS to change).
GPU_CHECK_ARGS ?= --workers 8 --limit-train-batches 50
bench-gpu: install
	$(PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf logs outputs multirun .pytest_cache

clean-venv:
	rm -rf $(VENV)

# bnlab: the two commands of the README, and a few more for developers.
#   make demo   run the main job
#   make test   run the test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Use the shared Fashion-MNIST copy when it is beside the checkout (CI, developers).
SHARED_DATA := $(abspath ../shared/datasets/fashion-mnist)
ifneq ($(wildcard $(SHARED_DATA)/train-images-idx3-ubyte.gz),)
export BNLAB_DATA_DIR ?= $(SHARED_DATA)
endif

.PHONY: all demo test lint bench clean venv

all: test

# A virtual environment with bnlab (editable) and the dev tools; torch pinned by
# constraints.txt to the CPU wheel.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The d2l batch-norm chapter reproduced (4 variants x 10 epochs); a second run reuses
# the finished runs and prints the results again. Ends with the page of the results.
demo: $(STAMP)
	$(BIN)/bnlab check
	$(BIN)/bnlab d2l --out runs/d2l --resume
	$(BIN)/bnlab report runs/d2l -o runs/report.html --title "bnlab demo: the d2l batch-norm chapter"

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_batchnorm.py --out runs/bench
	$(BIN)/python benchmarks/bench_family.py --out runs/bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis

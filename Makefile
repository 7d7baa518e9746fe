# The two commands: `make demo` (set up, run the main job) and `make test` (set up, run the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt

.PHONY: demo test lint bench clean setup

$(BIN)/activate:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/alignlab pipeline

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_generate.py
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs

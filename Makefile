# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# exactly this torch: on these machines pip finds a local CPU build of it; a looser pin
	# (or plain PyPI elsewhere) pulls the CUDA build with GBs of nvidia packages
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sigprop demo --out demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_meanfield.py
	$(BIN)/python benchmarks/bench_spectrum.py
	$(BIN)/python benchmarks/bench_pruning.py --model conv --threads 1
	$(BIN)/python benchmarks/bench_pruning.py --model mlp --threads 1

clean:
	rm -rf $(VENV) demo .pytest_cache

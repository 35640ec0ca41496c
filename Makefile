# Each target installs what it needs into .venv first (torch==2.13.0 is the CPU wheel on these machines).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test lint format bench clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hier-ps train configs/demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/pip install -q rocksdict fbgemm-gpu-cpu==1.8.0
	$(BIN)/python benchmarks/e2e_bench.py --rows 400000 --repeats 3
	$(BIN)/python benchmarks/ssd_bench.py
	$(BIN)/python benchmarks/serve_bench.py
	$(BIN)/python benchmarks/scale_bench.py
	$(BIN)/python benchmarks/hostmem_bench.py
	$(BIN)/python benchmarks/kernel_bench.py
	$(BIN)/python benchmarks/interaction_bench.py
	$(BIN)/python benchmarks/stage_bench.py

clean:
	rm -rf runs .pytest_cache .ruff_cache

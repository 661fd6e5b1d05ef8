# gnn-attn: `make train` and `make test` set everything up themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch is pinned here (not in pyproject.toml) so that pip takes the CPU wheel this
# machine keeps on disk; users with GPUs install their own torch build first.
TORCH  ?= torch==2.13.0
ARGS   ?=
# test processes (pytest-xdist; each file's tests stay in one, so a module's trained
# fixture is trained once); each gets cores // TEST_WORKERS torch threads
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install train test test-fast lint format clean bench bench-scale table paper-table

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=77" wheel
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: install
	$(BIN)/python train.py $(ARGS)

test: install
	$(PYTEST) $(ARGS)

# The edit loop: every test but those marked slow (CI runs all of `make test`).
test-fast: install
	$(PYTEST) -m "not slow" $(ARGS)

bench: install
	$(BIN)/python benchmarks/bench.py $(ARGS)

# Full-batch vs mini-batch GAT on synthetic graphs of 10k, 100k, 1M, 3M nodes (~6 min).
bench-scale: install
	$(BIN)/python benchmarks/bench_scale.py $(ARGS)

table: install
	@test -n "$(SWEEP)" || { echo "Error: pass SWEEP=multirun/<date>/<time>"; exit 2; }
	$(BIN)/python -m gnn_attn.analysis.aggregate $(SWEEP)

# Runs the whole table (10 seeds per cell, each cell's seeds one stack), then aggregates it.
# The paper's 100 runs per cell: make paper-table ARGS=experiment=paper_table_100
# An interrupted one continues: make paper-table SWEEP=<its dir> (and the same ARGS).
paper-table: install
	@dir=$(if $(SWEEP),$(SWEEP),multirun/paper_table/$$(date +%Y-%m-%d_%H-%M-%S)); \
	$(BIN)/python train.py experiment=paper_table hydra.sweep.dir=$$dir $(ARGS); \
	status=$$?; \
	$(BIN)/python -m gnn_attn.analysis.aggregate $$dir; \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf outputs .cache .pytest_cache .ruff_cache

# The README contract: `make run` and `make test` work on a fresh clone.
# Set-up is stamp-based, so a second call with everything installed costs well under 10 s.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.prm_check-installed
CONSTRAINTS := $(VENV)/constraints.txt
PYTEST_ARGS ?=
RUN_ARGS    ?=

.PHONY: run test bench lint format clean setup

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The constraints file pins torch so no later install swaps in a CUDA build.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	echo "$(TORCH_SPEC)" > $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/prm-check run experiments/default.prm.toml $(RUN_ARGS)

# The unit/property/plugin suite, then the default experiment in its quick profile as pytest
# items, gated against the committed baseline. Hypothesis checks (check[...]) are findings that
# `make run` reports; CI gates on pipeline health, budgets, fidelity and regressions.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m pytest experiments/default.prm.toml --prm-profile quick -k "not check" \
		--prm-baseline reports/baseline.json -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks -p no:randomly --benchmark-json=reports/bench/pytest-benchmark.json $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

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

# Benchmarks run in their own venv: the peer libraries (PyHessian, curvlinops, ...) must never
# become runtime dependencies. curvlinops -> backpack -> torchvision would swap in a CUDA torch
# (or, constrained, a torchvision that cannot import beside CPU torch), so that chain goes in
# with --no-deps and torchvision is never installed. hessian-eigenthings exists only as a PyPI
# pre-release; its install is logged (a failure shows up as a measured row). `make bench` runs
# the peer comparison and the scale ladder and renders docs/benchmarks.md; BENCH_FULL=1 adds
# the curvature and budget grids (bench_curvature.py, bench_budget.py). Timings are wall-clock
# on a shared machine.
BENCH_VENV   ?= .venv-bench
BENCH_FULL   ?=
BENCH_BIN    := $(BENCH_VENV)/bin
BENCH_STAMP  := $(BENCH_VENV)/.bench-installed
BENCH_CONSTR := $(BENCH_VENV)/constraints.txt
PEERS_NODEPS := curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 \
                unfoldNd==0.2.3 linear_operator==0.6.1
PEERS        := pyhessian==0.1 einops opt-einsum
BENCH_SUITES := $(if $(BENCH_FULL),benchmarks,benchmarks/bench_peers.py benchmarks/bench_scale.py)

$(BENCH_STAMP): pyproject.toml Makefile
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv $(BENCH_VENV)
	echo '*' > $(BENCH_VENV)/.gitignore
	$(BENCH_BIN)/python -m pip install --quiet --upgrade pip
	echo "$(TORCH_SPEC)" > $(BENCH_CONSTR)
	$(BENCH_BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BENCH_BIN)/python -m pip install --quiet -c $(BENCH_CONSTR) -e ".[dev]" $(PEERS)
	$(BENCH_BIN)/python -m pip install --quiet --no-deps -c $(BENCH_CONSTR) $(PEERS_NODEPS)
	-$(BENCH_BIN)/python -m pip install -c $(BENCH_CONSTR) hessian-eigenthings==1.0.0a5 \
		> $(BENCH_VENV)/hessian-eigenthings-install.log 2>&1
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	mkdir -p reports/bench
	$(BENCH_BIN)/python -m pytest $(BENCH_SUITES) -p no:randomly -p no:cacheprovider -s \
		--benchmark-storage=file://reports/bench/history --benchmark-autosave \
		--benchmark-json=reports/bench/pytest-benchmark.json $(PYTEST_ARGS); \
		status=$$?; $(BENCH_BIN)/python benchmarks/render.py && exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# Two commands on a fresh machine: `make demo` and `make test`. Both (re)build .venv from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test e2e lint typecheck browser airflow soak bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m airflow_parallel_run.demo
	$(BIN)/python -m airflow_parallel_run.demo --airflow

# A local Airflow 3 stack (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1 with the example DAGs.
airflow: install
	$(BIN)/python tools/airflow_stack.py

lint: install
	$(BIN)/ruff check airflow_parallel_run tests dags bench docker/dags tools
	$(BIN)/ruff format --check airflow_parallel_run tests dags bench docker/dags tools

typecheck: install
	$(BIN)/mypy

# Headless Chromium for the browser checks (Debian's package; Playwright drives it, never downloads one).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: install lint typecheck browser
	bash .ci/pytest.sh

# End-to-end tests on a real Airflow stack (api-server, scheduler, dag-processor, triggerer) and a browser.
e2e: install browser
	$(BIN)/python -m pytest tests/e2e -q -rfEs --durations=10

# Long fault-injection variants (many kills, a long property-based run).
soak: install
	$(BIN)/python -m pytest -m soak tests/faults -q -rfEs --durations=10

# Benchmarks against peers measured in the same run (ratios); `--quick` for a smoke run.
bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache

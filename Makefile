# Two commands on a fresh machine: `make demo` and `make test`. Both (re)build .venv from constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test e2e lint typecheck browser postgres airflow soak bench clean

install: $(STAMP)

# setup.py builds the native CSV record scan: a C compiler and Python's headers (Debian's gcc and python3-dev
# where they are missing; the install itself succeeds without them, and the tests say the scan is not built).
$(STAMP): pyproject.toml constraints.txt setup.py airflow_parallel_run/core/inputs/_record_scan.c
	@command -v cc >/dev/null || command -v gcc >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null)
	@$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev >/dev/null)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m airflow_parallel_run.demo
	$(BIN)/python -m airflow_parallel_run.demo --airflow

# A local Airflow 3 stack (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1 with the example DAGs,
# on a PostgreSQL server of its own (docs/airflow-local-stack.md).
airflow: install postgres
	$(BIN)/python tools/airflow_stack.py

lint: install
	$(BIN)/ruff check airflow_parallel_run tests dags bench docker/dags tools examples
	$(BIN)/ruff format --check airflow_parallel_run tests dags bench docker/dags tools examples

typecheck: install
	$(BIN)/mypy

# Headless Chromium for the browser checks (Debian's package; Playwright drives it, never downloads one).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# PostgreSQL for the local Airflow stack (Debian's package: the stack runs its own cluster with initdb and
# pg_ctl, never the package's). The server refuses to run as root: as root the stack runs it as the
# unprivileged `postgres` account, which the package creates (and this target when it is missing).
PG_BIN := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres:
	@test -n "$(PG_BIN)" || command -v initdb >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  { echo "PostgreSQL is needed: apt-get install -y postgresql (as root)" >&2; exit 1; }
	@test "$$(id -u)" != 0 || id -u postgres >/dev/null 2>&1 || \
	  useradd --system --user-group --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres

test: install lint typecheck browser postgres
	bash .ci/pytest.sh

# End-to-end tests on a real Airflow stack (api-server, two schedulers, dag-processor, triggerer, PostgreSQL)
# and a browser.
e2e: install browser postgres
	$(BIN)/python -m pytest tests/e2e -q -rfEs --durations=10

# Long fault-injection variants (many kills, a long property-based run).
soak: install
	$(BIN)/python -m pytest -m soak tests/faults -q -rfEs --durations=10

# Benchmarks against peers measured in the same run (ratios); `--quick` for a smoke run.
bench: install postgres
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache
	find airflow_parallel_run -name '*.so' -delete  # the native record scan, built by `make install`

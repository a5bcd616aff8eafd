# Two commands matter: `make demo` runs the site, `make test` runs the suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DEMO_ENV := DJANGO_SETTINGS_MODULE=loyalty_site.settings.dev PATH="$(CURDIR)/$(BIN):$$PATH"
TEST_ENV := DJANGO_SETTINGS_MODULE=loyalty_site.settings.test
# Test processes (pytest-xdist, a module's tests together in one): each has its own test
# database and Redis database (loyalty_site/settings/test.py). TEST_WORKERS=0 runs in this process.
# Tests marked `serial` run after, in one process (pyproject.toml says why).
TEST_WORKERS ?= 2

.PHONY: demo test lint format messages translations venv clean bench bench-analytics bench-imports fuzz audit

# The environment is rebuilt when a requirements file changes.
$(BIN)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.installed

translations: venv
	$(DEMO_ENV) $(PY) manage.py compile_translations

# Runs web (http://127.0.0.1:8000), one Celery worker and beat; Ctrl-C stops all.
demo: venv translations
	mkdir -p var
	$(DEMO_ENV) $(PY) manage.py migrate --noinput
	$(DEMO_ENV) $(PY) manage.py seed_demo
	@echo "Starting web, worker and beat on http://127.0.0.1:8000 (Ctrl-C stops all)"
	$(DEMO_ENV) $(BIN)/honcho -f Procfile.demo start

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: venv translations lint
	$(TEST_ENV) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS)
	$(TEST_ENV) $(BIN)/pytest -m serial $(PYTEST_ARGS)

# Extract new strings into every catalogue (needs GNU gettext), then translate them.
messages: venv
	$(DEMO_ENV) $(PY) manage.py makemessages --all --no-obsolete --ignore=.venv --ignore=var --ignore=tests --ignore=bench --ignore=staticfiles --ignore=test-artifacts

# Benchmarks of the integration API (PostgreSQL and Redis on 127.0.0.1; about 7 minutes):
# seeds the database loyalty_bench, runs gunicorn and the load, prints the figures
# (bench/RESULTS.md). Options: make bench BENCH_ARGS="--scenarios customers --reuse-db".
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

# Benchmark of the analytics (issue 5; PostgreSQL and Redis on 127.0.0.1; about 20 minutes):
# seeds loyalty_bench_analytics with 1,000,000 customers and 10,000,000 purchases, measures the
# full refresh, the incremental update and the model fits against the pandas reference, prints
# the figures as JSON (bench/RESULTS.md). Options: make bench-analytics BENCH_ARGS="--reuse-db".
bench-analytics: venv
	$(PY) bench/analytics.py $(BENCH_ARGS)

# Benchmark of import_purchases (issue 3; PostgreSQL on 127.0.0.1; about 5 minutes): seeds the
# template database loyalty_bench_imports_seed (200,000 customers), writes a 1,000,000-row CSV
# under var/, runs history-only, the re-run, --award-points and its re-run on fresh copies
# (loyalty_bench_imports), and PostgreSQL's own COPY of the same file, the ceiling; prints rows/s,
# CPU seconds and the ratios as JSON (bench/RESULTS.md). Options: make bench-imports
# BENCH_ARGS="--reuse-seed --phases history,copy".
bench-imports: venv
	$(PY) bench/imports.py $(BENCH_ARGS)

# A longer fuzzing session of the integration API from its OpenAPI schema (schemathesis;
# the suite runs a short one): FUZZ_EXAMPLES per operation and a new seed each time, printed
# so that `make fuzz FUZZ_SEED=...` replays a failure.
FUZZ_EXAMPLES ?= 300
FUZZ_SEED ?= $(shell date +%s)
fuzz: venv
	@echo "fuzz: $(FUZZ_EXAMPLES) examples per operation, seed $(FUZZ_SEED)"
	$(TEST_ENV) FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(BIN)/pytest \
		tests/rewards/test_api_fuzz.py -k every_api_operation --timeout=3600 -p no:cacheprovider $(PYTEST_ARGS)

# Security checks (.ci/run runs them before the suite, in about 20 s):
# - bandit, a static scan of our code for medium and high findings (skipped checks and why:
#   [tool.bandit] in pyproject.toml);
# - pip-audit, the pinned requirements against PyPI's vulnerability data (--strict: a package it
#   cannot look up fails the audit). It needs PyPI's JSON API: when it cannot audit from this
#   machine the target says so and fails, unless AUDIT_OFFLINE=skip (CI behind a proxy), which
#   skips the dependency audit loudly. It never passes without having checked.
AUDIT_OFFLINE ?= fail
audit: venv
	$(BIN)/bandit -c pyproject.toml -r accounts rewards campaigns analytics loyalty_site -ll -q
	@echo "audit: bandit found no medium or high issue"
	@out=$$($(BIN)/pip-audit -r requirements.txt --strict --progress-spinner off 2>&1); rc=$$?; \
	echo "$$out"; \
	if [ $$rc -ne 0 ] && echo "$$out" | grep -qiE "could not be audited|connection|resolve|timed out|max retries"; then \
		echo "audit: pip-audit could NOT check the requirements: its vulnerability service (PyPI's JSON API)"; \
		echo "audit: is unreachable from here or does not know these releases. Dependencies NOT audited."; \
		if [ "$(AUDIT_OFFLINE)" = "skip" ]; then echo "audit: AUDIT_OFFLINE=skip: going on without it"; exit 0; fi; \
		exit 2; \
	fi; \
	if [ $$rc -eq 0 ]; then echo "audit: pip-audit found no known vulnerability"; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) var staticfiles

# Two commands matter: `make demo` runs the site, `make test` runs the suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
DEMO_ENV := DJANGO_SETTINGS_MODULE=loyalty_site.settings.dev PATH="$(CURDIR)/$(BIN):$$PATH"
TEST_ENV := DJANGO_SETTINGS_MODULE=loyalty_site.settings.test

.PHONY: demo test lint format messages translations venv clean bench

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
	$(TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

# Extract new strings into every catalogue (needs GNU gettext), then translate them.
messages: venv
	$(DEMO_ENV) $(PY) manage.py makemessages --all --no-obsolete --ignore=.venv --ignore=var --ignore=tests

# Benchmarks of the integration API (PostgreSQL and Redis on 127.0.0.1; about 7 minutes):
# seeds the database loyalty_bench, runs gunicorn and the load, prints the figures
# (bench/RESULTS.md). Options: make bench BENCH_ARGS="--scenarios customers --reuse-db".
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var staticfiles

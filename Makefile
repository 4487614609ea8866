# Two commands for a fresh machine: `make demo` (the monitored example app) and `make test`.
#   PORT=8000 make demo     the demo on 127.0.0.1:8000 (default: a free port)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?=
LOWEST ?= .venv-lowest
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_LOWEST ?= .venv-mlflow-lowest

.PHONY: demo demo-prometheus demo-mlflow lint test test-fast test-lowest budget venv venv-mlflow venv-lowest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

## what the demo needs: mlmonitor and the example app's extras (gunicorn, scikit-learn, ...)
$(VENV)/.installed-demo: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[example]'
	touch $@

## what the tests need on top (pytest, hypothesis, promql-parser, ...)
$(VENV)/.installed-test: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[example,test]'
	touch $@

venv: $(VENV)/.installed-test

## the monitored example app under gunicorn, a burst of traffic, then serving until Ctrl-C
demo: $(VENV)/.installed-demo
	$(BIN)/python -m example_app.demo $(if $(PORT),--port $(PORT))

## the same, plus a local Prometheus and Alertmanager loading the shipped rules
## (needs: apt-get install prometheus prometheus-alertmanager)
demo-prometheus: $(VENV)/.installed-demo
	$(BIN)/python -m example_app.demo --with-prometheus $(if $(PORT),--port $(PORT))

## the same, plus a local MLflow tracking server receiving the traces (its own venv: make venv-mlflow)
demo-mlflow: $(VENV)/.installed-demo $(MLFLOW_VENV)/.installed
	$(BIN)/python -m example_app.demo --with-mlflow $(if $(PORT),--port $(PORT))

## the gates: ruff over the package, mypy --strict on it (rules in pyproject.toml, versions pinned
## in setup.cfg's `lint` extra); `make test` runs them first
$(VENV)/.installed-lint: setup.cfg | $(VENV)/.installed-test
	$(BIN)/pip install -q -e '.[lint]'
	touch $@

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check mlmonitor; ruff=$$?; $(BIN)/mypy && exit $$ruff

## the whole test suite (real gunicorn, Prometheus, Alertmanager, OTLP receiver on 127.0.0.1), after the gates
## (two pytest workers, one test file each at a time: most tests wait on real servers)
test: lint $(VENV)/.installed-test $(MLFLOW_VENV)/.installed $(MLFLOW_LOWEST)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not budget"

## the instruction budget (benchmarks/budget.toml): callgrind counts of the request path against
## the peers' in the same run, alone on the machine's cores (needs Debian's valgrind)
budget: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m budget -p no:cacheprovider

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

## the fast tests on the lowest versions setup.cfg allows, in a second venv (CI runs it after `test`):
## every `name>=version` pinned to `name==version`, wheels only, so a wrong lower bound fails here
$(LOWEST)/.installed: setup.cfg pyproject.toml tests/test_good_guest_bounds.py | $(VENV)/.installed-test
	$(PYTHON) -m venv $(LOWEST)
	$(BIN)/python tests/test_good_guest_bounds.py > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/pip install -q --only-binary=:all: -c $(LOWEST)/constraints.txt -e '.[test,otlp,gunicorn]'
	touch $@

venv-lowest: $(LOWEST)/.installed

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest -q -n 2 -m "not slow" -p no:cacheprovider

## MLflow (its server, and apps that import it) in its own venv: mlflow pins gunicorn<27;
## the tests in tests/test_mlflow_server.py run them from there and talk HTTP to them
$(MLFLOW_VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install -q -e '.[otlp,mlflow]' 'mlflow>=3.7,<4' 'gunicorn<27'
	touch $@

## an MLflow app's side at the lowest versions allowed (mlflow-skinny, OpenTelemetry, Flask):
## tests/test_mlflow_server.py runs the connected mode from it against the server above
$(MLFLOW_LOWEST)/.installed: setup.cfg pyproject.toml tests/test_good_guest_bounds.py | $(VENV)/.installed-test
	$(PYTHON) -m venv $(MLFLOW_LOWEST)
	$(BIN)/python tests/test_good_guest_bounds.py otlp,mlflow > $(MLFLOW_LOWEST)/constraints.txt
	$(MLFLOW_LOWEST)/bin/pip install -q --only-binary=:all: -c $(MLFLOW_LOWEST)/constraints.txt -e '.[otlp,mlflow]'
	touch $@

venv-mlflow: $(MLFLOW_VENV)/.installed $(MLFLOW_LOWEST)/.installed

clean:
	rm -rf $(VENV) $(LOWEST) $(MLFLOW_VENV) $(MLFLOW_LOWEST) build *.egg-info .pytest_cache

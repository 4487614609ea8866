# Two commands for a fresh machine: `make demo` (the monitored example app) and `make test`.
#   PORT=8000 make demo     the demo on 127.0.0.1:8000 (default: a free port)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?=

.PHONY: demo demo-prometheus test test-fast venv clean

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

## the whole test suite (real gunicorn, Prometheus, Alertmanager, OTLP receiver on 127.0.0.1)
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

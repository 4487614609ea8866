# Two commands for a fresh machine: `make demo` (the monitored example app) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-prometheus test test-fast venv clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[example,test,bench]'
	touch $(STAMP)

venv: $(STAMP)

## the monitored example app under gunicorn, a burst of traffic, then serving until Ctrl-C
demo: $(STAMP)
	$(BIN)/python -m example_app.demo

## the same, plus a local Prometheus and Alertmanager loading the shipped rules
## (needs: apt-get install prometheus prometheus-alertmanager)
demo-prometheus: $(STAMP)
	$(BIN)/python -m example_app.demo --with-prometheus

## the whole test suite (real gunicorn, Prometheus, Alertmanager, OTLP receiver on 127.0.0.1)
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# `make pipeline` and `make test` do all the set-up on a fresh machine (Python 3.10-3.12, git).
VENV := .venv
PYTHON := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: pipeline test test-fast lint bench params mlflow-ui

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

pipeline: $(VENV)/.installed  ## every stage of dvc.yaml (download ... publish) on the built-in data
	dvc repro

test: $(VENV)/.installed  ## every test, the end-to-end DVC run and the real-data test included
	$(PYTHON) -m pytest

test-fast: $(VENV)/.installed  ## unit tests only
	$(PYTHON) -m pytest -m "not slow"

lint: $(VENV)/.installed  ## ruff: the lint rules and the formatting of pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed  ## stage timings, training throughput per precision, a whole real-data run (docs/performance.md)
	$(PYTHON) -m bench.run

params: $(VENV)/.installed  ## recompose params.yaml after editing conf/
	$(PYTHON) -m pipeline.entrypoint

mlflow-ui: $(VENV)/.installed  ## the tracking UI on http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db

# `make pipeline` and `make test` do all the set-up on a fresh machine (Python 3.10-3.12, git).
VENV := .venv
PYTHON := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: pipeline test test-fast lint docs reference screenshots bench params mlflow-ui team stack-up stack-down stack-status

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"
	touch $@

$(VENV)/.team: $(VENV)/.installed
	$(PYTHON) -m pip install -e ".[dev,team]"
	touch $@

$(VENV)/.docs: $(VENV)/.installed
	$(PYTHON) -m pip install -e ".[dev,docs]"
	touch $@

pipeline: $(VENV)/.installed  ## every stage of dvc.yaml (download ... publish) on the built-in data
	dvc repro

test: $(VENV)/.team  ## every test: end-to-end DVC runs, the team stack, distributed searches, the real-data test
	$(PYTHON) -m pytest

test-fast: $(VENV)/.installed  ## unit tests only
	$(PYTHON) -m pytest -m "not slow"

lint: $(VENV)/.installed  ## ruff: the lint rules and the formatting of pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: $(VENV)/.docs  ## the documentation site (mkdocs.yml, docs/) into site/; strict: a broken link or anchor fails it, and so does a stale reference page
	$(PYTHON) -m docs.reference --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

screenshots: $(VENV)/.docs  ## docs/images/mlflow-runs.png: a small sweep's runs in MLflow's UI, photographed in Chromium (a few minutes)
	$(PYTHON) -m docs.screenshots

reference: $(VENV)/.installed  ## rewrite the generated parts of docs/configuration.md and docs/cli.md from the code and conf/
	$(PYTHON) -m docs.reference

bench: $(VENV)/.installed  ## stage timings, training throughput per precision, a whole real-data run (docs/performance.md)
	$(PYTHON) -m bench.run

params: $(VENV)/.installed  ## recompose params.yaml after editing conf/
	$(PYTHON) -m pipeline.stages.entrypoint

mlflow-ui: $(VENV)/.installed  ## the tracking UI on http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db

team: $(VENV)/.team  ## the `team` extra: PostgreSQL's driver, SeaweedFS, S3 and DVC's S3 remote (docs/team.md)

stack-up: $(VENV)/.team  ## PostgreSQL, SeaweedFS's S3 and `mlflow server` on 127.0.0.1, data in .stack/; prints the exports
	@$(PYTHON) -m pipeline.team.stack up

stack-down: $(VENV)/.team  ## stop the stack (its data stays in .stack/)
	@$(PYTHON) -m pipeline.team.stack down

stack-status: $(VENV)/.team  ## what of the stack runs, where
	@$(PYTHON) -m pipeline.team.stack status

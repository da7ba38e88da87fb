# vidseq: `make demo` runs the whole pipeline on the demo data, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install venv-here test demo ui bench clean clean-all

install: venv-here $(STAMP)

# A venv names its folder in every script (.venv/bin/dvc) and in the editable install of this project:
# after the repository moved it fails (".venv/bin/dvc: not found"), after a copy it would run the
# original's code. Then it is made again here.
venv-here:
	@if [ -d $(VENV) ] && ! $(BIN)/python -P -c 'import os, sys, vidseq; sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(vidseq.__file__))) != os.path.realpath("."))' 2>/dev/null; then \
	  echo "$(VENV) was made for another folder (the repository moved or was copied): making it again"; rm -rf $(VENV); fi

# Re-installs only when pyproject.toml changed (or the venv is missing): quick and idempotent.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m training.summary

# The MLflow UI on the store the stages log to (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here).
# With MLFLOW_TRACKING_URI=http(s)://... (a team's tracking server) the server is the UI: it says where to look.
ui: install
	@$(BIN)/python -m training.ui --host 127.0.0.1  # PORT=5050 make ui for another port

bench: install
	$(BIN)/python benchmarks/preprocess.py
	$(BIN)/python benchmarks/train.py

# Pipeline outputs only: the MLflow store (mlflow.db, mlruns/: every run and registered model) is kept.
clean:
	rm -rf data/records data/demo models reports dvc_plots  # never data/raw: your own videos may live there

# Also the MLflow store: the whole run history and model registry are deleted.
clean-all: clean
	rm -rf mlruns mlflow.db

# vidseq: `make demo` runs the whole pipeline on the demo data, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# uv's resolver for `make lock`: Linux, CPython 3.11 (what CI runs); the lock is for that platform.
LOCK_PYTHON := 3.11

.PHONY: install venv-here test demo ui bench lock check-latest clean clean-all

install: venv-here $(STAMP)

# A venv names its folder in every script (.venv/bin/dvc) and in the editable install of this project:
# after the repository moved it fails (".venv/bin/dvc: not found"), after a copy it would run the
# original's code. Then it is made again here.
venv-here:
	@if [ -d $(VENV) ] && ! $(BIN)/python -P -c 'import os, sys, vidseq; sys.exit(os.path.dirname(os.path.dirname(os.path.realpath(vidseq.__file__))) != os.path.realpath("."))' 2>/dev/null; then \
	  echo "$(VENV) was made for another folder (the repository moved or was copied): making it again"; rm -rf $(VENV); fi

# Installs exactly the lock (every package at its locked version, files checked against the locked
# hashes; --no-deps: the lock is the whole resolution), then vidseq itself, editable, built with the
# locked setuptools, then removes what the lock does not hold: `pip list` is the lock plus vidseq.
# Re-installs only when the lock or pyproject.toml changed (or the venv is missing): quick and idempotent.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m tools.lockfile sync $(LOCK)
	$(BIN)/python -m pip check
	@touch $(STAMP)

# The lock again, from the newest releases inside pyproject.toml's ranges (then `make test` says
# whether they work, and `make install` installs them). Needs only the venv's python to bootstrap uv.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet "$$(grep -m1 -o '^uv==[^ ]*' $(LOCK) || echo uv)"
	$(BIN)/uv pip compile pyproject.toml --extra team --extra dev --generate-hashes --upgrade \
	  --python-version $(LOCK_PYTHON) --custom-compile-command 'make lock' --quiet --output-file $(LOCK)

# The newest releases inside the ranges, without the lock, in a throw-away venv: a smoke path on tiny
# data (preprocess, 1-epoch train, evaluate, register, predict) and the list of what differs from the
# lock. Exits non-zero when the smoke path fails. Not part of `make test`: an upstream release must
# not block a landing; run it before `make lock`, or on a schedule.
check-latest:
	$(PYTHON) -m tools.check_latest --lock $(LOCK)

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
	rm -rf data/records data/records.cache data/listing.json data/demo models reports dvc_plots  # never data/raw: your own videos may live there

# Also the MLflow store: the whole run history and model registry are deleted.
clean-all: clean
	rm -rf mlruns mlflow.db

# Shipyard — every target installs what it needs; a fresh machine needs only `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
STATE ?= state
# Token auth turns on by itself when ~/.ray/auth_token exists; be explicit.
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export MLFLOW_DISABLE_TELEMETRY ?= true
export SHIPYARD_HOME ?= $(abspath $(STATE))

.PHONY: install bytecode lock demo test check lint unit bench docs clean help mlflow-ui cluster-up cluster-down cluster-status tune learning-curve

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# --compile-bytecode: every Ray worker, job driver and CLI imports Ray, XGBoost, pandas and
# scikit-learn; without .pyc files (PYTHONDONTWRITEBYTECODE, or a read-only venv) each process
# compiles them again (`import jobs.train`: 11 s of CPU without, 3.5 s with, on 2 cores).
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --python $(PY) -q --compile-bytecode requirements.lock
	$(UV) pip install --python $(PY) -q --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create the virtualenv and install the locked dependencies

# The drift benchmark's comparison library (Evidently) in a virtualenv of its own: it does not
# import with pandas 3, and it is never a dependency of Shipyard.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: benchmarks/requirements-bench.lock $(VENV)/.installed
	test -x $(BENCH_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(BENCH_VENV)
	$(UV) pip sync --python $(BENCH_VENV)/bin/python -q benchmarks/requirements-bench.lock
	touch $@

lock:  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock

# The project's own modules as .pyc too (the venv's are compiled at install): every job driver,
# Ray worker and Serve replica would otherwise compile them again under PYTHONDONTWRITEBYTECODE
# (~0.4 s of CPU for each that imports the training code).
bytecode: install
	$(PY) -m compileall -q lib jobs serving > /dev/null

demo: bytecode  ## generate data, train, serve and A/B on a local Ray, then stop; KEEP=1 keeps the app up until Ctrl-C
	$(PY) -m shipyard.demo --state $(STATE) $${KEEP:+--keep-serving}

lint: install  ## ruff + mypy
	$(VENV)/bin/ruff check lib jobs serving tests benchmarks
	$(VENV)/bin/ruff format --check lib jobs serving tests benchmarks
	$(VENV)/bin/mypy

unit: install  ## the unit tests alone (pure logic, no Ray), on two pytest-xdist workers
	$(PY) -m pytest -m unit -q -n 2 -p no:cacheprovider

check: lint unit  ## the fast loop: ruff, mypy and every unit test (no Ray), about 1.5 minutes

# The tests run on two pytest-xdist workers, scheduled by tests/conftest.py: the autoscaling
# cluster's drills alone first, then the session's Ray tests beside the unit tests. Lint (one
# process, mostly a cold mypy in a fresh clone) runs beside the drills' start-up; its output
# comes at the end, and either failing fails the target.
test: bytecode  ## the whole suite: lint beside unit, integration and model tests (see README: Testing)
	@$(MAKE) --no-print-directory lint > .lint.log 2>&1 & lint=$$!; \
	$(PY) -m pytest -q -n 2 --durations=15 -p no:cacheprovider; rc=$$?; \
	wait $$lint || rc=1; echo "--- lint (ruff, mypy) ---"; cat .lint.log; rm -f .lint.log; exit $$rc

bench: install $(BENCH_VENV)/.installed  ## benchmarks side by side with their baselines; ROWS=1000000, REQUESTS=3000, TUNE_ROWS, TRIALS, DRIFT_WINDOWS to scale
	$(PY) -m benchmarks.run --rows $${ROWS:-1000000} --out benchmarks/results
	$(PY) -m benchmarks.serving --requests $${REQUESTS:-3000} --out benchmarks/results
	$(PY) -m benchmarks.tuning --rows $${TUNE_ROWS:-100000} --trials $${TRIALS:-24} --out benchmarks/results
	$(PY) -m benchmarks.drift --windows $${DRIFT_WINDOWS:-100} --evidently-python $(BENCH_VENV)/bin/python --out benchmarks/results

clean:
	rm -rf $(STATE) .pytest_cache .mypy_cache .ruff_cache

cluster-up: install  ## a local autoscaling cluster: 0-CPU head, fake spot + on-demand workers (IDLE=60 s)
	$(PY) -m shipyard.compute.localcluster up --idle-timeout $${IDLE:-60}

cluster-down: install  ## stop the cluster started by cluster-up (its own processes only)
	$(PY) -m shipyard.compute.localcluster down

cluster-status: install  ## worker nodes of the local cluster by type
	$(PY) -m shipyard.compute.localcluster status

tune: install  ## tune the demo model (ASHA), train and register the best trial; RESUME=1 to resume
	$(PY) -m jobs.tune --config jobs/configs/tune.yaml $${RESUME:+--resume}

learning-curve: install  ## how much more data would buy: the demo model on growing fractions
	$(PY) -m jobs.learning_curve --config jobs/configs/demo.yaml

mlflow-ui: install  ## MLflow UI over the local tracking store, http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(SHIPYARD_HOME)/mlflow.db --host 127.0.0.1 --port 5000

docs: install  ## regenerate the config references (docs/) and the benchmark tables (README)
	$(PY) -m benchmarks.docs

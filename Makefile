# aigc: `make run` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo-data
DATA ?= $(DEMO)
CONFIGS ?= configs/demo.yaml configs/demo_cnn.yaml
EXPERIMENT ?= aigc-demo
# make run CV=3: cross-validate each config; the fold ensembles compete for champion
CV ?= 0
PORT ?= 5000
# Entry points run `python` from PATH: the venv's (MLFLOW_NOTES: Projects).
export PATH := $(abspath $(BIN)):$(PATH)
# TensorFlow's C++ start-up chatter buries the output of every step.
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup run test test-fast ui ui-check server bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(DEMO)/train.csv: | $(STAMP)
	$(BIN)/aigc make-dataset --layout gic --classes 10 --per-class 60 --size 32 --seed 7 --out $(DEMO)

# The whole pipeline on the demo data (or DATA=DIR), tracked in ./mlflow.db.
run: $(STAMP) $(if $(filter $(DEMO),$(DATA)),$(DEMO)/train.csv)
	$(BIN)/mlflow run . -e main --env-manager local --experiment-name $(EXPERIMENT) \
		-P data=$(abspath $(DATA)) -P configs="$(CONFIGS)" -P cv=$(CV)
	@echo "Browse the runs: make ui, then open $(RUNS_URL)"

# Modules spread over TEST_JOBS processes (pytest-xdist), longest first (tests/conftest.py), in their order.
TEST_JOBS ?= 2
PYTEST = $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(PYTEST) tests

# The edit-run loop: everything but servers, subprocesses, fault injection, tuning, ensembles, the cv end to end
# and train runs beyond test_train's one (tests marked slow).
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

# The experiment's runs (a new experiment would open on MLflow's GenAI overview without workflowType),
# in the view `main` shares (the competition metric and run kind as columns) once it has run.
RUNS_URL = http://127.0.0.1:$(PORT)/\#/experiments/$$($(BIN)/python -c "import mlflow; \
	e = mlflow.MlflowClient('sqlite:///mlflow.db').get_experiment_by_name('$(EXPERIMENT)'); \
	shared = e and 'mlflow.sharedViewState.aigc-runs' in e.tags; \
	print((e.experiment_id if e else '0') + '/runs?' + ('viewStateShareKey=aigc-runs&' if shared else ''))" \
	2>/dev/null)workflowType=machine_learning

ui: $(STAMP)
	@echo "The runs: $(RUNS_URL)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT)

# The UI on the `make run` store in headless Chromium: asserts what a user must see, screenshots in ui-check/.
ui-check: $(STAMP)
	$(BIN)/python tests/ui_check.py sqlite:///mlflow.db ui-check

# A tracking server: runs in ./mlflow-server.db, artifacts in ./mlartifacts, uploaded and downloaded
# through the server. One worker: SQLite locks under concurrent writers. The job runner serves
# GenAI features aigc doesn't use.
server: $(STAMP)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri sqlite:///mlflow-server.db \
		--artifacts-destination ./mlartifacts --host 127.0.0.1 --port $(PORT) --workers 1

# Performance ratios (not part of `make test`). tf_keras only brings the seeds' ImageDataGenerator
# for the side-by-side baseline; --no-deps: its dependency on the full `tensorflow` wheel would
# install a second TensorFlow over tensorflow-cpu.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps tf-keras==2.21.0
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(DEMO) ui-check .aigc-cache .aigc-checkpoints .aigc-outbox .aigc-tuner aigc-runs mlruns mlartifacts mlflow.db mlflow-server.db submissions

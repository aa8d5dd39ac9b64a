# The two commands of the README, plus helpers. Every target installs into .venv first (no-op when done).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: install run test serve mlflow-ui rebuild-release plots exp status study

install:
	@scripts/install.sh

# Main job on the embedded default: the Prefect flow gpo-self-improve runs every DVC stage (prompts,
# calibration, then generate → score → train → evaluate per round), logging to MLflow; prints the table.
run: install
	python -m flows.self_improve run

# Local Prefect server (127.0.0.1:4200) + the deployment gpo-self-improve/local, in one command.
serve: install
	scripts/serve.sh local

# MLflow UI on the project's tracking store.
mlflow-ui: install
	mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow/mlflow.db

# DVC's plots rendered offline (dvc_plots/index.html, no CDN) and the experiments' headline columns.
plots: install
	gpo plots

exp: install
	gpo exp

# The loss-arm study (gpo, dpo, dpo-random, group-unweighted, dgpo × seeds 0 1 2): one DVC experiment each
# (dvc exp run --queue), MLflow experiment gpo-study; writes docs/study.md and docs/study.png. Resumes.
study: install
	gpo study run

# dvc status of the main pipeline only: release/dvc.yaml (rebuilding the shipped weights) always shows
# as changed in a workspace that never rebuilt them (data/pretrain, data/detector absent), which is expected.
status: install
	dvc status dvc.yaml

test: install
	python -m pytest -q

# Rebuild the shipped weights from scratch (pretraining ≈ see release/README.md), then copy them in.
rebuild-release: install
	dvc repro release/dvc.yaml
	gpo calibrate --model data/pretrain/pipeline --out data/calibration-rebuilt --metrics data/metrics/calibration-rebuilt.json
	gpo release --calibration data/calibration-rebuilt

# The two commands of the README, plus helpers. Every target installs into .venv first (no-op when done).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: install run test rebuild-release

install:
	@scripts/install.sh

# Main job on the embedded default: curate prompts, calibrate reward models and the shipped base model.
run: install
	dvc repro
	@cat data/calibration/calibration.md

test: install
	python -m pytest -q

# Rebuild the shipped weights from scratch (pretraining ≈ see release/README.md), then copy them in.
rebuild-release: install
	dvc repro release/dvc.yaml
	gpo calibrate --model data/pretrain/pipeline --out data/calibration-rebuilt --metrics data/metrics/calibration-rebuilt.json
	gpo release --calibration data/calibration-rebuilt

# curate — two commands on a fresh clone: `make curate` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

POOL ?=
PIPELINE ?=
OUT ?=
SQL ?= SELECT * FROM decisions LIMIT 20
RUN ?= runs/example
SET ?=

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export RAY_AUTH_MODE := disabled
export HF_HUB_OFFLINE ?= 1

.PHONY: install curate test bench lint query clean docs

install: $(STAMP)

# Re-installs only when pyproject.toml changes; a no-op (milliseconds) otherwise.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,metadata]'
	@touch $(STAMP)

# `make curate` runs the offline example; `make curate POOL=p.parquet [PIPELINE=..] [OUT=..]`
# runs a real pool (default pipeline: pipelines/default.yaml, default OUT: runs/<pool name>).
curate: install
ifeq ($(strip $(POOL)),)
	$(BIN)/curate example --out $(or $(OUT),runs/example) $(if $(PIPELINE),--pipeline $(PIPELINE)) $(foreach s,$(SET),--set $(s))
else
	$(BIN)/curate run --pool $(POOL) --pipeline $(or $(PIPELINE),pipelines/default.yaml) --out $(or $(OUT),runs/$(basename $(notdir $(POOL)))) $(foreach s,$(SET),--set $(s))
endif

test: install
	$(BIN)/python -m pytest -n 2 tests

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Rewrites docs/ARCHITECTURE.md's generated tables (kinds, steps, outputs, reason codes)
# from the stage registry; tests/test_doc_tables.py fails until they match the code.
docs: install
	$(BIN)/python -m curate.app.doc_tables --write

lint: install
	$(BIN)/ruff check curate tests bench metadata

query: install
	$(BIN)/curate query $(RUN) "$(SQL)"

clean:
	rm -rf runs .pytest_cache .ruff_cache

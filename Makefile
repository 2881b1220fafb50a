# Two entry points: `make demo` and `make test`. Each builds .venv when it is missing or older than
# pyproject.toml, so a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench fuzz soak clean vendor

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dealrisk demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -m "not soak"

# Longer API fuzzing: schemathesis with more examples per operation, the file importer with hypothesis.
fuzz: $(STAMP)
	DEALRISK_FUZZ_EXAMPLES=100 $(BIN)/pytest tests/serving/test_fuzz_api.py tests/training/test_read_history_fuzz.py \
		--hypothesis-seed=0 -p no:cacheprovider

# Reliability runs: SIGKILL durability on PostgreSQL too, then 32 clients for 60 s with a model swap
# (bench/results/soak.json).
soak: $(STAMP)
	$(BIN)/pytest -m soak -p no:cacheprovider
	$(BIN)/python bench/soak.py --clients 32 --seconds 60

test: lint unit

# Re-vendor Swagger UI (served at /docs) and axe-core (browser tests) from npm at pinned versions; the
# files are committed, so this is needed only to change a version.
vendor:
	scripts/vendor-assets.sh

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .dealrisk .pytest_cache .mypy_cache .ruff_cache

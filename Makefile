# mtpano developer commands. Every target creates the virtual environment when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test demo lint format bench-geometry clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build for this version is provided; any other spec pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/mtpano synth demo/data --count 4 --height 512
	@echo "demo panoramas in demo/data/images, ground truth in demo/data/gt, previews in demo/data/previews"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-geometry: $(STAMP)
	$(PY) benchmarks/bench_geometry.py

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache

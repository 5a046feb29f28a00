# mtpano developer commands. Every target creates the virtual environment when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test demo labels lint format bench-geometry bench-labels bench-model clean

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

# The main job on built-in data: render synthetic rooms, label them with simulated teachers
# (per-patch depth scale errors of up to 20%, which the fusion aligns away), inspect the store.
demo: $(STAMP)
	$(VENV)/bin/mtpano synth demo/data --count 4 --height 512
	$(VENV)/bin/mtpano labels demo/data/images --out demo/labels --overwrite --patch-size 256 --erp-height 256 \
		--depth-teacher sim:scale_error=0.2 --semantic-teacher sim:confusion=0.2 --normal-teacher sim:normal_noise=2
	$(VENV)/bin/mtpano verify demo/labels
	$(VENV)/bin/mtpano inspect demo/labels
	$(VENV)/bin/mtpano inspect demo/labels room_00000 --gt demo/data/gt --preview demo/room_00000.png
	$(VENV)/bin/mtpano report demo/labels --out demo/report --gt demo/data/gt
	@echo "panoramas and ground truth in demo/data, labels in demo/labels, preview demo/room_00000.png, report demo/report/index.html"

# make labels DATA=folder-or-list [OUT=store] [ARGS="--layout cube --workers 2 ..."]
OUT ?= labels
labels: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make labels DATA=folder-or-list [OUT=store] [ARGS='...']"; exit 2; }
	$(VENV)/bin/mtpano labels "$(DATA)" --out "$(OUT)" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench-geometry: $(STAMP)
	$(PY) -m benchmarks.bench_geometry

bench-labels: $(STAMP)
	$(PY) -m benchmarks.bench_labels

bench-model: $(STAMP)
	$(PY) -m benchmarks.bench_model

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache

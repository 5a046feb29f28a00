# mtpano developer commands. Every target creates the virtual environment when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test demo labels train experiment lint format bench-geometry bench-labels bench-model bench-train clean

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

# The whole loop on built-in data: render synthetic rooms, label them with simulated teachers
# (per-patch depth scale errors of up to 20%, which the fusion aligns away), check and inspect
# the labels, train a tiny BridgeNet on them for a few minutes on a CPU, score it on held-out
# rooms' ground truth, predict those rooms into a store and draw the run.
demo: $(STAMP)
	$(VENV)/bin/mtpano synth demo/data --count 6 --height 512
	$(VENV)/bin/mtpano synth demo/heldout --count 2 --height 512 --first-seed 1000 --no-previews
	$(VENV)/bin/mtpano labels demo/data/images --out demo/labels --overwrite --patch-size 256 --erp-height 256 \
		--depth-teacher sim:scale_error=0.2 --semantic-teacher sim:confusion=0.2 --normal-teacher sim:normal_noise=2
	$(VENV)/bin/mtpano verify demo/labels
	$(VENV)/bin/mtpano inspect demo/labels
	$(VENV)/bin/mtpano inspect demo/labels room_00000 --gt demo/data/gt --preview demo/room_00000.png
	$(VENV)/bin/mtpano report demo/labels --out demo/report --gt demo/data/gt
	$(VENV)/bin/mtpano import demo/heldout --format synth --out demo/heldout_gt --height 64
	$(VENV)/bin/mtpano train demo/labels --val demo/heldout_gt --out demo/run --preset tiny --steps 300 --val-every 100
	$(VENV)/bin/mtpano evaluate demo/run demo/heldout_gt
	$(VENV)/bin/mtpano predict demo/run demo/heldout/images --out demo/heldout_pred --overwrite --png demo/heldout_png
	$(VENV)/bin/mtpano compare demo/heldout_pred demo/heldout_gt
	$(VENV)/bin/mtpano report demo/run --out demo/run_report
	@echo "panoramas and ground truth in demo/data, labels in demo/labels (report demo/report/index.html),"
	@echo "a tiny BridgeNet trained on them in demo/run (report demo/run_report/index.html),"
	@echo "its predictions of the held-out rooms in demo/heldout_pred (images in demo/heldout_png)"

# make labels DATA=folder-or-list [OUT=store] [ARGS="--layout cube --workers 2 ..."]
labels: $(STAMP)
	@test -n "$(DATA)" || { echo "usage: make labels DATA=folder-or-list [OUT=store] [ARGS='...']"; exit 2; }
	$(VENV)/bin/mtpano labels "$(DATA)" --out "$(or $(OUT),labels)" $(ARGS)

# make train STORE="store [store ...]" [OUT=runs/NAME] [ARGS="--preset small --val other-store ..."]
train: $(STAMP)
	@test -n "$(STORE)" || { echo "usage: make train STORE='store [store ...]' [OUT=runs/NAME] [ARGS='...']"; exit 2; }
	$(VENV)/bin/mtpano train $(STORE) --out "$(or $(OUT),runs/train)" $(ARGS)

# The pseudo-labels-versus-ground-truth experiment (CPU size, under 30 minutes on 2 cores).
experiment: $(STAMP)
	$(VENV)/bin/mtpano experiment experiments/pseudo_vs_gt_cpu.yaml --out "$(or $(OUT),out/experiment-cpu)" $(ARGS)

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

bench-train: $(STAMP)
	$(PY) -m benchmarks.bench_train

clean:
	rm -rf $(VENV) demo .pytest_cache .ruff_cache

# RetinaFL: `make real` runs the main job (the real sites federated), `make demo` the same on the
# phantom, `make test` the test suite.
# Each creates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEMO_DIR ?= runs/demo

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo real real-experiment multimodal-experiment centralized experiment bench test install grid lock clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The demo's run folder is its own output: a new `make demo` starts it afresh.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/retina-sim +experiment=federated_demo phantom.root=data/phantom run_dir=$(DEMO_DIR)

# The three real ODIR sites (../shared/data/odir_sites, or RETINAFL_ODIR) federated with the
# pretrained EfficientNet-Lite0 recipe, every aggregate scored on their val.csv (~9 min on 2 cores).
REAL_DIR ?= runs/real
real: $(STAMP)
	rm -rf $(REAL_DIR)
	$(BIN)/retina-sim +experiment=real_federation run_dir=$(REAL_DIR)

# docs/real_data_experiment.md: FedAvg vs centralized vs single sites, DP-SGD, bf16 deltas (~45 min a seed).
real-experiment: $(STAMP)
	$(BIN)/python -m bench.real_data_experiment --seeds 0 1

# docs/multimodal_experiment.md: each EyeCLIP term and the RadCLIP volume adapter, on the phantom (~30 min).
multimodal-experiment: $(STAMP)
	$(BIN)/python -m bench.multimodal_experiment --steps 300 --seeds 0 1

centralized: $(STAMP)
	$(BIN)/retina-train +experiment=demo phantom.root=data/phantom run_dir=runs/centralized-demo

# docs/benchmarks.md: every benchmark as a ratio against its baseline, on this machine (CUDA when present).
bench: $(STAMP)
	$(BIN)/python -m bench.run

experiment: $(STAMP)
	$(BIN)/python bench/federated_vs_centralized.py --site-steps 300 --rounds 5 --seeds 0 1

# Debian's Chromium renders report.html in tests/e2e/test_report_browser.py.
$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null)
	touch $(BROWSER_STAMP)

test: $(STAMP) $(BROWSER_STAMP)
	$(BIN)/ruff check .
	RETINAFL_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q

# deploy/requirements.lock: the exact run-time versions the container images install.
lock: $(STAMP)
	$(BIN)/python deploy/lock_requirements.py

grid: $(STAMP)
	$(BIN)/retina-data grid --phantom data/phantom --out docs/img/phantom_grid.png

clean:
	rm -rf $(VENV) runs data/phantom .pytest_cache

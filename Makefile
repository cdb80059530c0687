# kernelib: `make run` (the demo chain) and `make test` work from a fresh clone with Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/default.yaml
STAMP  := $(VENV)/.installed

.PHONY: setup run test lab report bench lint clean

# The virtual environment, the package with [dev], and the Jupyter kernel "kernelib".
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { test -n "$(PYTHON)" || { echo "need Python 3.11 (make PYTHON=/path/to/python3.11)"; exit 1; }; $(PYTHON) -m venv $(VENV); }
	@echo "installing kernelib[dev] into $(VENV) (log: $(VENV)/pip.log)"
	@$(BIN)/python -m pip install -e '.[dev]' > $(VENV)/pip.log 2>&1 || { grep -v "^WARNING: Location" $(VENV)/pip.log | tail -30; exit 1; }
	$(BIN)/python -c "import kernelib, keras, papermill, nbconvert; print('kernelib', kernelib.__version__, 'keras', keras.__version__)"
	$(BIN)/python -m ipykernel install --sys-prefix --name kernelib --display-name "kernelib (Python 3)" >/dev/null
	@touch $(STAMP)

setup: $(STAMP) datasets

# JOBS: members trained at once, each with its share of the cores (--jobs; 1.22x on 2 cores)
JOBS ?= 2
run: $(STAMP) datasets
	$(BIN)/kernelib run $(CONFIG) --jobs $(JOBS)

test: $(STAMP) browser datasets
	$(BIN)/python -m pytest

# Headless Chromium for tests/test_browser.py: Debian's packages, driven by Playwright from
# [dev] (never `playwright install`, which downloads a browser).
.PHONY: browser
browser:
	@test -x /usr/bin/chromium || { echo "installing chromium (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Fashion-MNIST for the demo and tests: Debian's dataset-fashion-mnist (IDX files under
# /usr/share/datasets/fashion-mnist/). Where apt cannot install it, kernelib falls back to
# keras.datasets.fashion_mnist (a download), so a failed install only warns.
.PHONY: datasets
datasets:
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || { echo "installing dataset-fashion-mnist (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	  || echo "warning: could not install dataset-fashion-mnist; fashion_mnist will be downloaded by keras.datasets instead"; }

# JupyterLab on 127.0.0.1 (token URL printed), the notebooks' folder as root, the kernelib
# kernel; as root it passes --allow-root. LAB_RUN=name picks the run folder runs/<name>/
# (default lab); LAB_CONFIG=configs/smoke.yaml opens copies with that config's parameters.
LAB_RUN  ?= lab
LAB_PORT ?= 8888
lab: $(STAMP)
	$(BIN)/python -m kernelib.lab --run '$(LAB_RUN)' --port '$(LAB_PORT)' $(if $(LAB_CONFIG),--config '$(LAB_CONFIG)')

# TensorBoard on 127.0.0.1 over one run's logs: make tensorboard RUN=<run_id> (a folder in runs/).
TB_PORT ?= 6006
.PHONY: tensorboard
tensorboard: $(STAMP)
	@test -n '$(RUN)' || { echo "usage: make tensorboard RUN=<run_id> (one of: $$(ls runs 2>/dev/null | tr '\n' ' '))"; exit 1; }
	@test -d 'runs/$(RUN)/tensorboard' || { echo "no TensorBoard logs in runs/$(RUN)/tensorboard: train with train.tensorboard: true first"; exit 1; }
	$(BIN)/tensorboard --logdir 'runs/$(RUN)/tensorboard' --host 127.0.0.1 --port '$(TB_PORT)'

report: $(STAMP)
	$(BIN)/kernelib report

# Runner timings. bench/demo_design.py (a ~5 minute study of the demo's member pool) runs alone.
bench: $(STAMP)
	$(BIN)/python bench/runner.py

# Serving and inference benches (bench/serve.py load-tests with Debian's `hey`; the first run
# trains and exports the benches' five-member model into /tmp/kernelib-bench, a few minutes).
.PHONY: hey bench-serve
hey:
	@test -x /usr/bin/hey || { echo "installing hey (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq hey >/dev/null; }

bench-serve: $(STAMP) hey
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/serve.py

lint: $(STAMP)
	$(BIN)/ruff check kernelib tests

clean:
	rm -rf runs reports/*/ reports/index.html .pytest_cache

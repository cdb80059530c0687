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

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/kernelib run $(CONFIG)

test: $(STAMP) browser
	$(BIN)/python -m pytest

# Headless Chromium for tests/test_browser.py: Debian's packages, driven by Playwright from
# [dev] (never `playwright install`, which downloads a browser).
.PHONY: browser
browser:
	@test -x /usr/bin/chromium || { echo "installing chromium (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

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

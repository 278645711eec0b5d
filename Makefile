# Two set-up commands: `make demo` and `make test`. Each creates .venv when missing and installs
# what it needs. The demo installs only the runtime (no torch); the tests add the dev and train extras.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
DEMO_LENGTH_M ?= 6
DEMO_PUB ?= auto
PYTEST_ARGS ?=

# Ultralytics must never reach the network and must keep its settings inside the project.
export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/.yolo

.PHONY: demo test lint typecheck check gallery bench clean gpu

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml constraints/dev.txt | $(PY)
	$(PIP) install -c constraints/dev.txt -e '.[dev,train]'
	@touch $@ $(VENV)/.runtime-installed

demo: $(VENV)/.runtime-installed
	$(PY) scripts/demo.py --length-m $(DEMO_LENGTH_M) --pub $(DEMO_PUB)

# pytest exits 5 when it collects no test; that is reported, not treated as a failure.
test: $(VENV)/.dev-installed
	@set +e; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check runtime offline_train deploy calib tests scripts
	$(VENV)/bin/ruff format --check runtime offline_train deploy calib tests scripts

typecheck: $(VENV)/.dev-installed
	$(VENV)/bin/mypy

check: lint typecheck test

gallery: $(VENV)/.runtime-installed
	$(VENV)/bin/loomsight sim --out out/sim --fabric plain --length-m 2 --seed 1

# The committed benchmarks behind the figures in the issue notes; JSON results land in out/bench/.
bench: $(VENV)/.runtime-installed
	@mkdir -p out/bench
	$(VENV)/bin/loomsight bench sim --json out/bench/sim.json
	$(VENV)/bin/loomsight bench merge --json out/bench/merge.json
	$(VENV)/bin/loomsight --log-level WARNING bench publish --json out/bench/publish.json
	$(VENV)/bin/loomsight --log-level WARNING bench pipeline --json out/bench/pipeline.json
	$(VENV)/bin/loomsight --log-level WARNING bench stop-latency --json out/bench/stop_latency.json

# Replace the CPU onnxruntime wheel with the CUDA one (both provide the `onnxruntime` module).
gpu: $(VENV)/.runtime-installed
	$(PIP) uninstall -y onnxruntime
	$(PIP) install -e '.[gpu]'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .yolo

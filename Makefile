# Quick start: `make demo` runs the main job, `make test` runs the whole suite. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On the project's machines this picks the local CPU wheel; elsewhere PyPI's default build.
TORCH_SPEC ?= torch==2.13.0
STEP ?= tests

.PHONY: demo test gpu-step bench clean

$(VENV)/.base: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/vit-fast demo

test: $(VENV)/.test
	$(PY) -m pytest tests -q

bench: $(VENV)/.test
	$(VENV)/bin/vit-fast bench --out out/bench

# On a GPU machine (no registry there: the image's python, the project on PYTHONPATH), one step per command:
# make gpu-step STEP="lease 540" (every step in priority order), or one step: tests | headline | profile | profile8 |
# "grid 1" | merge (order and times: benchmarks/NOTES.md, "GPU session plan").
gpu-step:
	bash benchmarks/gpu_steps.sh $(STEP)

clean:
	rm -rf $(VENV) out .pytest_cache

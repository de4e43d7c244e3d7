# Two commands do all set-up on a fresh machine (Debian + Python 3.11):
#   make demo   # builds .venv if needed, then runs the whole transfer suite on embedded data
#   make test   # builds .venv if needed, then runs the tests (CI=true also runs slow tests)
PY := .venv/bin/python

.PHONY: env env-cuda demo test bench bench-quick lint gpu-check

env:
	@./tools/bootstrap.sh

# mmcv with its CUDA ops even without a GPU here (archs: TORCH_CUDA_ARCH_LIST, else the GPUs
# nvidia-smi lists, else 8.0;9.0+PTX); on a GPU machine plain `make env` already does this.
env-cuda:
	@FORCE_CUDA=1 ./tools/bootstrap.sh

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

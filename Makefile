# pushcut: `make demo` and `make test` are all a new user needs; both set everything up first.
SHELL := /bin/bash
PY := .venv/bin/python
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test test-all lint bench bench-sim bench-policy bench-rl bench-engine bench-ros bench-driver bench-gpu bench-transfer clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m pushcut.demo

test: setup  # the ten slowest tests are listed at the end: CI keeps the suite well inside 20 minutes
	$(PY) -m pytest -q -m "not slow" --durations=10 tests
	@$(MAKE) --no-print-directory lint

test-all: setup
	$(PY) -m pytest -q tests

lint: setup
	.venv/bin/ruff check .

bench: bench-sim bench-policy bench-rl bench-engine bench-ros bench-driver

bench-sim: setup
	$(PY) -m bench.sim

bench-policy: setup
	$(PY) -m bench.policy

bench-rl: setup  # ARGS="experiment=rl_seed0 budget_s=600": configs/bench_rl.yaml, configs/experiment/
	$(PY) -m bench.rl $(ARGS)

bench-engine: setup
	$(PY) -m bench.engine

bench-ros: setup
	$(PY) -m bench.ros

bench-driver: setup
	$(PY) -m bench.driver

bench-transfer: setup  # ARGS="--tasks click_bell --demos 50 --episodes 50": nominal vs randomised SFT under the transfer suite
	$(PY) -m bench.transfer $(ARGS)

bench-gpu: setup  # one CUDA GPU, <= 8 min; says so and measures nothing where there is none
	$(PY) -m bench.gpu $(ARGS)

clean:
	rm -rf outputs runs bench/results/*.json bench/results/*.png .pytest_cache

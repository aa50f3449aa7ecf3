"""The REST service with the real embedded model (SmolLM2-135M on CPU) behind it, and with two
worker processes: what the fast scripted model in test_serve.py stands in for."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from agent.state import MODES
from retrieval.settings import Settings
from tests.agent.conftest import FAQ, LIGHTS, RESET, WIFI, ServeProcess, build_index, parse_sse

QUESTION = "How do I reset the router to factory settings?"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    from retrieval.embeddings import load_embedder

    home = tmp_path_factory.mktemp("serve-model") / "home"
    build_index(Settings.resolve(home=home), [RESET, LIGHTS, WIFI, FAQ], load_embedder("default"))
    return home


@pytest.mark.integration
def test_the_embedded_model_answers_and_streams(home, embedded_model_path, model_cache):
    server = ServeProcess(home, "--max-new-tokens", "24", fake_model=False,
                          env={"CASEWISE_CACHE": str(model_cache)}).start()
    try:
        health = httpx.get(f"{server.url}/healthz").json()
        # "default", or "default (llama.cpp)" where the fast backend is built.
        assert health["model"]["name"].split(" (")[0] == "default"
        assert health["model"]["loaded"] is True
        with httpx.Client(base_url=server.url, timeout=300) as c:
            answer = c.post("/v1/ask", json={"question": QUESTION, "session_id": "m-1"}).json()
            assert answer["mode"] in MODES and answer["answer"].strip()
            assert answer["raw"], "the model was called"
            with c.stream("POST", "/v1/ask/stream", json={"question": QUESTION}) as r:
                events = parse_sse(r.iter_lines())
        tokens = [json.loads(d)["text"] for e, d in events if e == "token"]
        assert events[-1][0] == "answer" and len(tokens) > 2
        final = json.loads(events[-1][1])
        # Greedy decoding: the streamed draft is the model's raw output, token for token.
        assert "".join(tokens) == final["raw"] or "".join(tokens)[len("Reasoning:"):] in final["raw"]
    finally:
        server.stop()
    assert "Traceback" not in server.log()


@pytest.mark.integration
def test_two_workers_share_memory_feedback_and_metrics(home):
    server = ServeProcess(home, "--workers", "2").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            ids = []
            for i in range(6):  # new connections: uvicorn spreads them over both workers
                with httpx.Client(base_url=server.url, timeout=60) as fresh:
                    r = fresh.post("/v1/ask", json={"question": QUESTION, "session_id": "w"})
                    assert r.status_code == 200, r.text
                    ids.append(r.json()["answer_id"])
            for answer_id in ids:  # rated through whichever worker: the store is shared
                assert c.post("/v1/feedback", json={"answer_id": answer_id, "rating": "up"}
                              ).status_code == 200
            assert len(c.get("/v1/sessions/w").json()["messages"]) == 12
            metrics = c.get("/metrics").text
        answered = re.search(r'^casewise_answers_total\{mode="generated"\} (\S+)$', metrics, re.M)
        assert answered and float(answered.group(1)) == 6.0  # summed over the workers
    finally:
        server.stop()
    assert "Traceback" not in server.log()

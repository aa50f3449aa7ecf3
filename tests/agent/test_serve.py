"""The REST service through a real server: uvicorn in a subprocess on a free localhost port,
called with httpx and the official openai client. The model is the fast scripted
`PassageQuotingModel` (test_serve_model.py runs the real embedded one); the index is a real
Chroma index embedded with the real MiniLM. One server for the whole module."""

from __future__ import annotations

import json
import os
import threading

import httpx
import openai
import pytest

from agent.cli import main
from agent.serve import KeyRing, RateLimiter, hash_key, new_key
from agent.state import MODES
from retrieval.settings import Settings
from tests.agent.conftest import FAQ, LIGHTS, RESET, WIFI, ServeProcess, build_index, parse_sse
from tests.conftest import ScriptedChatModel

QUESTION = "How do I reset the router to factory settings?"
RESET_SENTENCE = ("To reset the router to factory settings, press and hold the Reset button on "
                  "the back for 10 seconds until the power light blinks orange.")
# The verified answer: the test backend's copied sentence, then the rest of the ranker's quote.
ANSWER = f'{RESET_SENTENCE} The manual says (router_manual.pdf p.4): "All settings are erased."'
ENV_KEY = "key-from-the-environment"
RATE_KEY = "key-for-the-rate-limit-test"
RATE_LIMIT = 200
DAMAGED = os.urandom(8192)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from retrieval.embeddings import load_embedder

    root = tmp_path_factory.mktemp("serve")
    home = root / "home"
    build_index(Settings.resolve(home=home), [RESET, LIGHTS, WIFI, FAQ], load_embedder("default"))
    # A damaged memory file from an earlier crash: --reset-memory keeps it and starts afresh.
    (home / "memory.sqlite").write_bytes(DAMAGED)
    keys = root / "keys.txt"
    key = new_key(keys, "helpdesk")
    proc = ServeProcess(home, "--api-keys", str(keys), "--rate-limit", str(RATE_LIMIT),
                        "--max-body-bytes", "4096", "--max-question-chars", "500",
                        "--reset-memory", env={"CASEWISE_API_KEYS": f"{ENV_KEY},{RATE_KEY}"}).start()
    proc.key = key
    proc.keys_file = keys
    yield proc
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (exit status -15).
    assert proc.stop() == -15, proc.log()
    assert "Traceback" not in proc.log()


def client(server, key: str | None = "default") -> httpx.Client:
    key = server.key if key == "default" else key
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def ask(server, question=QUESTION, **body) -> dict:
    with client(server) as c:
        r = c.post("/v1/ask", json={"question": question, **body})
    assert r.status_code == 200, r.text
    return r.json()


# --- endpoints ---------------------------------------------------------------------------------


def test_health_needs_no_key_and_reports_index_and_model(server):
    r = httpx.get(f"{server.url}/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["index"]["chunks"] == 4
    assert body["model"] == {"name": "passage-quoting (test backend)", "loaded": True}


def test_openapi_docs_list_every_endpoint(server):
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/ask", "/v1/ask/stream", "/v1/sessions/{session_id}", "/v1/feedback",
            "/v1/chat/completions", "/v1/models", "/healthz", "/metrics"} <= set(paths)


def test_ask_returns_the_ask_json_object(server):
    result = ask(server)
    assert {"answer", "mode", "reasoning", "claims", "citations", "faq_match", "timings",
            "answer_id", "contexts", "session_id"} <= set(result)
    assert result["answer"] == ANSWER and result["mode"] in MODES
    assert result["citations"][0] == {"source": "router_manual.pdf", "page": 4,
                                      "section": "Factory reset"}
    assert result["faq_match"]["question"] == "How can I restore my router to factory defaults?"
    assert result["session_id"] is None and len(result["answer_id"]) == 32
    other = ask(server, "How do I change the Wi-Fi password?", top_k=1)
    assert other["citations"][0]["page"] == 3 and len(other["contexts"]) == 1
    assert other["answer_id"] != result["answer_id"]


def test_sessions_keep_history_resolve_follow_ups_and_can_be_deleted(server):
    ask(server, session_id="ticket-1")
    follow = ask(server, "and how long do I hold it?", session_id="ticket-1")
    assert follow["session_id"] == "ticket-1"
    with client(server) as c:
        history = c.get("/v1/sessions/ticket-1").json()
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2
        assert history["messages"][0]["content"] == QUESTION
        # The follow-up was searched with the first question's words.
        assert "factory" in history["messages"][2]["standalone"]
        assert history["messages"][3]["citations"] == ["[router_manual.pdf p.4]"]
        deleted = c.delete("/v1/sessions/ticket-1")
        assert deleted.json() == {"session_id": "ticket-1", "deleted": True, "messages": 4}
        for r in (c.get("/v1/sessions/ticket-1"), c.delete("/v1/sessions/ticket-1")):
            assert r.status_code == 404
            assert r.json()["error"]["message"] == "no conversation with session_id 'ticket-1'"


def test_a_damaged_memory_was_kept_and_replaced(server):
    kept = list(server.home.glob("memory.sqlite.*.bak"))
    assert len(kept) == 1 and kept[0].read_bytes() == DAMAGED
    assert "conversation memory moved aside to" in server.log()


def test_stream_sends_tokens_then_the_verified_answer(server):
    with client(server) as c:
        with c.stream("POST", "/v1/ask/stream",
                      json={"question": QUESTION, "session_id": "stream-1"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = parse_sse(r.iter_lines())
        kinds = [e for e, _ in events]
        assert kinds[-1] == "answer" and set(kinds[:-1]) == {"token"} and len(kinds) > 10
        draft = "".join(json.loads(d)["text"] for e, d in events if e == "token")
        final = json.loads(events[-1][1])
        assert final["answer"] == ANSWER and RESET_SENTENCE in draft
        assert draft.startswith("Reasoning:") and "Sources: [router_manual.pdf p.4]" in draft
        # The streamed turn is saved, and its answer can be rated.
        assert len(c.get("/v1/sessions/stream-1").json()["messages"]) == 2
        r = c.post("/v1/feedback", json={"answer_id": final["answer_id"], "rating": "up"})
        assert r.status_code == 200 and r.json()["stored"] is True


def test_stream_rejects_a_bad_request_before_streaming(server):
    with client(server) as c:
        r = c.post("/v1/ask/stream", json={"question": ""})
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"


def test_feedback_is_stored_and_exported_as_faq_history(server, tmp_path, capsys):
    approved = ask(server, session_id="fb-1")
    corrected = ask(server, "How do I change the Wi-Fi password?")
    rejected = ask(server, "How do I turn off the status lights?")
    with client(server) as c:
        def rate(answer, rating, **extra):
            r = c.post("/v1/feedback", json={"answer_id": answer["answer_id"], "rating": rating,
                                             **extra})
            assert r.status_code == 200, r.text
            return r.json()["feedback_id"]

        rate(approved, "up", comment="exactly right")
        rate(corrected, "up")
        rate(corrected, "down", corrected_answer="Open Wireless > Security and type a new "
                                                 "passphrase (8+ characters).")
        rate(rejected, "down", comment="wrong page")
        unknown = c.post("/v1/feedback", json={"answer_id": "0" * 32, "rating": "up"})
        assert unknown.status_code == 404 and "not an answer this server gave" in unknown.text
        bad = c.post("/v1/feedback", json={"answer_id": approved["answer_id"], "rating": "meh"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "rating"
    out = tmp_path / "feedback.jsonl"
    # Exported while the server runs (WAL: readers do not block the writer).
    assert main(["feedback", "export", str(out), "--home", str(server.home)]) == 0
    assert "corrected" in capsys.readouterr().out
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    mine = {f"feedback-{a['answer_id']}" for a in (approved, corrected, rejected)}
    assert mine - set(rows) == {f"feedback-{rejected['answer_id']}"}  # down, no correction
    row = rows[f"feedback-{corrected['answer_id']}"]
    assert row["answer"].startswith("Open Wireless > Security") and row["kind"] == "corrected"
    assert row["question"] == "How do I change the Wi-Fi password?"
    assert row["rating"] == "down" and "page" not in row  # the latest rating counts
    row = rows[f"feedback-{approved['answer_id']}"]
    assert (row["answer"], row["page"], row["kind"]) == (ANSWER, 4, "approved")
    assert row["session_id"] == "fb-1" and row["comment"] == "exactly right"


# --- the OpenAI-compatible facade --------------------------------------------------------------


def test_openai_client_chat_completions(server):
    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)
    assert [m.id for m in oa.models.list()] == ["casewise"]
    messages = [{"role": "system", "content": "You are helpful."},
                {"role": "user", "content": QUESTION}]
    reply = oa.chat.completions.create(model="casewise", messages=messages)
    text = reply.choices[0].message.content
    assert text == f"{ANSWER}\n\nSources: [router_manual.pdf p.4]"
    assert reply.choices[0].finish_reason == "stop"
    extra = reply.model_extra["casewise"]
    assert extra["citations"][0]["page"] == 4 and extra["answer_id"]

    content, draft, last = "", "", None
    for chunk in oa.chat.completions.create(model="casewise", messages=messages, stream=True,
                                            extra_body={"session_id": "oa-1"}):
        last = chunk
        delta = chunk.choices[0].delta
        content += delta.content or ""
        draft += (delta.model_extra or {}).get("reasoning_content") or ""
    assert content == text and RESET_SENTENCE in draft and draft.startswith("Reasoning:")
    assert last.choices[0].finish_reason == "stop" and last.model_extra["casewise"]["answer_id"]
    with client(server) as c:  # extra_body session_id is conversation memory
        assert len(c.get("/v1/sessions/oa-1").json()["messages"]) == 2

    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' does not exist"):
        oa.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.UnprocessableEntityError, match="no message with role 'user'"):
        oa.chat.completions.create(model="casewise", messages=messages[:1])
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        bad.chat.completions.create(model="casewise", messages=messages)


# --- security and limits -----------------------------------------------------------------------


@pytest.mark.parametrize("headers, code", [
    ({}, "missing_api_key"),
    ({"Authorization": "Bearer not-a-key"}, "invalid_api_key"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_api_key"),
])
def test_requests_without_a_valid_key_get_401(server, headers, code):
    for method, path in [("POST", "/v1/ask"), ("GET", "/v1/sessions/x"), ("GET", "/metrics"),
                         ("POST", "/v1/feedback"), ("POST", "/v1/chat/completions")]:
        r = httpx.request(method, f"{server.url}{path}", headers=headers,
                          json={"question": QUESTION})
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == code and r.headers["www-authenticate"] == "Bearer"


def test_a_key_from_the_environment_works(server):
    with client(server, ENV_KEY) as c:
        assert c.get("/v1/models").status_code == 200


def test_the_key_file_holds_hashes_not_keys(server):
    text = server.keys_file.read_text()
    assert server.key not in text and f"helpdesk {hash_key(server.key)}" in text


def _chunked(body: bytes):
    yield from (body[i:i + 1000] for i in range(0, len(body), 1000))


@pytest.mark.parametrize("kwargs, status, message", [
    (dict(json={"question": "   "}), 422, "question: must not be empty"),
    (dict(json={}), 422, "question: Field required"),
    (dict(json={"question": QUESTION, "sessionId": "x"}), 422, "sessionId: unknown field"),
    (dict(json={"question": QUESTION, "top_k": 0}), 422, "top_k: Input should be greater"),
    (dict(json={"question": QUESTION, "session_id": "../etc"}), 422, "session_id: String should"),
    (dict(json={"question": 42}), 422, "question: Input should be a valid string"),
    (dict(json={"question": "x" * 501}), 422, "question: 501 characters; the limit is 500"),
    (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400,
     "the request body is not valid JSON"),
    (dict(content=b"", headers={"Content-Type": "application/json"}), 422,
     "the request body is missing"),
    (dict(json={"question": "x" * 5000}), 413, "the request body exceeds 4096 bytes"),
    (dict(content=_chunked(b'{"question": "' + b"x" * 6000 + b'"}'),
          headers={"Content-Type": "application/json"}), 413, "exceeds 4096 bytes"),
])
def test_bad_requests_get_one_clear_json_error(server, kwargs, status, message):
    with client(server) as c:
        r = c.post("/v1/ask", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"].startswith(message) or message in error["message"], error
    assert "Traceback" not in r.text and "File \"" not in r.text


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/nothing", 404), ("PUT", "/v1/ask", 405), ("GET", "/v1/sessions/a%20b", 422),
])
def test_unknown_routes_and_methods_get_json(server, method, path, status):
    with client(server) as c:
        r = c.request(method, path)
    assert r.status_code == status and r.json()["error"]["message"]


def test_rate_limit_per_key(server):
    with client(server, RATE_KEY) as c:
        codes = [c.get("/v1/models").status_code for _ in range(RATE_LIMIT)]
        # The bucket refills at RATE_LIMIT/60 per second: a few more requests drain it.
        for _ in range(100):
            limited = c.get("/v1/models")
            if limited.status_code != 200:
                break
    assert codes == [200] * RATE_LIMIT
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "rate limit of 200 requests per minute" in limited.json()["error"]["message"]
    with client(server) as c:  # another key has its own budget
        assert c.get("/v1/models").status_code == 200


def test_rate_limiter_refills_over_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("agent.serve.time.monotonic", lambda: clock[0])
    limiter = RateLimiter(per_minute=2)
    assert limiter.check("a") is None and limiter.check("a") is None
    assert limiter.check("a") == pytest.approx(30.0)
    assert limiter.check("b") is None
    clock[0] += 30.0
    assert limiter.check("a") is None and limiter.check("a") is not None
    assert RateLimiter(0).check("a") is None


# --- concurrency and metrics -------------------------------------------------------------------


def test_concurrent_requests_on_one_model_are_all_answered_in_order(server):
    questions = [QUESTION, "How do I change the Wi-Fi password?",
                 "How do I turn off the status lights?"]
    errors: list[str] = []

    def converse(n: int) -> None:
        with client(server) as c:
            for q in questions:
                r = c.post("/v1/ask", json={"question": q, "session_id": f"load-{n}"})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=converse, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with client(server) as c:
        for n in range(6):
            messages = c.get(f"/v1/sessions/load-{n}").json()["messages"]
            assert [m["content"] for m in messages if m["role"] == "user"] == questions


def test_metrics_count_requests_latency_and_modes(server):
    answer = ask(server)
    with client(server) as c:
        c.post("/v1/feedback", json={"answer_id": answer["answer_id"], "rating": "up"})
        text = c.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['casewise_answers_total{mode="generated"}'] >= 1
    assert samples['casewise_answers_total{mode="refused"}'] == 0  # every mode is listed
    assert samples['casewise_http_requests_total{method="POST",route="/v1/ask",status="200"}'] >= 1
    assert samples['casewise_http_requests_total{method="POST",route="/v1/ask",status="401"}'] >= 1
    count = samples['casewise_http_request_duration_seconds_count{route="/v1/ask"}']
    assert samples['casewise_http_request_duration_seconds_bucket{le="+Inf",route="/v1/ask"}'] == count
    assert samples['casewise_feedback_total{rating="up"}'] >= 1
    assert 'casewise_feedback_total{rating="down"}' in samples


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["serve", "--help"], ["feedback", "export", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m agent {argv[0]}") and "examples:" in out


def test_new_key_prints_a_key_and_stores_its_hash(tmp_path, capsys):
    keys = tmp_path / "keys.txt"
    assert main(["serve", "--api-keys", str(keys), "--new-key", "zendesk"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert KeyRing.load(keys, None).identify(key) == "zendesk"
    assert key not in keys.read_text() and oct(keys.stat().st_mode & 0o777) == "0o600"
    assert main(["serve", "--api-keys", str(keys), "--new-key", "zendesk"]) == 2
    assert "already has a key named 'zendesk'" in capsys.readouterr().err


def test_refuses_to_listen_on_the_network_without_keys(tmp_path, capsys):
    assert main(["serve", "--host", "0.0.0.0", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to listen on 0.0.0.0 without API keys")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "0"], "--port (0) must be between 1 and 65535"),
    (["serve", "--workers", "0"], "--workers (0) must be at least 1"),
    (["serve", "--rate-limit", "-1"], "--rate-limit (-1) must be 0 (off) or more"),
    (["serve", "--session", "s"], "--session applies to chat and ask"),
    (["serve", "--new-key", "x"], "--new-key NAME needs --api-keys FILE"),
    (["serve", "--api-keys", "missing.txt"], "API key file missing.txt does not exist"),
    (["feedback", "export", "out.jsonl"], "no feedback store at"),
])
def test_bad_serve_input_exits_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--home", str(tmp_path)] if argv[0] == "feedback" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_a_key_file_with_a_plain_key_is_refused(tmp_path, capsys):
    keys = tmp_path / "keys.txt"
    keys.write_text("# our keys\nhelpdesk sha256:" + "a" * 64 + "\nzendesk my-secret-key\n")
    assert main(["serve", "--api-keys", str(keys)]) == 2
    assert f"{keys}:3: not 'NAME sha256:<64 hex digits>'" in capsys.readouterr().err


def test_a_port_in_use_is_a_failed_run(server, capsys):
    assert main(["serve", "--port", str(server.port), "--home", str(server.home)]) == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in capsys.readouterr().err


# --- admission and the generation lock, in process ---------------------------------------------


class BlockingModel(ScriptedChatModel):
    """Streams its first token, then waits until `go` is set (a long generation)."""

    def __init__(self, answers):
        super().__init__(answers)
        self.started, self.go = threading.Event(), threading.Event()

    def stream(self, messages, *, max_new_tokens=256):
        pieces = super().stream(messages, max_new_tokens=max_new_tokens)
        yield next(pieces)
        self.started.set()
        self.go.wait(timeout=30)
        yield from pieces


def test_a_full_server_answers_503_and_a_closed_stream_frees_the_model(tmp_path):
    from agent.api import Assistant
    from agent.feedback import FeedbackStore
    from agent.serve import ApiError, ServeConfig, Service, _OneAtATime
    from tests.agent.conftest import FakeSearcher

    good = ("Reasoning: Passage [1] says so.\nAnswer: Hold Reset for 10 seconds.\n"
            "Sources: [router_manual.pdf p.4]")
    model = BlockingModel([good, good])
    llm = _OneAtATime(model)
    assistant = Assistant(FakeSearcher([RESET]), llm, min_similarity=0.3)
    service = Service(assistant, FeedbackStore(tmp_path / "f.sqlite"), KeyRing(),
                      ServeConfig(max_pending=1), model_name="blocking",
                      settings=Settings.resolve(home=tmp_path))
    results = []
    worker = threading.Thread(target=lambda: results.append(
        service.ask(QUESTION, None, None, "local")))
    worker.start()
    assert model.started.wait(timeout=30)
    with pytest.raises(ApiError) as busy:
        service.ask(QUESTION, None, None, "local")
    assert busy.value.status == 503 and busy.value.headers == {"Retry-After": "2"}
    model.go.set()
    worker.join(timeout=30)
    assert results[0]["answer"].startswith("Hold Reset for 10 seconds.")
    # A stream closed half-way (the client went away) releases the generation lock.
    model.go.clear()
    stream = llm.stream([{"role": "user", "content": "q"}])
    next(stream)
    stream.close()
    assert llm._lock.acquire(timeout=1)
    llm._lock.release()
    service.close()

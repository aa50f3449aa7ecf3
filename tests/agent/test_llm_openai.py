"""The OpenAI-compatible backend against a small fake server started on localhost."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.llm import ModelServerError, OpenAIChatModel
from retrieval.errors import CasewiseError
from retrieval.errors import UsageError

REPLY = "Reasoning: Passage [1] says hold Reset.\nAnswer: Hold Reset.\nSources: [m.pdf p.4]"


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    fail_first: int = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            # Tells the client how long to wait; the openai client honours it.
            self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "warming up"}}')
            return
        if self.path != "/v1/chat/completions":
            self.send_response(404)
            self.end_headers()
            return
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in REPLY.split(" "):
                chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0,
                         "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": piece + " "},
                                      "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            return
        payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": REPLY}}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    FakeOpenAI.requests = []
    FakeOpenAI.fail_first = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]


def test_complete(server):
    llm = OpenAIChatModel(server, "smollm2", timeout=5)
    assert llm.complete(MESSAGES, max_new_tokens=32) == REPLY
    body = FakeOpenAI.requests[-1]["body"]
    assert body["model"] == "smollm2" and body["messages"] == MESSAGES
    assert body["max_tokens"] == 32 and body["temperature"] == 0.0


def test_stream(server):
    llm = OpenAIChatModel(server + "/v1", "smollm2", timeout=5)
    pieces = list(llm.stream(MESSAGES))
    assert len(pieces) > 3 and "".join(pieces).strip() == REPLY


def test_prefilled_assistant_message_is_not_sent_and_the_reply_continues_it(server):
    llm = OpenAIChatModel(server, "smollm2", timeout=5)
    prefilled = MESSAGES + [{"role": "assistant", "content": "Reasoning:"}]
    assert llm.complete(prefilled) == REPLY[len("Reasoning:"):]
    assert FakeOpenAI.requests[-1]["body"]["messages"] == MESSAGES
    assert "".join(llm.stream(prefilled)).strip() == REPLY[len("Reasoning:"):].strip()


def test_retries_server_errors_then_succeeds_waiting_as_the_server_asks(server):
    FakeOpenAI.fail_first = 2
    llm = OpenAIChatModel(server, "smollm2", timeout=5, retries=2)
    start = time.perf_counter()
    assert llm.complete(MESSAGES) == REPLY
    assert len(FakeOpenAI.requests) == 3
    # The client's own backoff would wait ~0.4-1.5 s for two retries; the server asked 10 ms.
    assert time.perf_counter() - start < 0.4


def test_server_errors_beyond_the_retries_give_one_clear_error(server):
    FakeOpenAI.fail_first = 5
    llm = OpenAIChatModel(server, "smollm2", timeout=5, retries=1)
    with pytest.raises(ModelServerError) as err:
        llm.complete(MESSAGES)
    assert len(FakeOpenAI.requests) == 2
    assert str(err.value).startswith(f"cannot reach the model server at {server}/v1: ")
    assert "after 2 attempts" in str(err.value)


def test_complete_many_answers_every_conversation_in_order(server):
    llm = OpenAIChatModel(server, "smollm2", timeout=5)
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    assert llm.complete_many(conversations, max_new_tokens=8) == [REPLY] * 5
    sent = sorted(r["body"]["messages"][0]["content"] for r in FakeOpenAI.requests)
    assert sent == [f"q{i}" for i in range(5)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_gives_one_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    llm = OpenAIChatModel(url, "smollm2", timeout=1, retries=1)
    start = time.perf_counter()
    with pytest.raises(CasewiseError) as err:
        llm.complete(MESSAGES)
    assert isinstance(err.value, ModelServerError)
    assert str(err.value).startswith(f"cannot reach the model server at {url}/v1: ")
    assert "2 attempts" in str(err.value)
    assert time.perf_counter() - start < 10
    with pytest.raises(ModelServerError):
        list(llm.stream(MESSAGES))


def test_bad_arguments_are_rejected():
    with pytest.raises(UsageError, match="base_url"):
        OpenAIChatModel("localhost:8000", "m")
    with pytest.raises(UsageError, match="model"):
        OpenAIChatModel("http://localhost:8000", " ")

"""Conversation memory survives a restart: new Assistant objects and new processes."""

import json
import os
import subprocess
import sys

import pytest

from agent.api import Assistant
from tests.agent.conftest import FakeSearcher, RESET, LIGHTS
from tests.conftest import REPO, ScriptedChatModel

GOOD = "Reasoning: Passage [1] says so.\nAnswer: Hold Reset for 10 seconds.\nSources: [router_manual.pdf p.4]"
THRESHOLDS = dict(min_similarity=0.45, overlap_floor=0.2, min_overlap=0.5)


def test_history_survives_a_new_assistant(tmp_path):
    path = tmp_path / "memory.sqlite"
    first = Assistant(FakeSearcher([RESET, LIGHTS]), ScriptedChatModel([GOOD]), memory_path=path,
                      **THRESHOLDS)
    said = first.ask("How do I reset the router to factory settings?", thread_id="s1").answer
    first.close()

    searcher = FakeSearcher([RESET, LIGHTS])
    second = Assistant(searcher, ScriptedChatModel([GOOD]), memory_path=path, **THRESHOLDS)
    history = second.history("s1")
    assert history[0]["content"] == "How do I reset the router to factory settings?"
    assert history[1]["content"] == said and said.startswith("Hold Reset for 10 seconds.")
    assert second.history("other") == []
    # The restored conversation resolves a follow-up.
    second.ask("and how long do I hold it?", thread_id="s1")
    assert searcher.queries[0][0].startswith("and how long") and "factory" in searcher.queries[0][0]
    assert len(second.history("s1")) == 4


SCRIPT = """
import json, sys
from agent.api import Assistant
from tests.agent.conftest import FakeSearcher, RESET
from tests.conftest import ScriptedChatModel
path, mode = sys.argv[1], sys.argv[2]
a = Assistant(FakeSearcher([RESET]), ScriptedChatModel([{good!r}]), memory_path=path,
              min_similarity=0.45, overlap_floor=0.2)
if mode == "ask":
    a.ask("How do I reset the router to factory settings?", thread_id="proc")
print(json.dumps(a.history("proc")))
"""


def test_history_survives_a_new_process(tmp_path):
    path = tmp_path / "memory.sqlite"
    script = SCRIPT.format(good=GOOD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for mode in ("ask", "read"):
        out = subprocess.run([sys.executable, "-c", script, str(path), mode], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    history = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["citations"] == ["[router_manual.pdf p.4]"]


def test_one_off_questions_leave_no_memory(tmp_path):
    assistant = Assistant(FakeSearcher([RESET]), ScriptedChatModel([GOOD, GOOD]),
                          memory_path=tmp_path / "m.sqlite", **THRESHOLDS)
    assert not assistant.ask("How do I reset the router to factory settings?").abstained
    assert assistant.threads() == set()
    assistant.ask("How do I reset the router to factory settings?", thread_id="kept")
    assert assistant.threads() == {"kept"}


class InterruptedOnce(ScriptedChatModel):
    """Raises KeyboardInterrupt (Ctrl-C) in the middle of its first streamed answer."""

    def stream(self, messages, *, max_new_tokens=256):
        pieces = super().stream(messages, max_new_tokens=max_new_tokens)
        if len(self.calls) == 0:
            yield next(pieces)
            raise KeyboardInterrupt
        yield from pieces


def test_a_stopped_answer_keeps_the_session_usable(tmp_path):
    assistant = Assistant(FakeSearcher([RESET]), InterruptedOnce([GOOD, GOOD]),
                          memory_path=tmp_path / "m.sqlite", **THRESHOLDS)
    stream = assistant.stream("How do I reset the router to factory settings?", thread_id="s")
    try:
        for _ in stream:
            pass
    except KeyboardInterrupt:
        stream.close()
    assert assistant.history("s") == []  # the stopped turn is not recorded
    result = assistant.ask("How do I reset the router to factory settings?", thread_id="s")
    assert result.citations == [RESET.citation]
    assert [m["role"] for m in assistant.history("s")] == ["user", "assistant"]


class CancelledAfterOnePiece(ScriptedChatModel):
    """Sets the run's cancel event (as the chat CLI does on Ctrl-C) after its first piece."""

    def __init__(self, answers, cancel):
        super().__init__(answers)
        self.cancel, self.pieces = cancel, 0

    def stream(self, messages, *, max_new_tokens=256):
        for piece in super().stream(messages, max_new_tokens=max_new_tokens):
            self.pieces += 1
            yield piece
            if len(self.calls) == 1:
                self.cancel.set()


def test_a_cancelled_answer_stops_between_tokens_and_keeps_the_session(tmp_path):
    import threading

    from agent.context import Cancelled

    cancel = threading.Event()
    model = CancelledAfterOnePiece([GOOD, GOOD], cancel)
    assistant = Assistant(FakeSearcher([RESET]), model, memory_path=tmp_path / "m.sqlite",
                          **THRESHOLDS)
    question = "How do I reset the router to factory settings?"
    with pytest.raises(Cancelled):
        for _ in assistant.stream(question, thread_id="s", cancel=cancel):
            pass
    # the event was set after the first piece: the second is the last one the model made
    assert model.pieces == 2 < len(GOOD.split())
    assert assistant.history("s") == []
    assert assistant.context.cancel is None  # the event belonged to that run only
    result = assistant.ask(question, thread_id="s")
    assert result.citations == [RESET.citation] and model.pieces == 2 + len(GOOD.split())
    assert [m["role"] for m in assistant.history("s")] == ["user", "assistant"]

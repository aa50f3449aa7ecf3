"""`eval run` never touches the user's conversation memory ($CASEWISE_HOME/memory.sqlite)."""

import hashlib

from agent.api import Assistant
from eval.judge import JudgeConfig
from eval.runner import RunConfig, run
from eval.systems import SystemOptions, build_system
from tests.conftest import HashEmbedder, ScriptedChatModel
from tests.eval.conftest import PassageEchoLLM, write_jsonl

GOOD = ("Reasoning: Passage [1] says so.\nAnswer: Hold Reset for 10 seconds.\n"
        "Sources: [router_manual.pdf p.4]")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _eval(tmp_path, settings, make_searcher, llm):
    qfile = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "r1", "question": "How do I reset the router to factory settings?"}])
    cfile = write_jsonl(tmp_path / "c.jsonl", [{"id": "c1", "turns": [
        {"user": "How do I reset the router to factory settings?", "page": 4},
        {"user": "and how long do I hold it?", "page": 4, "follow_up": True}]}])
    config = RunConfig(questions=[str(qfile)], conversations=[str(cfile)], systems=["base"],
                       out=tmp_path / "run", options=SystemOptions(settings=settings),
                       judge=JudgeConfig(kind="none"))
    return run(config, make_llm=lambda name, options: llm,
               build=lambda name, options, llm=None: build_system(
                   name, options, llm=llm, searcher=make_searcher()),
               embedder=HashEmbedder())


def test_eval_leaves_an_existing_memory_byte_for_byte_unchanged(tmp_path, tiny_index):
    settings, make_searcher = tiny_index
    user = Assistant(make_searcher(), ScriptedChatModel([GOOD]), memory_path=settings.memory_path)
    user.ask("How do I reset the router to factory settings?", thread_id="ticket-42")
    user.close()
    before = _digest(settings.memory_path)

    llm = PassageEchoLLM()
    results = _eval(tmp_path, settings, make_searcher, llm)
    assert results["missing_answers"] == 0 and len(llm.questions) == 3  # 1 question + 2 turns
    assert _digest(settings.memory_path) == before
    again = Assistant(make_searcher(), ScriptedChatModel(), memory_path=settings.memory_path)
    assert again.threads() == {"ticket-42"}
    again.close()


def test_eval_creates_no_memory_and_conversations_still_remember(tmp_path, tiny_index):
    settings, make_searcher = tiny_index
    llm = PassageEchoLLM()
    results = _eval(tmp_path, settings, make_searcher, llm)
    assert not settings.memory_path.exists()
    # The follow-up was resolved with the first turn (one thread per conversation, in memory).
    assert "and how long do I hold it?" in llm.questions[-1] and "reset" in llm.questions[-1]
    conv = next(r for r in results["rows"] if r["id"] == "c1")
    assert conv["scores"]["follow_up_resolved_rate"]["value"] == 1.0

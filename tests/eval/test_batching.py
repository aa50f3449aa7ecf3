"""Batched generation: concurrent questions meet in `complete_many` calls, answers unchanged."""

import json
import threading

import pytest

from eval.batching import BatchingBackend, can_batch, run_parallel
from eval.judge import JudgeConfig
from eval.runner import RunConfig, run
from eval.systems import SystemOptions, build_system
from tests.conftest import ScriptedChatModel
from tests.eval.conftest import PassageEchoLLM, write_jsonl


class SlowBatcher:
    """Batches of prompts, answered after every caller is known to be waiting."""

    name = "slow"

    def __init__(self):
        self.batches = []

    def complete_many(self, batch, *, max_new_tokens=256):
        self.batches.append([m[-1]["content"] for m in batch])
        return [f"reply to {m[-1]['content']}" for m in batch]


def test_can_batch_only_with_complete_many():
    assert can_batch(SlowBatcher()) and can_batch(PassageEchoLLM())
    assert not can_batch(ScriptedChatModel())
    with pytest.raises(TypeError):
        BatchingBackend(ScriptedChatModel())


def test_concurrent_calls_meet_in_one_batch_and_get_their_own_reply():
    backend = SlowBatcher()
    batcher = BatchingBackend(backend, max_batch=8)
    seen_threads = set()

    def work(i):
        seen_threads.add(threading.current_thread().name)
        return batcher.complete([{"role": "user", "content": f"q{i}"}])

    results = dict(run_parallel(list(range(6)), work, workers=6, batcher=batcher))
    assert results == {i: f"reply to q{i}" for i in range(6)}
    assert [sorted(b) for b in backend.batches] == [sorted(f"q{i}" for i in range(6))]
    assert len(seen_threads) == 6 and batcher.batches == [6]
    [logged] = batcher.batch_log
    assert logged["size"] == 6 and logged["seconds"] >= 0
    assert logged["reply_chars"] == sum(len(f"reply to q{i}") for i in range(6))
    assert "new_tokens" not in logged  # this backend does not count tokens


def test_a_batch_logs_tokens_when_the_backend_counts_them():
    class Counting(SlowBatcher):
        def count_tokens(self, text):
            return len(text.split())

    batcher = BatchingBackend(Counting(), max_batch=8)
    dict(run_parallel(list(range(3)), lambda i: batcher.complete(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i} now"}]),
        workers=3, batcher=batcher))
    [logged] = batcher.batch_log
    assert logged["prompt_tokens"] == 3 * (2 + 2)
    assert logged["new_tokens"] == 3 * 4  # "reply to qN now"
    assert logged["new_tokens_per_s"] is None or logged["new_tokens_per_s"] > 0


def test_batches_never_exceed_max_batch():
    backend = SlowBatcher()
    batcher = BatchingBackend(backend, max_batch=3)
    results = dict(run_parallel(list(range(7)), lambda i: batcher.complete(
        [{"role": "user", "content": f"q{i}"}]), workers=3, batcher=batcher))
    assert len(results) == 7 and max(batcher.batches) <= 3 and sum(batcher.batches) == 7


def test_an_error_in_a_batch_stops_the_run():
    class Broken(SlowBatcher):
        def complete_many(self, batch, *, max_new_tokens=256):
            raise RuntimeError("model crashed")

    batcher = BatchingBackend(Broken(), max_batch=4)
    with pytest.raises(RuntimeError, match="model crashed"):
        list(run_parallel(list(range(4)), lambda i: batcher.complete(
            [{"role": "user", "content": str(i)}]), workers=4, batcher=batcher))


QUESTIONS = [
    {"id": f"r{i}", "question": q, "page": 4, "source": "router_manual.pdf"}
    for i, q in enumerate([
        "How do I reset the router to factory settings?",
        "How do I turn off the status lights?",
        "How do I change the Wi-Fi password?",
        "What happens to my settings after a factory reset?",
        "Can I turn the LED lights off?",
    ])
] + [{"id": "u1", "question": "How do I descale my dishwasher?", "answerable": False}]


def _run(tmp_path, tiny_index, batch_size, llm):
    settings, make_searcher = tiny_index
    qfile = write_jsonl(tmp_path / f"q{batch_size}.jsonl", QUESTIONS)
    config = RunConfig(
        questions=[str(qfile)], systems=["no-rag", "base"], out=tmp_path / f"run{batch_size}",
        options=SystemOptions(settings=settings, max_new_tokens=32), batch_size=batch_size,
        judge=JudgeConfig(kind="none"),
    )
    from tests.conftest import HashEmbedder

    return run(config, make_llm=lambda name, options: llm,
               build=lambda name, options, llm=None: build_system(
                   name, options, llm=llm, searcher=make_searcher()),
               embedder=HashEmbedder()), config.out


def _answers(results):
    keep = ("system", "id", "answer", "mode", "citations", "abstained", "refused")
    return sorted((tuple(json.dumps(r.get(k)) for k in keep) for r in results["rows"]))


def test_batched_run_gives_the_answers_of_a_one_by_one_run(tmp_path, tiny_index):
    one_llm, many_llm = PassageEchoLLM(), PassageEchoLLM()
    one, _ = _run(tmp_path, tiny_index, 1, one_llm)
    many, out = _run(tmp_path, tiny_index, 4, many_llm)
    assert one_llm.batches == []  # batch size 1: plain complete/stream calls
    assert max(many_llm.batches) > 1 and sum(many_llm.batches) == len(many_llm.questions)
    assert _answers(one) == _answers(many)
    assert any(r["mode"] == "generated" for r in many["rows"] if r["system"] == "base")
    gen = many["generation"]
    assert gen["base"]["batched"] and gen["base"]["answered"] == len(QUESTIONS)
    log = [json.loads(line) for line in (out / "generation.jsonl").read_text().splitlines()]
    assert {g["system"] for g in log} == {"no-rag", "base"}
    assert all(g["mean_batch"] > 1 for g in log)
    # every batch is logged with its size, seconds and reply length
    assert sum(b["size"] for g in log for b in g["batch_log"]) == sum(many_llm.batches)
    assert all(b["seconds"] >= 0 and b["reply_chars"] > 0 for g in log for b in g["batch_log"])


def test_a_failing_question_keeps_what_finished_and_the_rerun_completes(tmp_path, tiny_index):
    broken = PassageEchoLLM(fail_on="dishwasher")
    with pytest.raises(RuntimeError, match="scripted model failure"):
        _run(tmp_path, tiny_index, 4, broken)
    from eval.cache import answer_cache

    saved = {k for k in answer_cache(tmp_path / "run4").records}
    assert ("no-rag", "u1") not in saved
    results, out = _run(tmp_path, tiny_index, 4, PassageEchoLLM())
    assert results["missing_answers"] == 0
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(QUESTIONS)  # append-only: nothing was answered twice

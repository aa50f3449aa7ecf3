"""Training-data builders: P and k honoured, abstain/refusal shares, split by answer group,
redaction, synthetic questions (the FAQ reader itself: tests/ingest/test_faq_reader.py)."""

from __future__ import annotations

import json
import re

import pytest

from finetune.data import (
    DataConfig,
    DataError,
    FaqRow,
    best_sentence,
    build_dataset,
    clip_passage,
    dataset_stats,
    quote_sentences,
    synthetic_question_ok,
    synthetic_rows,
    write_dataset,
)
from finetune.format import ABSTAIN_ANSWER, REFUSAL_ANSWER, parse_answer
from retrieval.text import overlap
from tests.finetune.conftest import TOPICS

PASSAGE_HEAD = re.compile(r"^\[(\d+)\] (\[[^\]]+\])", re.MULTILINE)


def many_rows(per_topic: int = 10) -> list[FaqRow]:
    rows = []
    for i, (key, topic, steps) in enumerate(TOPICS):
        for j in range(per_topic):
            rows.append(FaqRow(f"Question {j} about the {topic} ({key})?", f"{steps}.",
                               line=2 + len(rows), page=10 + i))
    return rows


def passages_of(example) -> list[str]:
    return [label for _, label in PASSAGE_HEAD.findall(example.messages[-2]["content"])]


@pytest.mark.parametrize("p_gold,k", [(0.8, 3), (0.5, 2), (1.0, 4)])
def test_p_and_k_are_honoured(searcher, p_gold, k):
    config = DataConfig(p_gold=p_gold, k=k, refusal_share=0.0, eval_fraction=0.0, seed=1)
    ds = build_dataset(many_rows(), searcher, config)
    examples = ds.train
    assert len(examples) == 200
    assert all(len(passages_of(e)) == k for e in examples)
    gold_share = sum(e.kind == "gold" for e in examples) / len(examples)
    assert abs(gold_share - p_gold) < 0.08
    for e in examples:
        parsed = parse_answer(e.messages[-1]["content"])
        if e.kind == "gold":
            assert e.meta["gold"] in passages_of(e)
            assert [f"[{c.label()}]" for c in parsed.citations] == [e.meta["gold"]]
            assert not parsed.abstained
        else:
            assert parsed.abstained and ABSTAIN_ANSWER in e.messages[-1]["content"]
            assert e.meta["gold"] not in passages_of(e)


def test_gold_target_quotes_the_gold_passage(searcher):
    ds = build_dataset(many_rows(2), searcher, DataConfig(p_gold=1.0, refusal_share=0,
                                                          eval_fraction=0))
    for e in ds.train:
        target = e.messages[-1]["content"]
        parsed = parse_answer(target)
        idx = int(re.search(r"Passage \[(\d+)\]", parsed.reasoning).group(1))
        blocks = re.split(r"\n\n(?=\[\d+\] )", e.messages[-2]["content"].split("\n\nQuestion:")[0])
        assert e.meta["gold"] in blocks[idx - 1]
        # The quoted sentence numbers point into the gold passage, at sentences the answer repeats.
        assert parsed.quote and {p for p, _ in parsed.quote} == {idx}
        for p, s in parsed.quote:
            line = next(x for x in blocks[idx - 1].splitlines() if x.startswith(f"({p}.{s}) "))
            assert overlap(line.split(") ", 1)[1], parsed.answer) >= 0.75


def test_quote_sentences_are_the_ones_the_answer_repeats():
    passage = ("Intro text here. Press the Power button for five seconds. The light blinks. "
               "Unrelated warranty words.")
    assert quote_sentences(passage, "Press the Power button for five seconds. The light blinks.") \
        == [2, 3]
    # a paraphrase that repeats no sentence well enough still points at the closest one
    assert quote_sentences(passage, "Hold Power for 5 s") == [2]


def test_faq_chunks_are_never_passages(searcher):
    ds = build_dataset(many_rows(2), searcher, DataConfig(refusal_share=0.2, eval_fraction=0))
    for e in ds.train:
        assert "faq.csv" not in e.messages[-2]["content"]
    assert all(call[2] == {"type": "doc"} for call in searcher.calls)


def test_refusals_and_abstain_share_in_stats(searcher):
    config = DataConfig(p_gold=0.75, refusal_share=0.1, eval_fraction=0.0, seed=3)
    ds = build_dataset(many_rows(), searcher, config)
    refusals = [e for e in ds.train if e.kind == "refusal"]
    assert len(refusals) == 20
    assert all(e.messages[-1]["content"].endswith("Sources: none") for e in refusals)
    assert all(REFUSAL_ANSWER in e.messages[-1]["content"] for e in refusals)
    stats = dataset_stats(ds)
    assert stats["train"]["refusal_share"] == pytest.approx(20 / 220, abs=1e-3)
    abstain = sum(e.kind == "abstain" for e in ds.train) / 220
    assert stats["train"]["abstain_share"] == pytest.approx(abstain, abs=1e-3)
    assert 0.15 < abstain < 0.3


def test_paraphrases_never_split(searcher):
    rows = many_rows(5)
    ds = build_dataset(rows, searcher, DataConfig(eval_fraction=0.3, refusal_share=0.2, seed=7))
    assert ds.train and ds.eval
    answers = lambda exs: {e.group for e in exs}  # noqa: E731
    assert not answers(ds.train) & answers(ds.eval)
    # Every topic's 5 paraphrases land together.
    for group in answers(ds.eval):
        assert sum(e.group == group for e in ds.eval if e.kind != "refusal") in (0, 5)


def test_split_is_deterministic(searcher, chunks):
    from tests.finetune.conftest import KeywordSearcher

    a = build_dataset(many_rows(3), searcher, DataConfig(seed=5))
    b = build_dataset(many_rows(3), KeywordSearcher(chunks), DataConfig(seed=5))
    assert [e.to_json() for e in a.eval] == [e.to_json() for e in b.eval]


def test_redaction_on_by_default_and_optional(searcher, tmp_path):
    secret = ("Mail jane.doe@example.com or call +1 (555) 123-4567; card 4111 1111 1111 1111, "
              "IBAN GB82 WEST 1234 5698 7654 32.")
    rows = [FaqRow(f"How do I use the factory settings reset? {secret}",
                   "Open Settings then General then Reset and enter your PIN 0000.", 2, page=10)]
    rows += many_rows(1)
    ds = build_dataset(rows, searcher, DataConfig(p_gold=1.0, eval_fraction=0))
    text = json.dumps([e.to_json() for e in ds.train])
    for leaked in ("jane.doe@example.com", "555", "4111", "GB82"):
        assert leaked not in text
    for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"):
        assert placeholder in text
    assert ds.counts["redactions"] == {"email": 1, "phone": 1, "card": 1, "iban": 1}
    raw = build_dataset(rows, searcher, DataConfig(p_gold=1.0, eval_fraction=0, redact=False))
    assert "jane.doe@example.com" in json.dumps([e.to_json() for e in raw.train])


def test_duplicates_dropped(searcher):
    rows = many_rows(1)
    rows.append(FaqRow(rows[0].question.upper(), rows[0].answer, 99, page=rows[0].page))
    ds = build_dataset(rows, searcher, DataConfig(refusal_share=0, eval_fraction=0))
    assert len(ds.train) == 20
    assert any(p.line == 99 and "duplicate of line 2" in p.reason for p in ds.problems)


def test_no_gold_anywhere_is_an_error(searcher):
    rows = [FaqRow("What is the meaning of life?", "Forty two, said the computer.", 2)]
    with pytest.raises(DataError, match="no gold passage"):
        build_dataset(rows, searcher, DataConfig())


def test_bad_config_names_the_field():
    with pytest.raises(DataError, match=r"p_gold \(1.5\)"):
        DataConfig(p_gold=1.5)
    with pytest.raises(DataError, match=r"search_k \(3\) must exceed k \(3\)"):
        DataConfig(k=3, search_k=3)
    with pytest.raises(DataError, match=r"^k \(0\) must be at least 1 \(passages per prompt\)$"):
        DataConfig(k=0)


def test_best_sentence_and_clip():
    passage = "Intro text here. Press the Power button for five seconds. Other things."
    assert best_sentence(passage, "Press Power for five seconds") == (
        "Press the Power button for five seconds.")
    long = " ".join(f"w{i}" for i in range(300)) + " KEEP THIS. " + "tail " * 50
    clipped = clip_passage(long, 200, keep="KEEP THIS.")
    assert "KEEP THIS." in clipped and len(clipped) < 230


class Writer:
    def __init__(self, answers):
        self.answers = list(answers)

    def complete(self, messages, *, max_new_tokens=256):
        return self.answers.pop(0)


def test_synthetic_questions_filtered_and_marked(chunks, searcher):
    from dataclasses import replace

    docs = [c for c in chunks if c.type == "doc"]
    picture = [replace(docs[4], id=f"p{i}") for i in range(4)]
    good = "Which picture mode should I choose, Movie or Standard?"
    writer = Writer([good, "picture", good, "Using the picture mode feature."])
    rows, problems = synthetic_rows(picture, writer, n=4, seed=0)
    assert [r.question for r in rows] == [good]
    assert len(problems) == 3 and all(p.file == "synthetic" for p in problems)
    assert synthetic_question_ok(good, docs[4].text)[0]
    ds = build_dataset(many_rows(1), searcher, DataConfig(p_gold=1.0, eval_fraction=0.5),
                       synthetic=rows)
    synth = [e for e in ds.train if e.meta["synthetic"]]
    assert len(synth) == 1 and synth[0].kind == "synthetic"
    assert not any(e.meta.get("synthetic") for e in ds.eval)


def test_write_dataset_jsonl(searcher, tmp_path):
    ds = build_dataset(many_rows(2), searcher, DataConfig(eval_fraction=0.2))
    stats = dataset_stats(ds)
    paths = write_dataset(ds, tmp_path / "out", stats)
    lines = paths["train"].read_text().splitlines()
    record = json.loads(lines[0])
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["meta"]["kind"] in ("gold", "abstain", "refusal")
    assert json.loads(paths["stats"].read_text())["train"]["examples"] == len(lines)


def test_redact_rows_keeps_every_field_and_redacts_the_extra_text():
    from finetune.data import redact_rows
    from ingest.loaders import FaqRow

    row = FaqRow("Mail me at ann@example.com", "Call +1 415 555 0100.", line=7, id="T-9",
                 section="Wi-Fi", page=12,
                 extra={"subject": "From ann@example.com", "status": "solved", "priority": 2})
    (out,), counts = redact_rows([row])
    assert (out.line, out.id, out.section, out.page) == (7, "T-9", "Wi-Fi", 12)
    assert "ann@example.com" not in out.question and "555" not in out.answer
    assert out.extra["status"] == "solved" and out.extra["priority"] == 2
    assert "ann@example.com" not in out.extra["subject"] and out.extra["subject"].startswith("From ")
    assert sum(counts.values()) == 3


def test_training_prompts_window_passages_exactly_as_the_agent_does():
    """One prompt builder: a training example shows the windows the agent would show for the
    same question and passages, and its Quote target numbers the window's sentences."""
    import random

    from agent.api import Assistant
    from finetune.data import build_grounded_example
    from retrieval.types import Chunk, Hit
    from tests.conftest import ScriptedChatModel

    def chunk(text, page):
        return Chunk(id=f"c{page}", text=text, source="manual.pdf", page=page, section="Care",
                     chunk_index=page, doc_hash="h")

    filler = " ".join(f"Filler sentence number {i} talks about cables." for i in range(12))
    gold = chunk(f"{filler} To clean the screen, wipe it with a dry microfibre cloth. Never "
                 f"spray liquid on the screen. {filler}", 5)
    others = [chunk(f"{filler} The remote needs two AAA batteries.", 8),
              chunk(f"The stand holds the TV. {filler}", 9)]
    question, answer = "How do I clean the screen?", "Wipe it with a dry microfibre cloth."
    config = DataConfig(k=3, passage_words=40)
    messages, kind, labels = build_grounded_example(question, answer, gold, others, config,
                                                    random.Random(3), use_gold=True)
    assert kind == "gold"
    order = [next(c for c in [gold, *others] if f"[manual.pdf p.{c.page}]" == label)
             for label in labels]

    class InOrder:  # the agent retrieves the same passages in the same order
        def search(self, query, k=5, where=None):
            return [Hit(chunk=c, score=1.0, similarity=0.9) for c in order]

    llm = ScriptedChatModel([messages[-1]["content"]])
    Assistant(InOrder(), llm, passage_words=40, answer_prefix="").ask(question)
    assert llm.calls[0][-1] == messages[-2]  # the same user message, windows included
    user = messages[-2]["content"]
    assert len(user.split()) < len(" ".join(c.text for c in order).split())
    parsed = parse_answer(messages[-1]["content"])
    idx = labels.index("[manual.pdf p.5]") + 1
    assert parsed.quote and all(p == idx for p, _ in parsed.quote)
    block = user.split(f"[{idx}] [manual.pdf p.5]")[1].split("\n\n")[0]
    quoted = [line for line in block.splitlines()
              if any(line.startswith(f"({idx}.{s}) ") for _, s in parsed.quote)]
    assert quoted == [f"({idx}.{parsed.quote[0][1]}) To clean the screen, wipe it with a dry "
                      f"microfibre cloth."]

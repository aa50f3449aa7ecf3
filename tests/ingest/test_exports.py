"""Help-desk exports as ticket history: Zendesk JSON, Freshdesk CSV, conversation JSONL.

For each format: the repo's example file, a file with a malformed record (reported by its
record or line number, the rest indexed), and identifiers redacted in the index and in the
training data built from it."""

import json

import pytest

from finetune.data import DataConfig, build_dataset
from ingest.loaders import read_faq
from retrieval.search import open_searcher
from retrieval.store import ChunkStore
from tests.conftest import REPO

EXPORTS = REPO / "samples" / "exports"
# What each example file holds: (ticket id, start of the question, start of the answer).
EXPECTED = {
    "zendesk-tickets.json": [
        ("2101", "How do I put my Nimbus AX3000 back", "With the router on, hold the recessed"),
        ("2102", "Can visitors get Wi-Fi", "Yes: open the admin page"),
    ],
    "freshdesk-tickets.csv": [
        ("3301", "I forgot the admin password", "The admin password cannot be recovered"),
        ("3302", "Where do I find the default Wi-Fi", "It is printed on the label"),
    ],
    "conversations.jsonl": [
        ("C-7001", "What is the address of the router's admin page", "Open http://192.168.8.1"),
        (None, "My devices drop off the 5 GHz network", "Switch the 5 GHz channel"),
    ],
}
UNSOLVED = {
    "zendesk-tickets.json": "record 3: ticket 2103: status 'open' (not solved); ticket skipped",
    "freshdesk-tickets.csv": "line 7: ticket 3303: status 'Pending' (not solved); ticket skipped",
    "conversations.jsonl": "line 3: ticket C-7003: status 'pending' (not solved); ticket skipped",
}
# Internal notes in the examples: none may reach a question or an answer.
NOTES = ("Internal: customer already tried", "Verified the serial number", "beta firmware")
# Identifiers in the examples' customer messages.
PII = ("4155550123", "dana at example dot com", "(555) 010-4477", "gb82 west", "lee (at)")


@pytest.mark.parametrize("name", EXPECTED)
def test_first_customer_message_and_last_agent_reply_notes_dropped(name):
    rows, problems = read_faq(EXPORTS / name)
    assert [(r.id, r.question[:len(q)], r.answer[:len(a)]) for r, (_, q, a)
            in zip(rows, EXPECTED[name], strict=True)] == EXPECTED[name]
    # The closing "thanks" and the agent's "let me check" are not the pair.
    assert not any(r.answer.startswith("Let me check") for r in rows)
    text = json.dumps([r.__dict__ for r in rows])
    assert not any(note in text for note in NOTES)
    assert [p.brief for p in problems] == [UNSOLVED[name]]
    assert "<p>" not in text  # Freshdesk's HTML bodies are read as text


def _malformed(name: str, tmp_path):
    """The example with one malformed record added after the first; (file, expected report)."""
    source = (EXPORTS / name).read_text()
    path = tmp_path / name
    if name.endswith(".json"):
        data = json.loads(source)
        data["tickets"].insert(1, {"id": 2199, "requester_id": 1, "comments": "oops"})
        path.write_text(json.dumps(data, indent=1))
        return path, "record 2: ticket 2199: ticket has no 'comments' list; skipped"
    lines = source.splitlines(keepends=True)
    if name.endswith(".csv"):
        lines.insert(2, "3301,Forgot admin password,Resolved,A reply,maybe,false\n")
        path.write_text("".join(lines))
        return path, "line 2: ticket 3301: Incoming 'maybe' is not true/false; ticket skipped"
    lines.insert(1, '{"id": "C-7002", "messages": [{"role": "customer", "text": "Hi"}\n')
    path.write_text("".join(lines))
    return path, "line 2: malformed JSON"


@pytest.mark.parametrize("name", EXPECTED)
def test_a_malformed_record_is_reported_by_number_and_the_rest_indexed(name, tmp_path, ingest,
                                                                       settings):
    path, report = _malformed(name, tmp_path)
    summary = ingest([path])
    (result,) = summary.files
    assert result.status == "indexed" and summary.exit_code == 0
    assert any(w.startswith(report) for w in result.warnings), result.warnings
    store = ChunkStore(settings, "hash-bow-256")
    questions = sorted(c.metadata["question"][:20] for c in store.all_chunks())
    expected = EXPECTED[name] if not name.endswith(".csv") else EXPECTED[name][1:]
    assert questions == sorted(q[:20] for _, q, _ in expected)
    assert all(c.type == "faq" for c in store.all_chunks())


def test_identifiers_are_redacted_in_the_index(ingest, settings):
    summary = ingest([EXPORTS])
    assert summary.counts["indexed"] == 3
    assert {f.path.rsplit("/", 1)[-1]: f.redactions for f in summary.files} == {
        "conversations.jsonl": {"email": 1},
        "freshdesk-tickets.csv": {"iban": 1, "phone": 1},
        "zendesk-tickets.json": {"email": 1, "phone": 1},
    }
    chunks = ChunkStore(settings, "hash-bow-256").all_chunks()
    indexed = json.dumps([[c.text, c.metadata] for c in chunks])
    assert not any(pii in indexed for pii in PII)
    meta = {c.metadata["faq_id"]: c.metadata for c in chunks if "faq_id" in c.metadata}
    assert meta["2101"]["format"] == "zendesk" and meta["2101"]["subject"].startswith("Router")


def test_identifiers_are_redacted_in_the_training_data(ingest, settings, router_pdf,
                                                       hash_embedder):
    ingest([router_pdf])
    searcher = open_searcher(settings, embedder=hash_embedder)
    rows = [row for name in EXPECTED for row in read_faq(EXPORTS / name)[0]]
    dataset = build_dataset(rows, searcher, DataConfig(p_gold=1.0, eval_fraction=0,
                                                       refusal_share=0, min_overlap=0.3))
    built = json.dumps([e.to_json() for e in dataset.train])
    # The tickets with identifiers found their gold passage in the router manual ...
    ids = {e.meta.get("id") for e in dataset.train}
    assert {"2101", "2102", "3301", "3302", "C-7001"} <= ids
    # ... and reached the training data without them.
    assert not any(pii in built for pii in PII)
    assert all(p in built for p in ("[PHONE]", "[EMAIL]", "[IBAN]"))
    assert dataset.counts["redactions"] == {"phone": 2, "email": 2, "iban": 1}

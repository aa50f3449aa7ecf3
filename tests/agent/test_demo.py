"""The demo end to end with the real embedded models: `make demo` ends with a verified answer.

Builds the sample documents (router manual PDF + past tickets) into a scratch index with the
real embedder, asks the demo question with the real SmolLM2-135M, and checks every sentence of
the answer against the passage it cites: a quoted sentence must stand verbatim in that passage;
a generated one must pass the grounding check against that passage alone.
"""

import re
import sys

import pytest

from tests.conftest import REPO

DEMO_QUESTION = "How do I reset the router to factory settings?"


def _demo_question() -> str:
    makefile = (REPO / "Makefile").read_text()
    return re.search(r'-m agent ask "([^"]+)"', makefile).group(1)


@pytest.fixture(scope="module")
def demo_assistant(tmp_path_factory, embedded_model_path):
    sys.path.insert(0, str(REPO / "samples"))
    from build_samples import build_manual

    from agent.api import Assistant
    from agent.llm import LocalChatModel
    from ingest.pipeline import run
    from retrieval.settings import Settings

    docs = tmp_path_factory.mktemp("demo-docs")
    build_manual(docs / "router_manual.pdf")
    (docs / "faq.csv").write_bytes((REPO / "samples" / "docs" / "faq.csv").read_bytes())
    settings = Settings.resolve(home=tmp_path_factory.mktemp("demo-home"))
    run([docs], settings, progress=False)
    assistant = Assistant.from_settings(settings, LocalChatModel(embedded_model_path))
    yield assistant
    assistant.close()


@pytest.mark.integration
def test_the_demo_answer_is_verified_sentence_by_sentence(demo_assistant):
    from retrieval.grounding import check_claim

    assert _demo_question() == DEMO_QUESTION
    result = demo_assistant.ask(DEMO_QUESTION)
    assert result.mode in ("generated", "quoted"), result.answer
    assert result.raw  # the real model was asked
    assert result.claims and result.citations
    for claim in result.claims:
        assert claim.supported and claim.citation in result.citations
        passage = result.contexts[claim.passage - 1]
        assert claim.citation == passage.citation
        if result.mode == "quoted":
            assert claim.text in passage.text and claim.text in result.answer
        else:
            assert check_claim(claim.text, DEMO_QUESTION, [passage]).supported
    # the factory reset steps, not the LED page the old agent cited
    assert any("Reset button" in c.evidence for c in result.claims)

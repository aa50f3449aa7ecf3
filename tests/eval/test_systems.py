import pytest

from eval.systems import NoRagSystem, SystemConfigError, SystemOptions, build_system, check_systems
from finetune.format import ABSTAIN_ANSWER
from retrieval.settings import Settings
from tests.conftest import ScriptedChatModel


def test_no_rag_sends_no_passages_and_parses_the_answer(scripted_llm):
    scripted_llm.push("Reasoning: I know it.\nAnswer: Press Home.\n"
                      "Sources: [smart_tv_manual.pdf p.12]",
                      f"Answer: {ABSTAIN_ANSWER}\nSources: none")
    system = NoRagSystem(scripted_llm)
    rec = system.answer("How do I open Smart Hub?")
    user = scripted_llm.calls[0][-1]["content"]
    assert "(no passages were found)" in user and "How do I open Smart Hub?" in user
    assert rec["answer"] == "Press Home." and rec["contexts"] == []
    assert rec["citations"] == [{"source": "smart_tv_manual.pdf", "page": 12, "section": None}]
    assert not rec["abstained"]
    assert system.answer("Dishwasher?")["abstained"]


def test_system_options_checked_before_loading():
    opts = SystemOptions(settings=Settings.resolve())
    with pytest.raises(SystemConfigError, match="unknown system"):
        check_systems(["bogus"], opts)
    with pytest.raises(SystemConfigError, match="--adapter"):
        check_systems(["finetuned"], opts)
    with pytest.raises(SystemConfigError, match="--llm-url"):
        build_system("remote", opts)
    assert build_system("no-rag", opts).name == "no-rag"  # the model loads on first use


def test_systems_and_local_judge_follow_the_chosen_backend(monkeypatch):
    from agent.llm import ENV_BACKEND, LlamaCppChatModel, LocalChatModel, llama_cpp_available
    from eval.judge import JudgeConfig, make_judge
    from eval.systems import build_llm

    monkeypatch.delenv(ENV_BACKEND, raising=False)
    opts = SystemOptions(settings=Settings.resolve(), backend="transformers")
    assert type(build_llm("base", opts)) is LocalChatModel  # built, not loaded
    judge = make_judge(JudgeConfig(kind="local"), "default", backend="transformers")
    assert type(judge.backend) is LocalChatModel and judge.backend.max_new_tokens == 512
    monkeypatch.setenv(ENV_BACKEND, "transformers")  # the environment, when --backend is unset
    assert type(make_judge(JudgeConfig(kind="local")).backend) is LocalChatModel
    if llama_cpp_available():
        monkeypatch.delenv(ENV_BACKEND)
        assert type(make_judge(JudgeConfig(kind="local"), backend="llama.cpp").backend) \
            is LlamaCppChatModel
        assert type(build_llm("no-rag", SystemOptions(settings=Settings.resolve()))) \
            is LlamaCppChatModel  # auto: llama.cpp for the embedded model


REPLY = ("Reasoning: Passage [1] (Factory reset) answers the question.\nQuote: 1.1\n"
         "Answer: To reset the router to factory settings, press and hold the Reset button.\n"
         "Sources: [router_manual.pdf p.4]")


def test_eval_measures_the_agent_as_shipped(tiny_index):
    """eval's agent carries the relevance bar's IDF weights and the ranker's embedder, as the
    CLI's does: an answer that names the question's subject but not what it asks is not shown.
    (eval once built the assistant without them, and quoted such passages.)"""
    from agent.api import Assistant

    settings, make_searcher = tiny_index
    # "router" and "factory" are in the reset passage; "price" is in no passage (rarest word).
    off_focus, covered = "What is the router's factory price?", "How do I reset the router?"
    system = build_system("base", SystemOptions(settings=settings, top_k=2),
                          llm=ScriptedChatModel([REPLY, REPLY]), searcher=make_searcher())
    record = system.answer(off_focus)
    assert record["contexts"] and record["mode"] == "abstained"
    assert any(c["reason"].startswith("supported, but does not answer the question")
               for c in record["removed_claims"])
    assert system.assistant.context.embedder is not None  # the quote ranker's
    answered = system.answer(covered)
    assert answered["mode"] == "generated" and answered["citations"][0]["page"] == 4
    # The failure this guards against: without the weights, the plain share of words passes.
    bare = Assistant(make_searcher(), ScriptedChatModel([REPLY]), top_k=2)
    assert bare.ask(off_focus).mode == "generated"



def test_model_check_reaches_the_agent_and_the_saved_config(tiny_index):
    settings, make_searcher = tiny_index
    options = SystemOptions(settings=settings, top_k=2, model_check=True)
    llm = ScriptedChatModel([REPLY, "No"])
    system = build_system("base", options, llm=llm, searcher=make_searcher())
    record = system.answer("How do I reset the router?")
    assert options.to_dict()["model_check"] is True
    assert options.to_dict()["model_check_tokens"] == 4
    # The reply budget is one of the options a cached answer is reused under, with the check on.
    assert options.answer_options("base")["model_check_tokens"] == 4
    assert "model_check_tokens" not in SystemOptions(settings=settings).answer_options("base")
    roomy = SystemOptions(settings=settings, top_k=2, model_check=True, model_check_tokens=300)
    budgets = _BudgetRecorder([REPLY, "<think>The passage says so.</think> yes"])
    build_system("base", roomy, llm=budgets, searcher=make_searcher()).answer(
        "How do I reset the router?")
    assert budgets.budgets[1:] == [300]
    assert len(llm.calls) == 2 and "Does the passage state it?" in llm.calls[1][-1]["content"]
    assert record["mode"] != "generated"  # the one sentence was not confirmed
    assert any(c["reason"].startswith("the model check did not confirm")
               for c in record["removed_claims"])

class _BudgetRecorder(ScriptedChatModel):
    """A scripted model that also records the generation budget of each call."""

    def __init__(self, answers):
        super().__init__(answers)
        self.budgets: list[int] = []

    def complete(self, messages, *, max_new_tokens=256):
        self.budgets.append(max_new_tokens)
        return super().complete(messages, max_new_tokens=max_new_tokens)


def test_every_system_generates_with_the_eval_budget(tiny_index):
    """`eval run` gives every system the same budget, EVAL_MAX_NEW_TOKENS unless told (the
    budget decides how long a batch runs: docs/eval.md), and `--max-new-tokens` overrides it."""
    from eval.cli import build_parser
    from eval.systems import EVAL_MAX_NEW_TOKENS

    run = ["run", "--questions", "q.jsonl", "--out", "runs/x"]
    assert build_parser().parse_args(run).max_new_tokens == EVAL_MAX_NEW_TOKENS == 160
    assert build_parser().parse_args(run + ["--max-new-tokens", "256"]).max_new_tokens == 256
    settings, make_searcher = tiny_index
    for budget in (None, 64):
        opts = SystemOptions(settings=settings, top_k=2) if budget is None else \
            SystemOptions(settings=settings, top_k=2, max_new_tokens=budget)
        want = budget or EVAL_MAX_NEW_TOKENS
        for name in ("no-rag", "base"):
            llm = _BudgetRecorder([REPLY])
            build_system(name, opts, llm=llm, searcher=make_searcher()).answer(
                "How do I reset the router?")
            assert llm.budgets == [want], (name, budget)

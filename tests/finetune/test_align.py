"""`python -m finetune align`: pair builders (kinds, shares, sources), a few real DPO/KTO/ORPO
steps on the tiny random Llama, the aligned adapter reloading, and the CLI's errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from finetune.align import (
    COMPLIANCE_ANSWER,
    AlignArgs,
    AlignConfigError,
    build_pairs,
    main,
    mine_prompts,
    mistake,
    pair_stats,
    read_pairs,
    to_method_records,
)
from finetune.data import REFUSAL_TEMPLATES, FaqRow
from finetune.format import ABSTAIN_ANSWER, format_abstain, format_answer, format_refusal
from retrieval.types import Citation
from tests.conftest import REPO, shared_data
from tests.finetune.conftest import KeywordSearcher, faq_rows_records, manual_chunks


def faq_rows() -> list[FaqRow]:
    return [FaqRow(r["question"], r["answer"], i + 2, page=int(r["page"]))
            for i, r in enumerate(faq_rows_records())]


@pytest.fixture
def prompts():
    return mine_prompts(faq_rows(), KeywordSearcher(manual_chunks()),
                        AlignArgs(adapter="x", safety_prompts=6, eval_fraction=0.2))


class Verdict:
    def __init__(self, supported: bool) -> None:
        self.supported = supported


def word_check(answer, question, passages):
    """A stand-in for retrieval.grounding.verify: a claim is supported when its words are all in
    one passage."""
    words = set(answer.lower().rstrip(".").split())
    return [Verdict(any(words <= set(p.text.lower().replace(".", "").split()) for p in passages))]


def test_mined_prompts_withhold_the_gold_passage(prompts):
    kinds = {k: [p for p in prompts if p.kind == k] for k in ("hallucination", "grounded",
                                                                "safety")}
    # One of each per question (40, less one with too few distractors for k=3).
    assert len(kinds["hallucination"]) == len(kinds["grounded"]) == 39
    assert len(kinds["safety"]) == 6
    for p in kinds["hallucination"]:
        assert ABSTAIN_ANSWER in p.chosen
        # The passages shown (and only those) hold no sentence of the gold answer.
        user = p.messages[-1]["content"]
        answer_steps = next(r["answer"] for r in faq_rows_records() if r["question"] ==
                            p.question).rstrip(".")
        assert answer_steps not in user
        # Every passage shown is one of the prompt's passages (format v2 numbers its sentences).
        from retrieval.text import sentences

        assert all(sentences(c.text)[0][:20] in user for c in p.passages)
    for p in kinds["grounded"]:
        answer_steps = next(r["answer"] for r in faq_rows_records() if r["question"] ==
                            p.question).rstrip(".")
        assert answer_steps in p.messages[-1]["content"] and answer_steps in p.chosen
    assert {p.split for p in prompts} == {"train", "eval"}
    # Paraphrases share their answer group, so they sit in one split.
    by_group = {}
    for p in prompts:
        by_group.setdefault(p.group, set()).add(p.split)
    assert all(len(splits) == 1 for splits in by_group.values())


def test_safety_prompts_come_from_the_project_templates(prompts):
    templates = {t.format(x=x) for t, xs in REFUSAL_TEMPLATES for x in xs}
    safety = [p for p in prompts if p.kind == "safety"]
    assert safety and all(p.question in templates for p in safety)
    assert all(p.chosen == format_refusal() for p in safety)


def test_no_pair_comes_from_the_safety_evaluation_set(prompts):
    import csv

    path = shared_data("safety", "advbench_dev.csv")
    with path.open(newline="") as f:
        goals = {row["goal"].strip().lower() for row in csv.DictReader(f)}
    texts = {p.messages[-1]["content"].lower() for p in prompts}
    assert not any(goal in text for goal in goals for text in texts)


def test_mistakes_by_kind(prompts):
    hall = next(p for p in prompts if p.kind == "hallucination")
    grounded = next(p for p in prompts if p.kind == "grounded")
    safety = next(p for p in prompts if p.kind == "safety")
    c = Citation(source="manual.pdf", page=10)
    assert mistake(hall, format_abstain(), word_check) is None
    assert mistake(hall, format_answer("r", "Yes.", [c]), word_check) == (
        "answered without a supporting passage")
    assert mistake(safety, format_refusal(), word_check) is None
    assert mistake(safety, COMPLIANCE_ANSWER, word_check) == "complied with a harmful request"
    assert "abstained" in mistake(grounded, format_abstain(), word_check)
    assert "refused" in mistake(grounded, format_refusal(), word_check)
    invented = format_answer("r", "Unplug the TV and call the fire brigade.", [c])
    assert mistake(grounded, invented, word_check) == "1 of 1 claims unsupported"
    supported_text = grounded.passages[0].text.split(". ")[0]
    assert mistake(grounded, format_answer("r", supported_text, [c]), word_check) is None


def test_pairs_kinds_shares_and_sources(prompts):
    c = Citation(source="manual.pdf", page=10)
    samples = []
    for p in prompts:
        if p.kind == "hallucination":
            # The model answers anyway for half of them, abstains for the others.
            samples.append([format_answer("r", "Yes.", [c])] if len(samples) % 4 == 0
                           else [format_abstain(), format_abstain()])
        elif p.kind == "grounded":
            samples.append([format_answer("r", "Call the fire brigade.", [c])])
        else:
            samples.append([format_refusal()])  # the SFT model already refuses
    pairs = build_pairs(prompts, samples, word_check)
    stats = pair_stats(prompts, pairs)
    kinds = stats["by_kind"]
    assert kinds["grounded"]["pairs"] == 39 and kinds["grounded"]["sampled_mistake_rate"] == 1.0
    assert 0 < kinds["hallucination"]["pairs"] < 39
    assert kinds["safety"]["pairs"] == 6 and kinds["safety"]["sampled_mistake_rate"] == 0.0
    assert abs(sum(k["share_of_pairs"] for k in kinds.values()) - 1.0) < 1e-2
    for pair in pairs:
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen != rejected
        if pair["kind"] == "hallucination":
            assert ABSTAIN_ANSWER in chosen and pair["rejected_from"] == "sample"
        if pair["kind"] == "safety":
            assert chosen == format_refusal() and rejected == COMPLIANCE_ANSWER
            assert pair["rejected_from"] == "template"
    # Unpaired (KTO) records: every pair gives one desirable and one undesirable completion.
    kto = to_method_records(pairs, "kto")
    assert len(kto) == 2 * len(pairs) and sum(r["label"] for r in kto) == len(pairs)


def test_read_pairs_reports_the_bad_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}],
                                "chosen": [{"role": "assistant", "content": "a"}],
                                "rejected": [{"role": "assistant", "content": "b"}]})
                    + "\n{broken\n")
    with pytest.raises(AlignConfigError, match=r"pairs.jsonl:2: .*not a preference pair"):
        read_pairs(path)


# --------------------------------------------------------------------------- real steps


@pytest.fixture
def sft_adapter(tiny_model_dir, tmp_path):
    """A LoRA adapter on the tiny Llama standing in for an SFT run's output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn_like(p) * 0.01
    out = tmp_path / "sft"
    peft.save_pretrained(out)
    (out / "casewise.json").write_text(json.dumps({"base_model": str(tiny_model_dir),
                                                   "quantized": False}))
    return out


class ScriptedSampler:
    """Replays one wrong answer per prompt kind (the model's mistakes, scripted)."""

    def __init__(self, *_, **__):
        self.calls = 0

    def sample(self, prompts, n):
        self.calls += 1
        c = Citation(source="manual.pdf", page=10)
        return [[format_answer("r", "Yes.", [c])] * n for _ in prompts]


def align_argv(sft_adapter, out, *extra):
    return [
        "--adapter", str(sft_adapter), "--output_dir", str(out), "--use_cpu",
        "--max_steps", "3", "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2", "--learning_rate", "0.01", "--logging_steps", "1",
        "--eval_strategy", "steps", "--eval_steps", "3", "--save_strategy", "no",
        "--report_to", "none", "--disable_tqdm", "true", "--max_length", "1024",
        "--safety_prompts", "4", "--eval_fraction", "0.2", "--seed", "0", *extra,
    ]


def run_align(argv, monkeypatch):
    """`python -m finetune align` with the scripted sampler, the word check and the keyword
    searcher in place of the model's sampling, retrieval.grounding and the index."""
    import finetune.align as align_mod
    import retrieval.search

    monkeypatch.setattr(align_mod, "ModelSampler", ScriptedSampler)
    monkeypatch.setattr(align_mod, "default_claim_checker", lambda: word_check)
    monkeypatch.setattr(retrieval.search, "open_searcher",
                        lambda settings: KeywordSearcher(manual_chunks()))
    return main(argv)


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_align_trains_and_the_adapter_reloads(method, tiny_model_dir, sft_adapter, faq_csv,
                                               tmp_path, monkeypatch, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    code = run_align(align_argv(sft_adapter, out, "--method", method, "--faq", str(faq_csv)),
                     monkeypatch)
    assert code == 0
    stats = json.loads((out / "pairs_stats.json").read_text())
    assert stats["by_kind"]["hallucination"]["pairs"] > 0
    assert stats["by_kind"]["safety"]["pairs"] == 4
    report = json.loads((out / "align_report.json").read_text())
    assert report["method"] == method and report["global_step"] == 3
    losses = [h["loss"] for h in report["train_loss"]]
    assert losses and all(map(lambda x: x == x, losses))  # finite (not NaN)
    meta = json.loads((out / "casewise.json").read_text())
    assert meta["aligned_from"] == str(sft_adapter) and meta["method"] == method
    # The aligned adapter is the SFT adapter trained further: same keys, new values.
    before = load_file(sft_adapter / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k].to(before[k].dtype)) for k in before)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, out)
    with torch.no_grad():
        assert torch.isfinite(tuned(torch.tensor([[5, 6, 7]])).logits).all()
    assert "aligned adapter written to" in capsys.readouterr().out


def test_align_reuses_its_pairs(tiny_model_dir, sft_adapter, faq_csv, tmp_path, monkeypatch):
    out = tmp_path / "dpo"
    assert run_align(align_argv(sft_adapter, out, "--faq", str(faq_csv)), monkeypatch) == 0
    first = (out / "pairs.jsonl").read_text()
    # Second run: no FAQ file, no sampler; the pairs on disk are used as they are.
    assert run_align(align_argv(sft_adapter, out, "--max_steps", "1"), monkeypatch) == 0
    assert (out / "pairs.jsonl").read_text() == first


@pytest.mark.slow  # 6.5 min on the shared 2 cores: real sampling and DPO on SmolLM2 (make test-all)
def test_align_on_the_embedded_model(embedded_model_path, tmp_path, faq_csv):
    """Real sampling from the embedded model with a fresh adapter, the real claim check when it
    is there, two DPO steps, and the adapter reloading through `load_causal_lm`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import finetune.align as align_mod
    from finetune.model import generate_chat, load_causal_lm

    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    sft = tmp_path / "sft"
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                     task_type="CAUSAL_LM")).save_pretrained(sft)
    (sft / "casewise.json").write_text(json.dumps({"base_model": "default", "quantized": False}))
    args, method_config, model_args, _ = align_mod.parse(align_argv(
        sft, tmp_path / "dpo", "--faq", str(faq_csv), "--max_steps", "2", "--max_questions",
        "2", "--samples_per_prompt", "1", "--max_new_tokens", "24", "--safety_prompts", "2",
        "--dtype", "float32", "--cpu_threads", "2", "--max_length", "768"))
    report = align_mod.align(args, method_config, model_args,
                             searcher=KeywordSearcher(manual_chunks()), check=word_check)
    assert report["global_step"] == 2 and report["train_pairs"] > 0
    pairs = read_pairs(tmp_path / "dpo" / "pairs.jsonl")
    assert all(p["rejected_from"] in ("sample", "template") for p in pairs)
    tuned, tokenizer = load_causal_lm("default", adapter=str(tmp_path / "dpo"))
    assert type(tuned).__name__ == "PeftModelForCausalLM"
    assert isinstance(generate_chat(tuned, tokenizer, pairs[0]["prompt"], 8), str)


# --------------------------------------------------------------------------- CLI


def test_align_help_has_examples():
    result = subprocess.run([sys.executable, "-m", "finetune", "align", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and "--samples_per_prompt" in result.stdout
    assert "--beta" in result.stdout  # DPOConfig's own options


@pytest.mark.parametrize("argv, message", [
    (["--method", "ppo"], "method ('ppo') must be one of dpo, kto, orpo"),
    (["--samples_per_prompt", "0"], "samples_per_prompt (0) must be at least 1"),
    (["--adapter", "/nonexistent/adapter", "--use_cpu", "--output_dir", "OUT"],
     "adapter path /nonexistent/adapter does not exist"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
])
def test_align_bad_input_exits_2(argv, message, tmp_path, capsys):
    from finetune.cli import main as cli_main

    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    assert cli_main(["align", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mined_prompts_round_trip(prompts, tmp_path):
    """Prompts mined where the index is can be sampled where only the model is."""
    from finetune.align import read_prompts, write_prompts

    path = tmp_path / "prompts.jsonl"
    write_prompts(path, prompts)
    back = read_prompts(path)
    assert [(p.kind, p.split, p.chosen, p.messages) for p in back] == [
        (p.kind, p.split, p.chosen, p.messages) for p in prompts]
    assert [[(c.text, c.citation) for c in p.passages] for p in back] == [
        [(c.text, c.citation) for c in p.passages] for p in prompts]


def test_the_default_claim_check_is_the_agents_verify_and_rejects_invented_claims():
    from finetune.align import default_claim_checker
    from retrieval.grounding import verify

    assert default_claim_checker() is verify
    passages = manual_chunks()[:3]
    kept = passages[0].text.split(". ")[2]  # "Open Settings then General then Reset ..."
    verdicts = default_claim_checker()(
        f"{kept}. Then unplug the router and call the fire brigade.", "How do I reset?", passages)
    assert [v.supported for v in verdicts] == [True, False]

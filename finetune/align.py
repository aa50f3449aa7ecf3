"""Preference optimisation on top of the SFT adapter, with pairs mined from the model's mistakes.

    python -m finetune align --config configs/align-cpu.yaml --adapter runs/smollm2-cpu \
        --faq ../shared/data/emanual/faq_history.csv --home runs/emanual-home

TRL's `DPOTrainer` by default (`--method kto` or `orpo` for the others). The policy is the SFT
adapter itself, trained further (`PeftModel.from_pretrained(..., is_trainable=True)`); for DPO
and KTO TRL keeps a frozen copy of it as the reference, so the result is one adapter that loads
on the base model like any `python -m finetune train` output.

Pairs (`build_pairs`), each `{"prompt": messages, "chosen": [...], "rejected": [...], "kind"}`:

- `hallucination`: an FAQ question with its gold passage withheld (the `k` hard-negative
  passages only, as `python -m finetune data` builds its abstain examples); chosen = the abstain
  target, rejected = the SFT model's own sampled answer when it answers anyway;
- `grounded`: the same question with the gold passage among the `k`; chosen = the grounded
  target (`build_grounded_example`), rejected = a sampled answer that the model-free claim check
  (`retrieval.grounding.verify`) rejects, or that abstains or refuses although the passage
  answers (false abstention);
- `safety`: harmful requests from this project's templates (`finetune.data.REFUSAL_TEMPLATES`,
  never `../shared/data/safety/`); chosen = the refusal, rejected = the model's sampled answer
  when it complies, else a fixed compliance opener (`COMPLIANCE_ANSWER`, no harmful content).

Only questions of the training split are mined (the split of `python -m finetune data`, same
seed): the eval split's pairs are the preference eval set. A prompt yields at most one pair (its
first mistaken sample). Pairs are written to `<output_dir>/pairs.jsonl` with their statistics
before training, and reused when the command is run again (delete the file to rebuild).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from finetune.data import (
    DataConfig,
    FaqRow,
    answer_group,
    build_grounded_example,
    build_refusal_example,
    dedupe,
    gold_and_distractors,
    redact_rows,
    refusal_questions,
    split_groups,
)
from finetune.format import format_answer, parse_answer
from retrieval.errors import UsageError, at_least
from retrieval.types import Chunk, Searcher

METHODS = ("dpo", "kto", "orpo")
PAIR_KINDS = ("hallucination", "grounded", "safety")
# What a model that complies with a harmful request starts to say; the rejected side of a safety
# pair when the SFT model itself refused every sample (no harmful detail, only the stance).
COMPLIANCE_ANSWER = format_answer(
    "The user asks for step-by-step help.",
    "Sure, here is how you can do that, step by step.",
    [],
)


class AlignConfigError(UsageError):
    """Settings, files or pairs that cannot produce a preference run."""


@dataclass
class AlignArgs:
    """What `python -m finetune align` needs besides TRL's method config and `ModelConfig`.

    Attributes:
        adapter: The SFT adapter to align (output directory of `python -m finetune train`).
        method: `dpo` (default), `kto` or `orpo`.
        faq: FAQ history to mine questions from (the one the SFT data was built from).
        home: Index home for retrieval (default `CASEWISE_HOME` or `./.casewise`).
        pairs_file: Use these pairs instead of mining (JSONL as written to `pairs.jsonl`).
        prompts_file: Sample from these mined prompts (JSONL as written to `prompts.jsonl`)
            instead of retrieving them: mining needs the index, sampling needs only the model.
        max_questions: Mine at most this many training-split questions (0: all).
        samples_per_prompt: Answers sampled from the SFT model per prompt.
        temperature: Sampling temperature.
        top_p: Nucleus sampling.
        max_new_tokens: Length cap of a sampled answer.
        sample_batch_size: Prompts per `generate` call.
        safety_prompts: Harmful requests from the templates to mine (0: none).
        k: Passages per prompt (as the agent shows them).
        max_passage_chars: Passage clip, 0 = whole (as the agent shows them).
        eval_fraction: Share of answer groups held out (same split as `finetune data`).
        faq_seed: Seed of the split and the passage order (`finetune data --seed`; `--seed`
            is the trainer's).
        cpu_threads: Torch threads on CPU (0: torch's default).
    """

    adapter: str | None = field(default=None, metadata={"help": "SFT adapter directory."})
    method: str = field(default="dpo", metadata={"help": "dpo, kto or orpo."})
    faq: str | None = field(default=None, metadata={"help": "FAQ history (CSV/JSONL)."})
    home: str | None = field(default=None, metadata={"help": "Index home."})
    pairs_file: str | None = field(default=None, metadata={"help": "Ready-made pairs.jsonl."})
    prompts_file: str | None = field(default=None, metadata={"help": "Mined prompts.jsonl."})
    max_questions: int = field(default=0, metadata={"help": "Questions to mine (0: all)."})
    samples_per_prompt: int = field(default=2, metadata={"help": "Samples per prompt."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=160, metadata={"help": "Sampled answer length cap."})
    sample_batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    safety_prompts: int = field(default=24, metadata={"help": "Template harmful requests."})
    k: int = field(default=3, metadata={"help": "Passages per prompt."})
    max_passage_chars: int = field(default=0, metadata={"help": "Passage clip (0: whole)."})
    eval_fraction: float = field(default=0.1, metadata={"help": "Held-out answer groups."})
    faq_seed: int = field(default=0, metadata={"help": "Split and passage-order seed."})
    cpu_threads: int = field(default=0, metadata={"help": "Torch threads on CPU."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AlignConfigError(f"method ({self.method!r}) must be one of {', '.join(METHODS)}")
        at_least("samples_per_prompt", self.samples_per_prompt, error=AlignConfigError)
        if not 0.0 < self.temperature <= 2.0:
            raise AlignConfigError(f"temperature ({self.temperature}) must be in (0, 2]")


# --------------------------------------------------------------------------- prompts


@dataclass
class MinedPrompt:
    """One prompt to sample from, with what a good answer is and how to judge a bad one.

    Attributes:
        kind: The pair kind it can yield (`PAIR_KINDS`).
        messages: System + user messages (no assistant turn).
        chosen: The target answer.
        question: The user's question (the claim check reads it).
        passages: The chunks shown in the prompt (the claim check's evidence).
        group: Split group (paraphrases share one).
        split: `train` or `eval`.
    """

    kind: str
    messages: list[dict]
    chosen: str
    question: str
    passages: list[Chunk] = field(default_factory=list)
    group: str = ""
    split: str = "train"


def mine_prompts(
    rows: Sequence[FaqRow], searcher: Searcher, args: AlignArgs, max_questions: int = 0
) -> list[MinedPrompt]:
    """Two prompts per FAQ question (gold withheld, gold shown) plus the safety prompts.

    Rows are de-duplicated and redacted as `python -m finetune data` does; the split and the
    passage order come from the same seed, so the eval split holds the same answer groups.
    """
    config = DataConfig(k=args.k, max_passage_chars=args.max_passage_chars, p_gold=1.0,
                        eval_fraction=args.eval_fraction, seed=args.faq_seed)
    rows, _ = dedupe(rows)
    rows, _ = redact_rows(rows)
    eval_groups = split_groups([answer_group(r.answer) for r in rows], config.eval_fraction,
                               config.seed)
    rng = random.Random(config.seed)
    prompts: list[MinedPrompt] = []
    mined = 0
    for row in rows:
        group = answer_group(row.answer)
        split = "eval" if group in eval_groups else "train"
        if max_questions and split == "train" and mined >= max_questions:
            continue
        gold, distractors = gold_and_distractors(row, searcher, config)
        if gold is None or len(distractors) < config.k:
            continue
        for use_gold in (False, True):
            messages, kind, _ = build_grounded_example(
                row.question, row.answer, gold, distractors, config, rng, use_gold)
            shown = ([gold] + list(distractors[: config.k - 1]) if use_gold
                     else list(distractors[: config.k]))
            prompts.append(MinedPrompt(
                kind="grounded" if use_gold else "hallucination", messages=messages[:-1],
                chosen=messages[-1]["content"], question=row.question, passages=shown,
                group=group, split=split))
        mined += split == "train"
    n_safety = args.safety_prompts
    safety_groups = split_groups([g for _, g in refusal_questions(n_safety, config.seed)],
                                 config.eval_fraction, config.seed)
    for question, group in refusal_questions(n_safety, config.seed):
        messages = build_refusal_example(question, searcher, config)
        prompts.append(MinedPrompt(
            kind="safety", messages=messages[:-1], chosen=messages[-1]["content"],
            question=question, group=group,
            split="eval" if group in safety_groups else "train"))
    return prompts


def _jsonl_records(path: Path, what: str, record: str) -> list[tuple[int, object]]:
    """`(line, value)` of a JSONL file this module wrote, through ingest's one JSONL reader; a
    missing file or a broken line is an `AlignConfigError` naming the file and line."""
    from ingest.loaders import read_jsonl

    if not path.is_file():
        raise AlignConfigError(f"{what} {path} does not exist")
    values, problems = read_jsonl(path)
    if problems:
        raise AlignConfigError(f"{problems[0]}; not {record}")
    return values


def write_prompts(path: Path, prompts: Sequence[MinedPrompt]) -> None:
    """Mined prompts as JSONL (passages with their text and citation), to sample elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in prompts:
            record = asdict(p)
            record["passages"] = [{"id": c.id, "text": c.text, "source": c.source,
                                   "page": c.page, "section": c.section} for c in p.passages]
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_prompts(path: str | Path) -> list[MinedPrompt]:
    """Read `write_prompts` output.

    Raises:
        AlignConfigError: Missing file or a malformed line (with its number).
    """
    path = Path(path)
    values = _jsonl_records(path, "prompts file", "a mined prompt")
    prompts = []
    for line_no, r in values:
        try:
            passages = [Chunk(id=c["id"], text=c["text"], source=c["source"], page=c["page"],
                              section=c["section"], chunk_index=i, doc_hash="")
                        for i, c in enumerate(r.get("passages", []))]
            prompts.append(MinedPrompt(**{**r, "passages": passages}))
        except (KeyError, TypeError, AttributeError) as e:
            raise AlignConfigError(f"{path}:{line_no}: not a mined prompt ({e})") from e
    return prompts


# --------------------------------------------------------------------------- judging samples


class ClaimChecker(Protocol):
    """`retrieval.grounding.verify`'s shape: one verdict (with `.supported`) per claim."""

    def __call__(self, answer: str, question: str, passages: Sequence[Chunk]) -> list: ...


def default_claim_checker() -> ClaimChecker:
    """The model-free claim check of the agent's `verify` node, `retrieval.grounding.verify`."""
    from retrieval.grounding import verify

    return verify


def mistake(prompt: MinedPrompt, sample: str, check: ClaimChecker) -> str | None:
    """Why `sample` is a wrong answer to `prompt`, or None when it is acceptable.

    - hallucination prompt (no passage answers): any answer that is not the abstain answer;
    - grounded prompt: abstaining or refusing although the gold passage is shown, an answer with
      no claim, or any claim the check does not support;
    - safety prompt: anything but the refusal.
    """
    parsed = parse_answer(sample)
    if prompt.kind == "hallucination":
        return None if parsed.abstained else "answered without a supporting passage"
    if prompt.kind == "safety":
        return None if parsed.refused else "complied with a harmful request"
    if parsed.refused:
        return "refused an ordinary support question"
    if parsed.abstained:
        return "abstained although the gold passage was shown"
    verdicts = check(parsed.answer, prompt.question, prompt.passages)
    if not verdicts:
        return "no claim in the answer"
    unsupported = [v for v in verdicts if not v.supported]
    if unsupported:
        return f"{len(unsupported)} of {len(verdicts)} claims unsupported"
    return None


def build_pairs(
    prompts: Sequence[MinedPrompt], samples: Sequence[Sequence[str]], check: ClaimChecker,
) -> list[dict]:
    """One preference pair per prompt whose samples hold a mistake (the first one).

    A safety prompt whose samples all refuse still yields a pair, against `COMPLIANCE_ANSWER`
    (the stance a refusal must beat); other prompts with no mistake yield none.

    Returns:
        Records with `prompt`, `chosen`, `rejected` (conversational, one assistant message each),
        `kind`, `split`, `reason` and `rejected_from` (`sample` or `template`).
    """
    pairs = []
    for prompt, texts in zip(prompts, samples, strict=True):
        rejected, reason, source = None, None, "sample"
        for text in texts:
            reason = mistake(prompt, text, check)
            if reason:
                rejected = text
                break
        if rejected is None and prompt.kind == "safety":
            rejected, reason, source = COMPLIANCE_ANSWER, "compliance (template)", "template"
        if rejected is None:
            continue
        pairs.append({
            "prompt": prompt.messages,
            "chosen": [{"role": "assistant", "content": prompt.chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "kind": prompt.kind, "split": prompt.split, "reason": reason,
            "rejected_from": source,
        })
    return pairs


def pair_stats(prompts: Sequence[MinedPrompt], pairs: Sequence[dict]) -> dict:
    """Prompts mined, pairs kept and mistake rates by kind and split (the SFT model's error
    rates on its own training questions, before alignment)."""
    stats: dict = {"pairs": len(pairs), "by_kind": {}, "by_split": dict(Counter(
        p["split"] for p in pairs))}
    n_prompts = Counter(p.kind for p in prompts)
    n_pairs = Counter(p["kind"] for p in pairs)
    from_sample = Counter(p["kind"] for p in pairs if p["rejected_from"] == "sample")
    for kind in PAIR_KINDS:
        stats["by_kind"][kind] = {
            "prompts": n_prompts[kind], "pairs": n_pairs[kind],
            "share_of_pairs": round(n_pairs[kind] / len(pairs), 3) if pairs else 0.0,
            "sampled_mistake_rate": round(from_sample[kind] / n_prompts[kind], 3)
            if n_prompts[kind] else None,
        }
    stats["reasons"] = dict(Counter(p["reason"] for p in pairs))
    return stats


# --------------------------------------------------------------------------- sampling


class Sampler(Protocol):
    """Anything that samples `n` answers per prompt."""

    def sample(self, prompts: Sequence[list[dict]], n: int) -> list[list[str]]: ...  # noqa: D102


class ModelSampler:
    """Samples answers from a causal LM (the SFT policy), a batch of prompts per `generate`.

    Prompts are left-padded so that every answer starts where its prompt ends.
    """

    def __init__(self, model, tokenizer, *, temperature: float, top_p: float,
                 max_new_tokens: int, batch_size: int, progress: bool = False) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_p = temperature, top_p
        self.max_new_tokens, self.batch_size, self.progress = max_new_tokens, batch_size, progress

    def sample(self, prompts: Sequence[list[dict]], n: int) -> list[list[str]]:
        """`n` sampled answers for each prompt, in prompt order."""
        import torch

        tok = self.tokenizer
        out: list[list[str]] = []
        starts = range(0, len(prompts), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="sampling answers", unit="batch")
        side, tok.padding_side = tok.padding_side, "left"
        try:
            for start in starts:
                batch = list(prompts[start:start + self.batch_size])
                inputs = tok.apply_chat_template(
                    batch, add_generation_prompt=True, padding=True, return_tensors="pt",
                    return_dict=True).to(self.model.device)
                with torch.no_grad():
                    ids = self.model.generate(
                        **inputs, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                        max_new_tokens=self.max_new_tokens, num_return_sequences=n,
                        pad_token_id=tok.pad_token_id)
                texts = tok.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                         skip_special_tokens=True)
                out.extend(texts[i:i + n] for i in range(0, len(texts), n))
        finally:
            tok.padding_side = side
        return out


# --------------------------------------------------------------------------- pairs on disk


def write_pairs(path: Path, pairs: Sequence[dict], stats: dict) -> None:
    """`pairs.jsonl` plus `pairs_stats.json` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    path.with_name("pairs_stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def read_pairs(path: str | Path) -> list[dict]:
    """Read pairs written by `write_pairs` (through ingest's one JSON Lines reader).

    Raises:
        AlignConfigError: Missing file, a malformed line (with its number), or no pair.
    """
    path = Path(path)
    values = _jsonl_records(path, "pairs file", "a preference pair")
    pairs = []
    for line_no, record in values:
        if not isinstance(record, dict) or not all(record.get(k) for k in
                                                   ("prompt", "chosen", "rejected")):
            raise AlignConfigError(f"{path}:{line_no}: not a preference pair (needs non-empty "
                                   f"prompt, chosen and rejected)")
        pairs.append(record)
    if not pairs:
        raise AlignConfigError(f"pairs file {path} holds no pair")
    return pairs


def to_method_records(pairs: Sequence[dict], method: str) -> list[dict]:
    """TRL's dataset rows: paired (DPO, ORPO) or unpaired with a label (KTO)."""
    if method == "kto":
        rows = []
        for p in pairs:
            rows.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
            rows.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
        return rows
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
            for p in pairs]


# --------------------------------------------------------------------------- the run


def _method_classes(method: str):
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def _adapter_base(adapter: Path) -> str:
    meta = adapter / "casewise.json"
    if meta.is_file():
        return json.loads(meta.read_text())["base_model"]
    return json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_policy(adapter: str, model_args, on_gpu: bool):
    """The SFT adapter on its base, trainable, loaded as `finetune.train` loads bases.

    Returns:
        `(model, tokenizer, base_requested)`.
    """
    import torch
    from peft import PeftModel

    from finetune.model import check_adapter_dir, load_tokenizer, resolve_base_model
    from finetune.train import _load_model

    adapter_dir = check_adapter_dir(adapter)
    requested = model_args.model_name_or_path or _adapter_base(adapter_dir)
    base = resolve_base_model(requested)
    model = _load_model(base, model_args, on_gpu)
    if on_gpu and not (model_args.load_in_4bit or model_args.load_in_8bit):
        model = model.to("cuda")
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    if model_args.dtype == "bfloat16":
        # Adapters in the base's dtype, as finetune.train trains them.
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    return model, load_tokenizer(base), requested


def align(args: AlignArgs, method_config, model_args, config_path: str = "",
          sampler_factory: Callable | None = None, searcher: Searcher | None = None,
          check: ClaimChecker | None = None) -> dict:
    """Mine (or read) pairs, run the preference method, write the aligned adapter.

    Args:
        args: Align settings.
        method_config: TRL's `DPOConfig`, `KTOConfig` or `ORPOConfig`.
        model_args: TRL's `ModelConfig` (dtype, quantisation) for the base.
        config_path: The YAML the settings came from (recorded).
        sampler_factory: `(model, tokenizer) -> Sampler`; default `ModelSampler`.
        searcher: Retrieval for mining; default the index at `args.home`.
        check: Claim check; default `retrieval.grounding.verify`.

    Returns:
        The report written to `align_report.json`.

    Raises:
        AlignConfigError: Missing adapter/FAQ, no pair mined, bad settings.
    """
    import torch
    from datasets import Dataset

    from finetune.data import read_faq
    from finetune.train import _yaml_safe, write_adapter_metadata, write_report

    if not args.adapter:
        raise AlignConfigError("adapter is not set: pass --adapter <SFT adapter directory>")
    on_gpu = torch.cuda.is_available() and not method_config.use_cpu
    if not on_gpu and args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    out = Path(method_config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, requested = load_policy(args.adapter, model_args, on_gpu)

    pairs_path = Path(args.pairs_file) if args.pairs_file else out / "pairs.jsonl"
    if pairs_path.is_file():
        pairs = read_pairs(pairs_path)
        stats = (json.loads(pairs_path.with_name("pairs_stats.json").read_text())
                 if pairs_path.with_name("pairs_stats.json").is_file() else {"pairs": len(pairs)})
        print(f"using {len(pairs)} pairs from {pairs_path}", file=sys.stderr)
    else:
        prompts_path = Path(args.prompts_file) if args.prompts_file else out / "prompts.jsonl"
        if prompts_path.is_file():
            prompts = read_prompts(prompts_path)
        elif not args.faq:
            raise AlignConfigError("faq is not set: pass --faq <history> to mine pairs (or "
                                   "--prompts_file / --pairs_file)")
        else:
            rows, _ = read_faq(args.faq)
            if searcher is None:
                from retrieval.search import open_searcher
                from retrieval.settings import Settings

                searcher = open_searcher(Settings.resolve(home=args.home))
            prompts = mine_prompts(rows, searcher, args, args.max_questions)
            write_prompts(out / "prompts.jsonl", prompts)
        model.eval()
        sampler = (sampler_factory or (lambda m, t: ModelSampler(
            m, t, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.sample_batch_size,
            progress=True)))(model, tokenizer)
        samples = sampler.sample([p.messages for p in prompts], args.samples_per_prompt)
        pairs = build_pairs(prompts, samples, check or default_claim_checker())
        stats = pair_stats(prompts, pairs)
        write_pairs(out / "pairs.jsonl", pairs, stats)
    train_pairs = [p for p in pairs if p.get("split", "train") == "train"]
    eval_pairs = [p for p in pairs if p.get("split") == "eval"]
    if not train_pairs:
        raise AlignConfigError(
            f"no training pair: the SFT model made no mistake on the mined prompts "
            f"({pairs_path}); mine more questions (--max_questions 0) or sample more "
            f"(--samples_per_prompt)")

    _, trainer_cls = _method_classes(args.method)
    model.train()
    kwargs = {"eval_dataset": Dataset.from_list(to_method_records(eval_pairs, args.method))}
    if not eval_pairs:
        kwargs = {}
        method_config.eval_strategy = "no"
        method_config.load_best_model_at_end = False
    trainer = trainer_cls(
        model=model, args=method_config, processing_class=tokenizer,
        train_dataset=Dataset.from_list(to_method_records(train_pairs, args.method)), **kwargs)
    result = trainer.train()
    # Only the trained adapter: TRL's frozen reference copy ("ref") would be saved beside it.
    trainer.model.save_pretrained(str(out), selected_adapters=["default"])
    tokenizer.save_pretrained(str(out))
    quantized = bool(model_args.load_in_4bit or model_args.load_in_8bit)
    write_adapter_metadata(out, requested, quantized, aligned_from=str(args.adapter),
                           method=args.method)
    import yaml

    (out / "align_config.yaml").write_text(yaml.safe_dump(_yaml_safe(
        {"align": asdict(args), "model": asdict(model_args), "method": method_config.to_dict(),
         "config_file": config_path}), sort_keys=False))
    state = trainer.state
    info = {"run_name": out.name, "method": args.method, "aligned_from": str(args.adapter),
            "base_model_requested": requested, "global_step": state.global_step,
            "epochs": state.epoch or 0.0, "train_pairs": len(train_pairs),
            "eval_pairs": len(eval_pairs), "pair_stats": stats,
            "train_runtime_s": result.metrics.get("train_runtime"),
            "final_train_loss": result.metrics.get("train_loss"),
            "best_eval_loss": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
            "device": "cuda" if on_gpu else "cpu",
            "title": f"{out.name} ({args.method} on {Path(args.adapter).name})"}
    report = write_report(state.log_history, out, info)
    report_path = out / "align_report.json"
    report_path.write_text(json.dumps({k: v for k, v in report.items() if k != "log_history"},
                                      indent=2) + "\n")
    return report


EXAMPLES = """examples:
  python -m finetune align --config configs/align-cpu.yaml --adapter runs/smollm2-cpu \\
      --faq ../shared/data/emanual/faq_history.csv --home runs/emanual-home
  python -m finetune align --config configs/align-cpu.yaml --method kto ...   (KTO; orpo too)
  python -m finetune align --config configs/align-cpu.yaml --pairs_file runs/dpo/pairs.jsonl ...
"""


def parse(argv: Sequence[str]):
    """Parse `argv`: the method first (flag or YAML), then `TrlParser` over
    `(AlignArgs, <Method>Config, ModelConfig)`.

    Raises:
        AlignConfigError: Missing config file, bad method, unknown keys.
    """
    import yaml
    from trl import ModelConfig, TrlParser

    argv = list(argv)
    config_path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else ""
    loaded = {}
    if config_path:
        if not Path(config_path).is_file():
            raise AlignConfigError(f"config file {config_path} does not exist: see "
                                   f"configs/align-*.yaml")
        loaded = yaml.safe_load(Path(config_path).read_text()) or {}
    method = argv[argv.index("--method") + 1] if "--method" in argv[:-1] else loaded.get(
        "method", "dpo")
    if method not in METHODS:
        raise AlignConfigError(f"method ({method!r}) must be one of {', '.join(METHODS)}")
    config_cls, _ = _method_classes(method)
    parser = TrlParser((AlignArgs, config_cls, ModelConfig), prog="python -m finetune align",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        args, method_config, model_args = parser.parse_args_and_config(args=argv)
    except ValueError as e:
        raise AlignConfigError(f"{config_path or 'command line'}: {e}") from e
    return args, method_config, model_args, config_path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m finetune align`."""
    args, method_config, model_args, config_path = parse(sys.argv[1:] if argv is None else argv)
    report = align(args, method_config, model_args, config_path)
    kinds = report["pair_stats"].get("by_kind", {})
    print(f"aligned adapter written to {method_config.output_dir}: {args.method}, "
          f"{report['train_pairs']} train / {report['eval_pairs']} eval pairs ("
          + ", ".join(f"{k} {v['pairs']}" for k, v in kinds.items()) + f"), "
          f"{report['global_step']} steps")
    return 0


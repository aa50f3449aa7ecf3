"""python bench/replay_answers.py RUN_DIR [--home DIR] [--systems base,finetuned] [--json]

Re-runs the agent's answer, verify and quote decisions on a finished evaluation run, without
the model: every answer of `RUN_DIR/answers.jsonl` (written by `python -m eval run`) keeps its
model output (`raw`) and its graded passages (`contexts`), so the graph's own `answer`,
`verify` and `quote` nodes (`agent.graph`) can be run again on them with the current code, in
seconds. Use it to measure a change to verification, the quote choice or the relevance bar
before spending model time: the figures are those of the same replies under the new rules
(retrieval, grading and generation are not re-run).

Per system and question set (`RUN_DIR/questions.jsonl`: `kind` and `split`): share of each
mode as recorded and as replayed, false abstention on answerable questions, the answered rate
on in-domain unanswerable questions per split (`calibration` may be used to choose a
threshold, `report` is what to quote), and how many answers changed mode. Conversations
(`RUN_DIR/conversations.jsonl`) are replayed turn by turn, each follow-up with the keyword
rewrite the agent gave it (`agent.prompts.contextualize` of the previous turn's rewrite), and
scored as `eval` scores them (`turn_correct_rate`, ...). The relevance bar's IDF weights and
its reading of misspellings (`retrieval.vocabulary.IndexTerms`) come from the index under
`--home` (the run's own index, or one of the same manual); the quote ranker uses that index's
embedder. `--no-reading` replays with every word read as written (the bar before
misspellings were read).

Examples:
    python bench/replay_answers.py /work/release/runs/eval-release --home runs/bench/emanual-pdf
    python bench/replay_answers.py runs/eval --systems finetuned --json
    python bench/replay_answers.py runs/eval --systems base --no-reading
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import doc_parser  # noqa: E402
from bench.answers import rouge_l  # noqa: E402
from eval.conversations import conversation_from_dict, conversation_scores  # noqa: E402
from eval.metrics import citation_correct  # noqa: E402
from eval.questions import Question  # noqa: E402
from retrieval.errors import CasewiseError, UsageError, run_cli  # noqa: E402

ANSWERED = ("generated", "quoted")


def hits_of(contexts: list[dict]):
    """The graded passages of an answer record (`contexts`, as `ask --json` writes them)."""
    from retrieval.types import Chunk, Hit

    return [Hit(Chunk(id=str(i), text=c["text"], source=c["source"], page=c.get("page"),
                      section=c.get("section"), chunk_index=i, doc_hash="",
                      type="faq" if c.get("type") == "faq" else "doc"),
                score=c.get("score") or 0.0)
            for i, c in enumerate(contexts)]


def replay(record: dict, context, standalone: str | None = None) -> dict:
    """The mode (and answer) the current graph gives to one recorded answer's model output.

    Answers that never reached the model (abstained before reasoning, refused by the guard, no
    passages) keep their recorded mode: nothing after grading changed for them. `standalone`:
    a conversation turn's rewrite (`agent.graph.contextualize`; default: the question itself).
    """
    from langgraph.runtime import Runtime

    from agent import graph
    from finetune.format import ABSTAIN_ANSWER, parse_answer, whole_sentence_numbers

    if not record.get("contexts") or record.get("mode") not in ("generated", "quoted",
                                                                "abstained"):
        return {"mode": record.get("mode"), "answer": record.get("answer", ""),
                "citations": record.get("citations") or [], "removed": []}
    runtime = Runtime(context=context)
    question = record["question"]
    raw = record.get("raw") or ""
    parsed = parse_answer(raw)
    state = {"question": question, "standalone": standalone or question,
             "contexts": hits_of(record["contexts"]),
             "raw": raw, "reasoning": parsed.reasoning, "timings": {}, "messages": []}
    # the recorded output numbers the sentences its prompt showed (`context.passage_words`)
    state["selection"] = whole_sentence_numbers(parsed.quote,
                                                graph.prompt_windows(state, context))
    state |= graph.answer(state, runtime)
    if state.get("refused"):
        return {"mode": "refused", "answer": "", "citations": [], "removed": []}
    state |= graph.verify(state, runtime)
    if state["claims"]:
        return {"mode": "generated", "answer": state["answer"],
                "citations": [c.to_dict() for c in state["citations"]],
                "removed": [c.reason for c in state["removed_claims"]]}
    state |= graph.quote(state, runtime)
    removed = [c.reason for c in state["removed_claims"]]
    if state.get("abstain_reason"):
        return {"mode": "abstained", "answer": ABSTAIN_ANSWER, "citations": [],
                "removed": removed, "why": state["abstain_reason"]}
    return {"mode": "quoted", "answer": state["answer"],
            "citations": [c.to_dict() for c in state["citations"]], "removed": removed}


def with_settings(context, settings: list[str]):
    """`context` with each `FIELD=VALUE` of `settings` applied (the value read as the field's
    current type: a bool from true/false/1/0, a number, or a string)."""
    changes = {}
    for item in settings:
        field, sep, value = item.partition("=")
        if not sep or not hasattr(context, field):
            raise UsageError(f"--context {item!r}: expected FIELD=VALUE with a Context field")
        current = getattr(context, field)
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"--context {item!r}: {field} takes true or false")
            changes[field] = value.lower() in ("true", "1")
        elif isinstance(current, (int, float)):
            try:
                changes[field] = type(current)(value)
            except ValueError:
                raise UsageError(f"--context {item!r}: {field} takes a number") from None
        else:
            changes[field] = value
    return dataclasses.replace(context, **changes)


def replay_conversation(record: dict, conv, context) -> dict:
    """One recorded conversation (`record["turns"]`) replayed turn by turn, and its eval scores
    as recorded and as replayed."""
    from agent.prompts import contextualize, is_follow_up

    previous = ""
    turns = []
    for turn in record["turns"]:
        question = (turn.get("question") or "").strip()
        standalone = (contextualize(question, previous)
                      if previous and is_follow_up(question) else question)
        turns.append(replay(turn, context, standalone) | {"question": question,
                                                          "standalone": standalone})
        previous = standalone
    scores = {which: {k: v.value for k, v in conversation_scores(conv, records).items()}
              for which, records in (("recorded", record["turns"]), ("replayed", turns))}
    return {"id": conv.id, "system": record["system"], "scores": scores,
            "turns": [{"question": t["question"], "standalone": t["standalone"],
                       "recorded": r.get("mode"), "replayed": t["mode"], "why": t.get("why", "")}
                      for t, r in zip(turns, record["turns"], strict=True)]}


def summarize_conversations(rows: list[dict]) -> dict:
    """Turn-weighted conversation metrics (as `eval` pools them), recorded and replayed."""
    out: dict = {"n": len(rows), "turns": sum(len(r["turns"]) for r in rows),
                 "changed": sum(t["recorded"] != t["replayed"] for r in rows for t in r["turns"])}
    for which in ("recorded", "replayed"):
        out[f"abstained_turns_{which}"] = sum(t[which] == "abstained"
                                              for r in rows for t in r["turns"])
        out[f"turn_correct_rate_{which}"] = round(sum(
            r["scores"][which]["turn_correct_rate"] * len(r["turns"]) for r in rows)
            / out["turns"], 4)
        out[f"conversation_success_rate_{which}"] = round(sum(
            r["scores"][which]["conversation_success_rate"] for r in rows) / len(rows), 4)
    return out


def summarize(rows: list[dict]) -> dict:
    """Figures of one system: modes, false abstention, unanswerable answered by split."""
    out: dict = {}
    for kind in sorted({r["kind"] for r in rows}):
        part = [r for r in rows if r["kind"] == kind]
        entry = {"n": len(part),
                 "recorded": dict(Counter(r["recorded"] for r in part)),
                 "replayed": dict(Counter(r["replayed"] for r in part)),
                 "changed": sum(r["recorded"] != r["replayed"] for r in part)}
        key = "answered" if kind.endswith("unanswerable") else "abstained"
        for which in ("recorded", "replayed"):
            hit = [float(r[which] in ANSWERED) if key == "answered" else
                   float(r[which] == "abstained") for r in part]
            entry[f"{key}_{which}"] = round(sum(hit) / len(hit), 4)
            for split in sorted({r["split"] for r in part if r["split"]}):
                sub = [h for h, r in zip(hit, part, strict=True) if r["split"] == split]
                entry[f"{key}_{which}_{split}"] = round(sum(sub) / len(sub), 4)
        out[kind] = entry
    answerable = [r for r in rows if r["answerable"]]
    if answerable:
        entry = {"n": len(answerable)}
        for which in ("recorded", "replayed"):
            entry[f"abstained_{which}"] = round(
                sum(r[which] == "abstained" for r in answerable) / len(answerable), 4)
            for metric in ("citation", "rouge_l", "pages"):
                # pages: citations per answered question (more pages, more chances to cite gold)
                values = [r[f"{metric}_{which}"] for r in answerable if f"{metric}_{which}" in r]
                if values:
                    entry[f"{metric}_{which}"] = round(sum(values) / len(values), 4)
        out["answerable (all kinds)"] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = doc_parser(__doc__, "python bench/replay_answers.py")
    parser.add_argument("run", type=Path, metavar="RUN_DIR",
                        help="an eval run directory (answers.jsonl, questions.jsonl)")
    parser.add_argument("--home", type=Path, default=REPO / "runs" / "bench" / "emanual-pdf",
                        help="index of the same manual, for IDF weights and the embedder")
    parser.add_argument("--systems", default="base,finetuned",
                        help="systems of the run to replay (default base,finetuned)")
    parser.add_argument("--rows", type=Path, default=None, metavar="PATH",
                        help="also write every replayed row (JSONL) here")
    parser.add_argument("--no-reading", action="store_true",
                        help="read every word of the relevance bar as written (no misspellings "
                        "read as indexed words: the bar before IndexTerms.read)")
    parser.add_argument("--context", action="append", default=[], metavar="FIELD=VALUE",
                        help="replay with this `agent.context.Context` setting changed, e.g. "
                        "support_quote=true or rerank=off (repeatable; the recorded passages "
                        "stay the recorded ones)")
    parser.add_argument("--json", action="store_true", help="print the result JSON only")
    args = parser.parse_args(argv)
    return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    answers, questions = args.run / "answers.jsonl", args.run / "questions.jsonl"
    for path in (answers, questions):
        if not path.is_file():
            raise UsageError(f"{path}: not found ({args.run} is not an eval run directory)")
    if not (args.home / "manifest.json").is_file():
        raise UsageError(f"--home {args.home}: no index there (python -m ingest ... --home)")
    meta = {}
    for n, line in enumerate(questions.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            q = json.loads(line)
        except ValueError as e:
            raise UsageError(f"{questions}:{n}: not JSON ({e})") from e
        meta[q["id"]] = q
    systems = [s for s in args.systems.split(",") if s]

    from agent.api import Assistant
    from retrieval.search import open_searcher
    from retrieval.settings import Settings

    # The shipped assistant's context (ranker embedder, IDF weights), with no model: the
    # replies are the recorded ones.
    assistant = Assistant.from_searcher(open_searcher(Settings.resolve(home=args.home)), None)
    context = assistant.context
    if args.no_reading:
        context = dataclasses.replace(context, term_reading=None)
    context = with_settings(context, args.context)
    conversations = {}
    c_path = args.run / "conversations.jsonl"
    if c_path.is_file():
        for line in c_path.read_text(encoding="utf-8").splitlines():
            conv = conversation_from_dict(json.loads(line))
            conversations[conv.id] = conv
    rows = []
    conv_rows = []
    for n, line in enumerate(answers.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as e:
            raise UsageError(f"{answers}:{n}: not JSON ({e})") from e
        if record.get("system") in systems and record.get("id") in conversations:
            conv_rows.append(replay_conversation(record, conversations[record["id"]], context))
            continue
        q = meta.get(record.get("id"))
        if record.get("system") not in systems or q is None:
            continue
        again = replay(record, context)
        scores = {}
        if q.get("answerable", True) and q.get("reference") and q.get("page") is not None:
            gold = Question(**{k: q[k] for k in ("id", "question", "reference", "page",
                                                 "source") if k in q})
            for which, mode, answer, citations in (
                    ("recorded", record.get("mode"), record.get("answer", ""),
                     record.get("citations")),
                    ("replayed", again["mode"], again["answer"], again["citations"])):
                scores[f"citation_{which}"] = citation_correct(
                    gold, {"mode": mode, "citations": citations}).value
                scores[f"rouge_l_{which}"] = rouge_l(gold.reference, answer)
                if mode in ANSWERED:
                    scores[f"pages_{which}"] = len({(c.get("source"), c.get("page"))
                                                    for c in citations or []})
        rows.append({**scores, "id": q["id"], "system": record["system"], "kind": q.get("kind") or "",
                     "split": q.get("split") or (q.get("extra") or {}).get("split"),
                     "answerable": q.get("answerable", True),
                     "question": record["question"], "recorded": record.get("mode"),
                     "replayed": again["mode"], "answer": again["answer"],
                     "recorded_answer": record.get("answer", ""), "why": again.get("why", ""),
                     "removed": again["removed"]})
    if not rows and not conv_rows:
        raise CasewiseError(f"{answers}: no answer of systems {systems} with a known question")
    result = {"run": str(args.run), "home": str(args.home), "reading": not args.no_reading,
              "context": args.context,
              "systems": {s: summarize([r for r in rows if r["system"] == s]) for s in systems},
              "load_average": os.getloadavg()}
    for s in systems:
        mine = [r for r in conv_rows if r["system"] == s]
        if mine:
            result["systems"][s]["conversations"] = summarize_conversations(mine)
    if args.rows:
        args.rows.parent.mkdir(parents=True, exist_ok=True)
        args.rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                     for r in rows + conv_rows), encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for system, kinds in result["systems"].items():
        print(f"== {system}")
        for kind, entry in kinds.items():
            figures = ", ".join(f"{k} {v}" for k, v in entry.items() if k != "n")
            print(f"  {kind} (n={entry['n']}): {figures}")
    print(f"(load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

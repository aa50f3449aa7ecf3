"""Running an evaluation: generate answers (cached, resumable), score them, write the report.

`run(config)` generates every missing (system, question) and (system, conversation) answer into
`DIR/answers.jsonl`, then calls `score(DIR)`. `score(DIR)` reads only what the run directory
holds (`config.json`, `questions.jsonl`, `conversations.jsonl`, the caches), so `python -m eval
report DIR` re-scores and re-renders without regenerating anything, and LLM-judged scores
already in `DIR/scores.jsonl` are reused.

Generation loads one model per system and answers that system's questions through it; when the
backend has `complete_many`, `batch_size` questions run at once and their prompts are generated
in batches (`eval.batching`). Each run of a system appends its wall time to
`DIR/generation.jsonl`, which the report sums.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from eval.batching import BatchingBackend, can_batch, run_parallel
from eval.cache import JsonlCache, answer_cache, score_cache
from eval.conversations import (
    CONVERSATION_SET,
    Conversation,
    conversation_from_dict,
    conversation_scores,
    load_conversations,
)
from eval.judge import JudgeConfig, judge_is_weak, make_judge
from eval.metrics import (
    CONVERSATION_METRICS,
    POOLED_UNITS,
    PROJECT_METRICS,
    aggregate,
    project_scores,
)
from eval.questions import (
    Question,
    QuestionFileError,
    load_harmful,
    load_questions,
    question_set,
)
from eval.ragas_metrics import RAGAS_METRICS, RagasScorer
from eval.report import write_report
from eval.systems import SystemOptions, build_llm, build_system, check_systems
from ingest.loaders import read_jsonl
from retrieval.errors import UsageError, at_least

DEFAULT_BATCH_SIZE = 16
_clock = time.monotonic  # the time budget's clock (tests advance a fake one)


class RunDirError(UsageError):
    """A run directory that lacks what a command needs."""


@dataclass
class RunConfig:
    """Everything `python -m eval run` was asked to do (saved as `DIR/config.json`).

    Attributes:
        questions: Question files (JSONL).
        systems: System names, in order.
        out: The run directory.
        options: What the systems are built from.
        harmful: CSV of harmful requests, or `None`.
        conversations: Conversation files (JSONL, see `eval.conversations`).
        limit: At most this many questions (conversations) per file.
        spread: With `limit`, take evenly spaced ones.
        judge: The LLM judge.
        batch_size: Questions answered at once by a backend with `complete_many`.
        max_minutes: Start no new answer after this many minutes of generation (`None`: no
            limit); what is left is answered by running the same command again (a chunk of
            the shared CPU lock at a time).
    """

    questions: list[str]
    systems: list[str]
    out: Path
    options: SystemOptions
    harmful: str | None = None
    conversations: list[str] = field(default_factory=list)
    limit: int | None = None
    spread: bool = False
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    batch_size: int = DEFAULT_BATCH_SIZE
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        at_least("--batch-size", self.batch_size)
        if self.limit is not None:
            at_least("--limit", self.limit)
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UsageError(f"--max-minutes ({self.max_minutes}) must be positive")

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "questions": self.questions, "systems": self.systems, "out": str(self.out),
            "harmful": self.harmful, "conversations": self.conversations, "limit": self.limit,
            "spread": self.spread, "batch_size": self.batch_size,
            "options": self.options.to_dict(), "judge": self.judge.to_dict(),
        }


def pick(items: list, limit: int | None, spread: bool = False) -> list:
    """The first `limit` items, or with `spread` `limit` items evenly spaced over the list."""
    if limit is None or limit >= len(items):
        return items
    if not spread:
        return items[:limit]
    return [items[i * len(items) // limit] for i in range(limit)]


def _warn(problems: Iterable) -> None:
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)


def _collect(files: list[str], load: Callable, limit: int | None, spread: bool,
             seen: dict[str, str]) -> list:
    out = []
    for path in files:
        items, problems = load(path)
        _warn(problems)
        for item in pick(items, limit, spread):
            _claim_id(seen, item.id, path)
            out.append(item)
    return out


def collect_questions(files: list[str], harmful: str | None, limit: int | None,
                      spread: bool = False) -> list[Question]:
    """Load every question file (then the harmful CSV), `limit` per file; report skipped lines.

    With `spread`, the `limit` questions of a file are evenly spaced over it (a sample that keeps
    the file's mix of kinds) instead of its first ones.

    Raises:
        QuestionFileError: A file is unusable, or two files share a question id.
    """
    questions = _collect(files, load_questions, limit, spread, {})
    if harmful:
        questions.extend(pick(load_harmful(harmful), limit, spread))
    return questions


def collect_conversations(files: list[str], limit: int | None, spread: bool = False,
                          taken: Iterable[str] = ()) -> list[Conversation]:
    """Load every conversation file, `limit` per file; ids must not repeat `taken` ones.

    Raises:
        QuestionFileError: A file is unusable, or an id is used twice in the run.
    """
    return _collect(files, load_conversations, limit, spread,
                    {i: "a question file" for i in taken})


def _claim_id(seen: dict[str, str], item_id: str, path: str) -> None:
    if item_id in seen:
        raise QuestionFileError(
            f"{path}: id {item_id!r} is also in {seen[item_id]}: ids must be unique across the "
            f"question and conversation files of a run (they key the answer cache)"
        )
    seen[item_id] = path


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    tmp.replace(path)


def question_group(item: Question | Conversation) -> str:
    """`answerable`, `unanswerable`, `harmful` or `conversation`: the sets whose metrics differ."""
    if isinstance(item, Conversation):
        return "conversation"
    return "harmful" if item.harmful else ("answerable" if item.answerable else "unanswerable")


def interleave(items: list) -> list:
    """Round-robin over the question groups, keeping file order within each group.

    An interrupted or time-boxed run then holds a balanced sample of every group instead of
    only the first file.
    """
    groups: dict[str, list] = {}
    for q in items:
        groups.setdefault(question_group(q), []).append(q)
    out: list = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        out.extend(g[i] for g in groups.values() if i < len(g))
    return out


def common_questions(items: list, systems: list[str], answers) -> list:
    """Items answered by every system that answered anything of the item's group.

    Makes systems comparable when some were time-boxed: a system that was never run on a group
    (e.g. no-rag without `--harmful`) does not remove that group.
    """
    active = {(s, question_group(q)) for s in systems for q in items if (s, q.id) in answers}
    return [q for q in items
            if all((s, q.id) in answers for s in systems if (s, question_group(q)) in active)]


def asked(item: Question | Conversation) -> str | list[str]:
    """What an item puts to a system: the question, or a conversation's user turns."""
    return list(item.users) if isinstance(item, Conversation) else item.question


def _flat(view: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in view.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _differences(then: dict, now: dict) -> tuple[str, str]:
    a, b = _flat(then), _flat(now)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return (", ".join(f"{k}={a.get(k)!r}" for k in keys),
            ", ".join(f"{k}={b.get(k)!r}" for k in keys))


def check_cached(cache, config: RunConfig, items: list) -> None:
    """Refuse to reuse a cached answer made from other inputs than this run's.

    Every answer the runner caches carries `made_from`: what was asked (`asked`) and the options
    of its system (`SystemOptions.answer_options`). The cache is keyed by (system, id) alone,
    so without this check a run directory answered with `--top-k 5` and run again with
    `--top-k 8` (or with a question file whose text changed under the same id) would report
    the old answers as the new run's. Answers cached before the stamp existed are reused with
    a warning.

    Raises:
        RunDirError: A cached answer of one of `config.systems` was made from other inputs.
    """
    unstamped = 0
    for name in config.systems:
        options = config.options.answer_options(name)
        for item in items:
            record = cache.get(name, item.id)
            if record is None:
                continue
            made = record.get("made_from")
            if made is None:
                unstamped += 1
                continue
            if made.get("asked") != asked(item):
                raise RunDirError(
                    f"{config.out}: the cached answer of {name} to {item.id!r} was asked "
                    f"{made.get('asked')!r}; the question files now ask {asked(item)!r}: use a "
                    f"new --out (cached answers are reused only for the same question)"
                )
            if made.get("options") != options:
                then, now = _differences(made.get("options") or {}, options)
                raise RunDirError(
                    f"{config.out}: the cached answers of {name} were made with {then}; this "
                    f"run asks {now}: use a new --out, or give the options of that run "
                    f"({config.out / 'config.json'}) to resume it"
                )
    if unstamped:
        _warn([f"{config.out}: {unstamped} cached answers carry no record of the options that "
               "made them (written before eval stamped them); they are reused unchecked"])


def _answer_one(system, item, deadline: float | None = None) -> dict | None:
    """The item's record, or `None` (not answered) when `deadline` has passed."""
    if deadline is not None and _clock() >= deadline:
        return None
    start = time.perf_counter()
    if isinstance(item, Conversation):
        record = {"question": " / ".join(item.users), "turns": system.converse(item.users)}
    else:
        record = system.answer(item.question)
    record.update(id=item.id, seconds=round(time.perf_counter() - start, 3))
    return record


def generate(config: RunConfig, questions: list[Question],
             conversations: list[Conversation] = (), *, cache: JsonlCache | None = None,
             build: Callable = build_system, make_llm: Callable = build_llm) -> int:
    """Answer every (system, question) and (system, conversation) pair not yet cached.

    Systems are loaded only when they have work left, so a resumed or finished run loads no
    model. One progress bar covers the work left (with its rate and ETA). After
    `config.max_minutes` no new answer is started (those in flight finish). `cache`: the run's
    answer cache when the caller has it open (`run` has, to check it first). `build` and
    `make_llm` are injectable for tests.

    Returns:
        How many pairs are still unanswered (0 unless the time budget ran out).
    """
    cache = cache if cache is not None else answer_cache(config.out)
    items = list(questions) + list(conversations)
    todo = {name: interleave([q for q in items if (name, q.id) not in cache])
            for name in config.systems}
    left = sum(len(t) for t in todo.values())
    cached = len(config.systems) * len(items) - left
    desc = f"answering ({cached} cached)" if cached else "answering"
    deadline = (_clock() + 60 * config.max_minutes
                if config.max_minutes is not None else None)
    with tqdm(total=left, desc=desc, unit="q", dynamic_ncols=True) as bar:
        for name in config.systems:
            if not todo[name] or (deadline is not None and _clock() >= deadline):
                continue
            bar.set_postfix_str(f"loading {name}")
            llm = make_llm(name, config.options)
            batcher = (BatchingBackend(llm, max_batch=config.batch_size)
                       if config.batch_size > 1 and can_batch(llm) else None)
            system = build(name, config.options, llm=batcher or llm)
            options = config.options.answer_options(name)
            made_from = {q.id: {"asked": asked(q), "options": options} for q in todo[name]}
            start = time.perf_counter()
            done = 0
            bar.set_postfix_str(name + (f", batches of up to {config.batch_size}"
                                        if batcher else ""))
            try:
                for _, record in run_parallel(
                        todo[name], lambda item, s=system: _answer_one(s, item, deadline),
                        workers=config.batch_size if batcher else 1, batcher=batcher):
                    if record is None:
                        continue
                    record["system"] = name
                    record["made_from"] = made_from[record["id"]]
                    cache.put(record)
                    done += 1
                    bar.update(1)
            finally:
                _log_generation(config.out, name, llm, done, time.perf_counter() - start,
                                batcher)
            left -= done
            del system, batcher, llm
    return left


def _log_generation(out: Path, name: str, llm, done: int, seconds: float, batcher) -> None:
    """Append one line per system run to `DIR/generation.jsonl` (the report sums them)."""
    if not done:
        return
    batches = batcher.batches if batcher is not None else []
    line = {"system": name, "answered": done, "seconds": round(seconds, 2),
            "backend": getattr(llm, "name", str(llm)), "batched": batcher is not None,
            "batches": len(batches), "mean_batch": round(sum(batches) / len(batches), 2)
            if batches else None, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "batch_log": batcher.batch_log if batcher is not None else []}
    with (out / "generation.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def run(config: RunConfig, *, build: Callable = build_system, make_llm: Callable = build_llm,
        embedder=None, judge_llm=None, answer: bool = True, common: bool = False) -> dict:
    """`python -m eval run`: generate what is missing, then score and report.

    With `answer=False` (`--score-only`) nothing is generated: the cached answers are scored and
    the pairs without one are reported as missing (used after per-system processes). When
    `config.max_minutes` runs out first, nothing is scored and `None` is returned: run again.
    `build`, `make_llm`, `embedder` and `judge_llm` are injectable for tests.

    Returns:
        The results dictionary also written to `DIR/results.json`, or `None` when the time
        budget stopped the generation with answers left.

    Raises:
        RunDirError: `DIR` holds answers made from other questions or options (`check_cached`).
    """
    check_systems(config.systems, config.options)
    questions = collect_questions(config.questions, config.harmful, config.limit, config.spread)
    conversations = collect_conversations(config.conversations, config.limit, config.spread,
                                          taken=[q.id for q in questions])
    cache = answer_cache(config.out)
    if answer:  # before config.json is rewritten: a refused run leaves the old one in place
        check_cached(cache, config, list(questions) + list(conversations))
    config.out.mkdir(parents=True, exist_ok=True)
    _write_json(config.out / "config.json", config.to_dict())
    _write_jsonl(config.out / "questions.jsonl", (q.to_dict() for q in questions))
    _write_jsonl(config.out / "conversations.jsonl", (c.to_dict() for c in conversations))
    if answer:
        left = generate(config, questions, conversations, cache=cache, build=build,
                        make_llm=make_llm)
        if left:
            print(f"--max-minutes {config.max_minutes:g} reached: {left} answers left (cached "
                  f"so far in {config.out / 'answers.jsonl'}); run the same command again to "
                  "resume", file=sys.stderr)
            return None
    # Pass this run's judge explicitly: config.json may since have been rewritten by another
    # process answering another system into the same directory.
    return score(config.out, judge=config.judge, embedder=embedder, judge_llm=judge_llm,
                 common=common)


def load_run(run_dir: Path) -> tuple[dict, list[Question], list[Conversation]]:
    """The saved config, questions and conversations of a run directory.

    Raises:
        RunDirError: The directory holds no run.
    """
    cfg_path, q_path = run_dir / "config.json", run_dir / "questions.jsonl"
    if not cfg_path.is_file() or not q_path.is_file():
        raise RunDirError(
            f"{run_dir}: no evaluation run here (config.json/questions.jsonl missing): "
            f"run `python -m eval run ... --out {run_dir}` first"
        )
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    questions = [Question(**value) for _, value in _saved(q_path, run_dir)]
    c_path = run_dir / "conversations.jsonl"
    conversations = ([conversation_from_dict(value) for _, value in _saved(c_path, run_dir)]
                     if c_path.is_file() else [])
    return config, questions, conversations


def _saved(path: Path, run_dir: Path) -> list[tuple[int, object]]:
    """The values of a JSONL file the run wrote itself; damage is an error, not a skip."""
    values, problems = read_jsonl(path)
    if problems:
        raise RunDirError(f"{problems[0]}: the run's saved {path.stem} are damaged; run "
                          f"`python -m eval run ... --out {run_dir}` again")
    return values


def judged_ids(questions: list[Question], limit: int | None) -> set[str]:
    """Ids of the questions that get LLM-judged metrics: the first `limit` eligible ones."""
    eligible = [q.id for q in questions if q.answerable and not q.harmful and q.reference]
    return set(eligible if limit is None else eligible[:limit])


def _conversation_row(system: str, conv: Conversation, record: dict) -> dict:
    turns = record["turns"]
    scores = {k: v.to_dict() for k, v in conversation_scores(conv, turns).items()}
    return {
        "id": conv.id, "set": CONVERSATION_SET, "system": system, "title": conv.title,
        "behaviours": list(conv.behaviours), "question": " / ".join(conv.users),
        "answer": " / ".join(t.get("answer") or "" for t in turns),
        "turns": [{"user": t.user, "gold_pages": list(t.pages), "answerable": t.answerable,
                   "follow_up": t.follow_up, "correction": t.correction, "kind": t.kind, **r}
                  for t, r in zip(conv.turns, turns, strict=True)],
        "seconds": record.get("seconds"), "scores": scores,
    }


def score(run_dir: Path, *, judge: JudgeConfig | None = None, embedder=None,
          judge_llm=None, common: bool = False) -> dict:
    """Score every cached answer and write `results.json`, `report.md` and `report.html`.

    Args:
        run_dir: The run directory.
        judge: Override the judge saved in the run's config (e.g. re-score with a strong one).
        embedder: Embedder for semantic similarity (default: the run's settings' embedder).
        judge_llm: A ready ragas judge (tests inject a scripted one); built from `judge` if None.
        common: Score only `common_questions` (systems compared on the same questions).

    Raises:
        RunDirError: No run in `run_dir`.
    """
    config, questions, conversations = load_run(run_dir)
    judge = judge or JudgeConfig(**config["judge"])
    config["judge"] = judge.to_dict()
    if embedder is None:
        from retrieval.embeddings import load_embedder

        embedder = load_embedder(config["options"]["settings"]["embedder"])
    if judge_llm is None:
        judge_llm = make_judge(judge, config["options"]["model"],
                               config["options"].get("backend"))
    scorer = RagasScorer(embedder, judge_llm, timeout=judge.timeout)
    answers, scores = answer_cache(run_dir), score_cache(run_dir)
    systems = config["systems"]
    n_all = len(questions) + len(conversations)
    if common:
        questions = common_questions(questions, systems, answers)
        conversations = common_questions(conversations, systems, answers)
    judged = judged_ids(questions, judge.limit)
    rows = []
    work = [(s, q) for s in systems for q in questions if (s, q.id) in answers]
    for system, q in tqdm(work, desc="scoring", unit="row"):
        record = answers.get(system, q.id)
        row_scores = {k: v.to_dict() for k, v in project_scores(q, record).items()}
        names = scorer.applicable(q, retrieval=system != "no-rag", judged=q.id in judged)
        for metric in names:
            tag = scorer.cache_tag(metric)
            cached = scores.get(system, q.id, metric, tag)
            if cached is None:
                s = scorer.score(metric, q, record)
                cached = {"system": system, "id": q.id, "metric": metric, "judge": tag,
                          "value": s.value, "reason": s.reason}
                scores.put(cached)
            row_scores[metric] = {"value": cached["value"], "reason": cached["reason"]}
        # `made_from` repeats the question and the system's options (config.json has them).
        rows.append({**q.to_dict(), **{k: v for k, v in record.items()
                                       if k not in ("question", "made_from")},
                     "set": question_set(q), "system": system, "scores": row_scores})
    rows += [_conversation_row(s, c, answers.get(s, c.id))
             for s in systems for c in conversations if (s, c.id) in answers]
    n_items = len(questions) + len(conversations)
    results = {
        "config": config,
        "judge": {"name": scorer.judge_name, "kind": judge.kind,
                  "weak": judge_llm is not None and judge_is_weak(judge, scorer.judge_name),
                  "llm_judged_questions": sorted(judged) if judge_llm is not None else []},
        "systems": systems,
        "n_questions": len(questions),
        "n_conversations": len(conversations),
        "common_only": common,
        "n_questions_in_run": n_all,
        "missing_answers": len(systems) * n_items - len(rows),
        "answered": {s: sum(r["system"] == s for r in rows) for s in systems},
        "metrics": summarize(rows, systems),
        "metrics_by_set": summarize_by_set(rows, systems),
        "generation": generation_summary(run_dir),
        "rows": rows,
    }
    _write_json(run_dir / "results.json", results)
    write_report(run_dir, results)
    return results


def summarize(rows: list[dict], systems: list[str]) -> dict:
    """Per system, per metric: mean over scored rows and scored / not-scored counts."""
    from eval.metrics import Score

    out: dict[str, dict] = {}
    for system in systems:
        per: dict[str, list[Score]] = {}
        for row in rows:
            if row["system"] == system:
                for metric, s in row["scores"].items():
                    per.setdefault(metric, []).append(Score.from_dict(s))
        order = [m for m in PROJECT_METRICS + CONVERSATION_METRICS + RAGAS_METRICS if m in per]
        out[system] = {m: aggregate(per[m], pooled=m in POOLED_UNITS).to_dict() for m in order}
    return out


def summarize_by_set(rows: list[dict], systems: list[str]) -> dict:
    """`summarize` within each question set (`questions.question_set`, or `conversations`)."""
    sets = sorted({r["set"] for r in rows})
    return {name: summarize([r for r in rows if r["set"] == name], systems) for name in sets}


def generation_summary(run_dir: Path) -> dict:
    """Per system: answers generated and wall seconds, summed over the runs that generated."""
    path = run_dir / "generation.jsonl"
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            g = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill; the answers themselves are in the cache
        s = out.setdefault(g["system"], {"answered": 0, "seconds": 0.0, "runs": 0,
                                         "batched": False, "backend": g.get("backend")})
        s["answered"] += g["answered"]
        s["seconds"] = round(s["seconds"] + g["seconds"], 2)
        s["runs"] += 1
        s["batched"] = s["batched"] or bool(g.get("batched"))
    return out

"""Running an evaluation: generate answers (cached, resumable), score them, write the report.

`run(config)` generates every missing (system, question) answer into `DIR/answers.jsonl`, then
calls `score(DIR)`. `score(DIR)` reads only what the run directory holds (`config.json`,
`questions.jsonl`, the caches), so `python -m eval report DIR` re-scores and re-renders without
regenerating anything, and LLM-judged scores already in `DIR/scores.jsonl` are reused.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from eval.cache import answer_cache, score_cache
from eval.metrics import PROJECT_METRICS, aggregate, project_scores
from eval.questions import Question, QuestionFileError, load_harmful, load_questions
from eval.ragas_metrics import RAGAS_METRICS, RagasScorer, chat_judge
from eval.systems import SystemOptions, build_system, check_systems
from ingest.loaders import read_jsonl
from finetune.model import EMBEDDED_NAME
from retrieval.errors import UsageError

JUDGES = ("local", "none", "remote")
EMBEDDED_JUDGE_WARNING = (
    "The judge is the embedded 135M-parameter SmolLM2 model. Its verdicts are weak: it often "
    "fails to follow RAGAS's JSON format (those rows are 'not scored') and its yes/no judgements "
    "are close to noise. Use the LLM-judged numbers (faithfulness, answer relevancy, context "
    "precision/recall) only to spot gross failures; for decisions, re-score with a strong judge "
    "(`python -m eval report DIR --judge-url URL --judge-model NAME`)."
)


class RunDirError(UsageError):
    """A run directory that lacks what a command needs."""


@dataclass
class JudgeConfig:
    """Which judge scores the LLM-judged RAGAS metrics, and on how many questions.

    Attributes:
        kind: `local` (the embedded/base model), `none` (skip LLM metrics) or `remote`.
        url: OpenAI-compatible base URL for `remote`.
        model: Model name for `remote`; for `local`, the local model (`default` = embedded).
        limit: Only the first `limit` answerable questions with a reference get LLM-judged
            metrics (`None`: all); the non-LLM and project metrics always cover every row.
        timeout: Seconds per LLM-judged metric on one row.
        max_new_tokens: Reply budget per judge call.
    """

    kind: str = "local"
    url: str | None = None
    model: str | None = None
    limit: int | None = None
    timeout: float = 300.0
    max_new_tokens: int = 512

    def __post_init__(self) -> None:
        if self.kind not in JUDGES:
            raise RunDirError(f"--judge: unknown judge {self.kind!r}: use local, none or remote")
        if self.kind == "remote" and not (self.url and self.model):
            raise RunDirError("--judge remote needs --judge-url URL and --judge-model NAME")
        if self.limit is not None and self.limit < 0:
            raise RunDirError(f"--judge-limit ({self.limit}) must be 0 or more")

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return dict(self.__dict__)


@dataclass
class RunConfig:
    """Everything `python -m eval run` was asked to do (saved as `DIR/config.json`)."""

    questions: list[str]
    systems: list[str]
    out: Path
    options: SystemOptions
    harmful: str | None = None
    limit: int | None = None
    spread: bool = False
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return {
            "questions": self.questions, "systems": self.systems, "out": str(self.out),
            "harmful": self.harmful, "limit": self.limit, "spread": self.spread,
            "options": self.options.to_dict(), "judge": self.judge.to_dict(),
        }


def pick(items: list, limit: int | None, spread: bool = False) -> list:
    """The first `limit` items, or with `spread` `limit` items evenly spaced over the list."""
    if limit is None or limit >= len(items):
        return items
    if not spread:
        return items[:limit]
    return [items[i * len(items) // limit] for i in range(limit)]


def collect_questions(files: list[str], harmful: str | None, limit: int | None,
                      spread: bool = False) -> list[Question]:
    """Load every question file (then the harmful CSV), `limit` per file; report skipped lines.

    With `spread`, the `limit` questions of a file are evenly spaced over it (a sample that keeps
    the file's mix of kinds) instead of its first ones.

    Raises:
        QuestionFileError: A file is unusable, or two files share a question id.
    """
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for path in files:
        qs, problems = load_questions(path)
        for p in problems:
            print(f"warning: {p}", file=sys.stderr)
        for q in pick(qs, limit, spread):
            if q.id in seen:
                raise QuestionFileError(
                    f"{path}: question id {q.id!r} is also in {seen[q.id]}: ids must be unique "
                    f"across question files (they key the answer cache)"
                )
            seen[q.id] = path
            questions.append(q)
    if harmful:
        hs = load_harmful(harmful)
        questions.extend(pick(hs, limit, spread))
    return questions


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    tmp.replace(path)


def question_group(q: Question) -> str:
    """`answerable`, `unanswerable` or `harmful`: the sets whose metrics differ."""
    return "harmful" if q.harmful else ("answerable" if q.answerable else "unanswerable")


def interleave(questions: list[Question]) -> list[Question]:
    """Round-robin over the question groups, keeping file order within each group.

    An interrupted or time-boxed run then holds a balanced sample of every group instead of
    only the first file.
    """
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(question_group(q), []).append(q)
    out: list[Question] = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        out.extend(g[i] for g in groups.values() if i < len(g))
    return out


def common_questions(questions: list[Question], systems: list[str], answers) -> list[Question]:
    """Questions answered by every system that answered anything of the question's group.

    Makes systems comparable when some were time-boxed: a system that was never run on a group
    (e.g. no-rag without `--harmful`) does not remove that group.
    """
    active = {(s, question_group(q)) for s in systems for q in questions if (s, q.id) in answers}
    return [q for q in questions
            if all((s, q.id) in answers for s in systems if (s, question_group(q)) in active)]


def generate(config: RunConfig, questions: list[Question], *, build=build_system) -> None:
    """Answer every (system, question) pair not yet in the answer cache.

    Systems are loaded only when they have work left, so a resumed or finished run loads no
    model. `build` is injectable for tests.
    """
    cache = answer_cache(config.out)
    total = len(config.systems) * len(questions)
    with tqdm(total=total, desc="answering", unit="q") as bar:
        for name in config.systems:
            todo = interleave([q for q in questions if (name, q.id) not in cache])
            bar.update(len(questions) - len(todo))
            if not todo:
                continue
            bar.set_postfix_str(f"loading {name}")
            system = build(name, config.options)
            for q in todo:
                bar.set_postfix_str(f"{name} {q.id}")
                start = time.perf_counter()
                # A fresh thread per attempt: a retried question must not see its earlier try.
                thread = f"eval-{name}-{q.id}-{uuid.uuid4().hex[:8]}"
                record = system.answer(q.question, thread_id=thread)
                record.update(system=name, id=q.id, seconds=round(time.perf_counter() - start, 3))
                cache.put(record)
                bar.update(1)
            del system


def run(config: RunConfig, *, build=build_system, embedder=None, judge_llm=None,
        answer: bool = True, common: bool = False) -> dict:
    """`python -m eval run`: generate what is missing, then score and report.

    With `answer=False` (`--score-only`) nothing is generated: the cached answers are scored and
    the pairs without one are reported as missing (used after per-system processes).
    `build`, `embedder` and `judge_llm` are injectable for tests (see `generate`, `score`).

    Returns:
        The results dictionary also written to `DIR/results.json`.
    """
    check_systems(config.systems, config.options)
    questions = collect_questions(config.questions, config.harmful, config.limit, config.spread)
    config.out.mkdir(parents=True, exist_ok=True)
    _write_json(config.out / "config.json", config.to_dict())
    with (config.out / "questions.jsonl").open("w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(q.to_dict(), ensure_ascii=False) + "\n")
    if answer:
        generate(config, questions, build=build)
    # Pass this run's judge explicitly: config.json may since have been rewritten by another
    # process answering another system into the same directory.
    return score(config.out, judge=config.judge, embedder=embedder, judge_llm=judge_llm,
                 common=common)


def load_run(run_dir: Path) -> tuple[dict, list[Question]]:
    """The saved config and questions of a run directory.

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
    values, problems = read_jsonl(q_path)
    if problems:
        raise RunDirError(f"{problems[0]}: the run's saved questions are damaged; run "
                          f"`python -m eval run ... --out {run_dir}` again")
    questions = [Question(**value) for _, value in values]
    return config, questions


def make_judge(judge: JudgeConfig, model: str = "default"):
    """The ragas judge for `judge` (`None` for `none`)."""
    if judge.kind == "none":
        return None
    if judge.kind == "remote":
        from agent.llm import OpenAIChatModel

        backend = OpenAIChatModel(judge.url, judge.model)
    else:
        from agent.llm import LocalChatModel

        backend = LocalChatModel(model=judge.model or model, max_new_tokens=judge.max_new_tokens)
    llm = chat_judge(backend, max_new_tokens=judge.max_new_tokens)
    if judge.kind == "local" and (judge.model or model) == "default":
        llm.name = f"{EMBEDDED_NAME} (embedded, local)"
    return llm


def judge_is_weak(judge: JudgeConfig, name: str) -> bool:
    """Whether the judge is the embedded 135M model (the report then warns loudly)."""
    return judge.kind == "local" and (
        (judge.model or "default") == "default" or "135m" in name.lower()
    )


def judged_ids(questions: list[Question], limit: int | None) -> set[str]:
    """Ids of the questions that get LLM-judged metrics: the first `limit` eligible ones."""
    eligible = [q.id for q in questions if q.answerable and not q.harmful and q.reference]
    return set(eligible if limit is None else eligible[:limit])


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
    from eval.report import write_report

    config, questions = load_run(run_dir)
    judge = judge or JudgeConfig(**config["judge"])
    config["judge"] = judge.to_dict()
    if embedder is None:
        from retrieval.embeddings import load_embedder

        embedder = load_embedder(config["options"]["settings"]["embedder"])
    if judge_llm is None:
        judge_llm = make_judge(judge, config["options"]["model"])
    scorer = RagasScorer(embedder, judge_llm, timeout=judge.timeout)
    answers, scores = answer_cache(run_dir), score_cache(run_dir)
    n_all = len(questions)
    if common:
        questions = common_questions(questions, config["systems"], answers)
    judged = judged_ids(questions, judge.limit)
    rows = []
    work = [(s, q) for s in config["systems"] for q in questions if (s, q.id) in answers]
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
        rows.append({**q.to_dict(), **{k: v for k, v in record.items() if k != "question"},
                     "system": system, "scores": row_scores})
    results = {
        "config": config,
        "judge": {"name": scorer.judge_name, "kind": judge.kind,
                  "weak": judge_llm is not None and judge_is_weak(judge, scorer.judge_name),
                  "llm_judged_questions": sorted(judged) if judge_llm is not None else []},
        "systems": config["systems"],
        "n_questions": len(questions),
        "common_only": common,
        "n_questions_in_run": n_all,
        "missing_answers": len(config["systems"]) * len(questions) - len(rows),
        "answered": {s: sum(r["system"] == s for r in rows) for s in config["systems"]},
        "metrics": summarize(rows, config["systems"]),
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
        order = [m for m in PROJECT_METRICS + RAGAS_METRICS if m in per]
        out[system] = {m: aggregate(per[m]).to_dict() for m in order}
    return out

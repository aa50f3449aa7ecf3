"""Which judge scores the LLM-judged RAGAS metrics: its settings, how it is built, how weak it is.

Kept apart from the runner and the report so that both can read the judge's settings and the
embedded-judge warning without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from eval.ragas_metrics import chat_judge
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


class JudgeConfigError(UsageError):
    """Judge options that do not fit together."""


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
            raise JudgeConfigError(
                f"--judge: unknown judge {self.kind!r}: use local, none or remote")
        if self.kind == "remote" and not (self.url and self.model):
            raise JudgeConfigError("--judge remote needs --judge-url URL and --judge-model NAME")
        if self.limit is not None and self.limit < 0:
            raise JudgeConfigError(f"--judge-limit ({self.limit}) must be 0 or more")

    def to_dict(self) -> dict:
        """JSON-ready view."""
        return dict(self.__dict__)


def make_judge(judge: JudgeConfig, model: str = "default", backend: str | None = None):
    """The ragas judge for `judge` (`None` for `none`).

    Args:
        judge: The judge settings.
        model: The run's base model, the local judge when `judge.model` is unset.
        backend: The local engine (`agent.llm.local_backend`; `None`: `CASEWISE_LLM_BACKEND`,
            else auto), the run's `--backend`.
    """
    if judge.kind == "none":
        return None
    if judge.kind == "remote":
        from agent.llm import OpenAIChatModel

        chat = OpenAIChatModel(judge.url, judge.model)
    else:
        # The agent's engine choice, as the systems get: llama.cpp decodes the embedded judge
        # about 4x faster, and the judge's short prompts make its first-token cost small.
        from agent.llm import local_backend

        chat = local_backend(judge.model or model, max_new_tokens=judge.max_new_tokens,
                             backend=backend)
    llm = chat_judge(chat, max_new_tokens=judge.max_new_tokens)
    if judge.kind == "local" and (judge.model or model) == "default":
        llm.name = f"{EMBEDDED_NAME} (embedded, local)"
    return llm


def judge_is_weak(judge: JudgeConfig, name: str) -> bool:
    """Whether the judge is the embedded 135M model (the report then warns loudly)."""
    return judge.kind == "local" and (
        (judge.model or "default") == "default" or "135m" in name.lower()
    )
